"""Task modules (LightningModules): loss, metrics, optimiser and Hub-ready save/load around a backbone.

Imported lazily so that ``hubtrain.tasks.base`` does not pull in every task's dependencies.
"""
from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "BaseTask": "hubtrain.tasks.base",
    "ImageClassifier": "hubtrain.tasks.classification",
    "SemanticSegmentor": "hubtrain.tasks.segmentation",
    "ObjectDetector": "hubtrain.tasks.detection",
    "CausalLMTask": "hubtrain.tasks.causal_lm",
}
__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'hubtrain.tasks' has no attribute {name!r}")
    return getattr(importlib.import_module(_LAZY[name]), name)
