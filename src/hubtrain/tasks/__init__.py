"""Task modules (LightningModules): loss, metrics, optimiser and Hub-ready save/load around a backbone.

Imported lazily so that ``hubtrain.tasks.base`` does not pull in every task's dependencies. ``TASKS`` is the
registry of hubtrain's own tasks as dotted names, so a saved folder's ``hubtrain_task`` resolves in any process
without the class having been imported first; :func:`task_class` also finds a user's ``BaseTask`` subclass once
its module has been imported.
"""
from __future__ import annotations

import importlib
from typing import Any

# the name a folder's config.json stores as "hubtrain_task" -> where the class lives
TASKS: dict[str, str] = {
    "ImageClassifier": "hubtrain.tasks.classification.ImageClassifier",
    "SemanticSegmentor": "hubtrain.tasks.segmentation.SemanticSegmentor",
    "ObjectDetector": "hubtrain.tasks.detection.ObjectDetector",
    "CausalLMTask": "hubtrain.tasks.causal_lm.CausalLMTask",
}
_LAZY = {"BaseTask": "hubtrain.tasks.base.BaseTask", **TASKS}
__all__ = sorted(_LAZY) + ["TASKS", "task_class"]


def _resolve(dotted: str) -> Any:
    module, _, name = dotted.rpartition(".")
    return getattr(importlib.import_module(module), name)


def task_class(name: str) -> type:
    """The task class saved under ``name``: hubtrain's own (imported on demand) or a user's registered subclass."""
    if name in TASKS:
        return _resolve(TASKS[name])
    from hubtrain.tasks.base import BaseTask

    cls = BaseTask._registry.get(name) if isinstance(name, str) else None
    if cls is None:
        raise ValueError(
            f"hubtrain_task={name!r} is not a known hubtrain task; hubtrain's tasks are {sorted(TASKS)} "
            "(a task class of your own must be imported before its folders load)"
        )
    return cls


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'hubtrain.tasks' has no attribute {name!r}")
    return _resolve(_LAZY[name])
