"""Named ResNet-BK sizes.  The name is the number of non-embedding parameters (within 10%, checked by tests).

Counts are made on the meta device, so asking for the size of "10B" allocates nothing.
"""
from __future__ import annotations

from typing import Any

import torch

from .configuration_resnet_bk import ResNetBKConfig
from .modeling_resnet_bk import ResNetBKForCausalLM

# d_model, depth, experts and context follow the seed's table; ffn_dim (per expert) is chosen so that the
# non-embedding parameter count matches the name.  Channels x value dims = d_model (16 dims per channel).
RESNET_BK_PRESETS: dict[str, dict[str, Any]] = {
    "1M": dict(d_model=128, n_layers=4, num_experts=2, top_k=1, n_seq=512, num_channels=8, channel_dim=16, ffn_dim=352),
    "10M": dict(d_model=256, n_layers=6, num_experts=4, top_k=1, n_seq=1024, num_channels=16, channel_dim=16, ffn_dim=680),
    "100M": dict(d_model=512, n_layers=12, num_experts=8, top_k=2, n_seq=2048, num_channels=32, channel_dim=16, ffn_dim=888),
    "1B": dict(d_model=1024, n_layers=24, num_experts=16, top_k=2, n_seq=4096, num_channels=64, channel_dim=16, ffn_dim=1144),
    "10B": dict(d_model=2048, n_layers=32, num_experts=32, top_k=2, n_seq=8192, num_channels=128, channel_dim=16, ffn_dim=2256),
}
PRESET_PARAMETERS: dict[str, int] = {"1M": 10**6, "10M": 10**7, "100M": 10**8, "1B": 10**9, "10B": 10**10}


def count_non_embedding_parameters(model: torch.nn.Module) -> int:
    """Parameters other than the token embedding and the (possibly tied) output projection."""
    emb = model.get_input_embeddings().weight
    out = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    skip = {id(emb)} | ({id(out.weight)} if out is not None else set())
    seen: set[int] = set()
    total = 0
    for p in model.parameters():
        if id(p) in skip or id(p) in seen:
            continue
        seen.add(id(p))
        total += p.numel()
    return total


def create_resnet_bk_for_hf(size: str, **overrides: Any) -> ResNetBKForCausalLM:
    """A freshly initialised `ResNetBKForCausalLM` of a named size ("1M", "10M", "100M", "1B", "10B").

    `overrides` are any `ResNetBKConfig` fields (vocab_size, options such as use_birman_schwinger=True, ...).
    Pass device="meta" to build the architecture without allocating its weights.
    """
    if size not in RESNET_BK_PRESETS:
        raise ValueError(f"create_resnet_bk_for_hf: unknown size {size!r}; choose one of {list(RESNET_BK_PRESETS)}")
    device = overrides.pop("device", None)
    config = ResNetBKConfig(**{**RESNET_BK_PRESETS[size], **overrides})
    if device is None:
        return ResNetBKForCausalLM(config)
    with torch.device(device):
        return ResNetBKForCausalLM(config)


__all__ = ["PRESET_PARAMETERS", "RESNET_BK_PRESETS", "count_non_embedding_parameters", "create_resnet_bk_for_hf"]
