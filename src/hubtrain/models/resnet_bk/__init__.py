"""ResNet-BK: a causal, O(N), bounded language model whose token mixer is a Green's function.

Public API (the mathematics is fixed in docs/resnet_bk.md):

- ``green_scan(a, hop, z_re, z_im, u_re, u_im=None, chunk_size=None, *, initial=None, hop_in=None)``
  -> ``(g_re, g_im, y_re, y_im)``: the fast chunked scan; ``green_scan_reference`` (same arguments, sequential)
  and ``green_scan_step(a, hop_prev, z_re, z_im, u_re, u_im=None, state=None)`` (one token, for decoding).
- ``ResNetBKConfig``, ``ResNetBKModel``, ``ResNetBKForCausalLM`` (transformers ``PreTrainedModel`` +
  ``GenerationMixin``), ``ResNetBKCache`` (the O(1)-per-layer recurrent state ``generate`` carries).
- ``create_resnet_bk_for_hf(size, **overrides)`` and ``RESNET_BK_PRESETS`` ("1M" ... "10B", named by their
  non-embedding parameter count), ``count_non_embedding_parameters(model)``.

Importing this package registers the architecture with the `transformers` Auto classes, so
`AutoConfig` / `AutoModel` / `AutoModelForCausalLM` know `model_type="resnet_bk"`.
"""
from __future__ import annotations

from .configuration_resnet_bk import ResNetBKConfig
from .green_scan import green_scan, green_scan_reference, green_scan_step
from .modeling_resnet_bk import ResNetBKCache, ResNetBKForCausalLM, ResNetBKModel, ResNetBKPreTrainedModel
from .presets import RESNET_BK_PRESETS, create_resnet_bk_for_hf, count_non_embedding_parameters


def register() -> None:
    """Register ResNet-BK with the transformers Auto classes (idempotent).

    Also marks the classes for `save_pretrained` to write `auto_map` and copy the configuration, modeling and
    scan files, so saved folders load with `trust_remote_code=True` where hubtrain is not installed.
    """
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

    AutoConfig.register(ResNetBKConfig.model_type, ResNetBKConfig, exist_ok=True)
    AutoModel.register(ResNetBKConfig, ResNetBKModel, exist_ok=True)
    AutoModelForCausalLM.register(ResNetBKConfig, ResNetBKForCausalLM, exist_ok=True)
    ResNetBKConfig.register_for_auto_class()
    ResNetBKModel.register_for_auto_class("AutoModel")
    ResNetBKForCausalLM.register_for_auto_class("AutoModelForCausalLM")


register()

# how this model describes itself to hubtrain (see hubtrain.models)
MODEL_TYPE = ResNetBKConfig.model_type
PRESETS = RESNET_BK_PRESETS
create_from_preset = create_resnet_bk_for_hf

__all__ = [
    "MODEL_TYPE",
    "PRESETS",
    "RESNET_BK_PRESETS",
    "ResNetBKCache",
    "ResNetBKConfig",
    "ResNetBKForCausalLM",
    "ResNetBKModel",
    "ResNetBKPreTrainedModel",
    "count_non_embedding_parameters",
    "create_from_preset",
    "create_resnet_bk_for_hf",
    "green_scan",
    "green_scan_reference",
    "green_scan_step",
    "register",
]
