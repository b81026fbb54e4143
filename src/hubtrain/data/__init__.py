"""Data modules: images (classification, segmentation, detection) and text. Imported lazily."""
from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "ImageDataModule": "hubtrain.data.image",
    "SegmentationDataModule": "hubtrain.data.segmentation",
    "DetectionDataModule": "hubtrain.data.detection",
    "TextDataModule": "hubtrain.data.text",
    "build_transform": "hubtrain.data.transforms",
    "resolve_transform_config": "hubtrain.data.transforms",
}
__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'hubtrain.data' has no attribute {name!r}")
    return getattr(importlib.import_module(_LAZY[name]), name)
