"""One factory for every backbone: timm names, ``hf-hub:``, ``local-dir:`` and transformers models.

``create_backbone`` returns a module with the interface of docs/architecture.md (``num_features``,
``feature_channels``, ``feature_strides``, ``data_config``, ``backbone_spec``), whatever library built it.
"""
from __future__ import annotations

import json
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any, Sequence

from torch import nn

from .config import BackboneConfig

__all__ = ["BackboneConfig", "create_backbone", "list_backbones"]


def _is_transformers_object(spec: Any) -> bool:
    # A transformers object can only exist if transformers is already imported: no need to import it here.
    transformers = sys.modules.get("transformers")
    if transformers is None:
        return False
    classes = tuple(
        getattr(transformers, name)
        for name in ("PreTrainedModel", "PreTrainedConfig", "PretrainedConfig")
        if hasattr(transformers, name)
    )
    return isinstance(spec, classes)


def _is_transformers_name(name: str) -> bool:
    """``hf:org/name``, or a folder whose config.json is a transformers config (it has ``model_type``)."""
    if name.startswith("hf:"):
        return True
    config = Path(name).expanduser() / "config.json"
    if ":" in name.split("/")[0] or not config.is_file():
        return False
    with open(config, encoding="utf-8") as f:
        data = json.load(f)
    return "model_type" in data and "architecture" not in data


def _is_timm_folder(name: str) -> bool:
    config = Path(name).expanduser() / "config.json"
    if ":" in name.split("/")[0] or not config.is_file():
        return False
    with open(config, encoding="utf-8") as f:
        return "architecture" in json.load(f)


def create_backbone(
    spec: Any,
    *,
    pretrained: bool | None = None,
    features_only: bool = False,
    out_indices: Sequence[int] | None = None,
    **kwargs: Any,
) -> nn.Module:
    """Build a backbone from a name, a ``BackboneConfig`` (or its dict), or a transformers model / config.

    ``pretrained=None`` keeps what the spec says (``BackboneConfig.pretrained``, ``True`` for a bare string).
    Pretrained weights come from the local Hugging Face cache first; when they are neither cached nor reachable
    within seconds, ``hubtrain.errors.OfflineModelError`` says how to proceed.
    """
    if isinstance(spec, nn.Module) and hasattr(spec, "backbone_spec"):
        # Already built by create_backbone: use it as is (its weights included).
        if bool(getattr(spec, "features_only", False)) != features_only:
            raise ValueError(
                f"this backbone was built with features_only={not features_only}; build another with "
                f"create_backbone(backbone.backbone_spec, features_only={features_only})."
            )
        return spec
    if _is_transformers_object(spec):
        from .transformers_backbone import create_transformers_backbone

        return create_transformers_backbone(
            spec, pretrained=pretrained, features_only=features_only, out_indices=out_indices, **kwargs
        )
    if isinstance(spec, dict):
        spec = BackboneConfig.from_dict(spec)
    elif isinstance(spec, str):
        if _is_timm_folder(spec):
            spec = f"local-dir:{spec}"
        spec = BackboneConfig(spec)
    if not isinstance(spec, BackboneConfig):
        raise TypeError(
            f"backbone={spec!r} ({type(spec).__name__}): give a timm name, 'hf-hub:org/name', 'local-dir:/path', "
            "a BackboneConfig (or its dict), or a transformers model or config."
        )
    if spec.num_classes:
        raise ValueError(
            f"BackboneConfig(num_classes={spec.num_classes}): AutoTimm's create_backbone adds a timm classifier, "
            "hubtrain's backbones are headless; use num_classes=0 and a task (ImageClassifier) for the head."
        )
    if pretrained is not None:
        spec = replace(spec, pretrained=bool(pretrained))
    if _is_transformers_name(spec.model_name):
        from .transformers_backbone import create_transformers_backbone

        return create_transformers_backbone(
            spec, pretrained=spec.pretrained, features_only=features_only, out_indices=out_indices, **kwargs
        )
    from .timm_backbone import create_timm_backbone

    return create_timm_backbone(spec, features_only=features_only, out_indices=out_indices, **kwargs)


def list_backbones(pattern: str = "*", pretrained: bool = False) -> list[str]:
    """timm model names matching a shell-style ``pattern`` (``"resnet*"``); with pretrained tags if asked."""
    import timm

    return timm.list_models(pattern, pretrained=pretrained)
