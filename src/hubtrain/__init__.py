"""hubtrain: train and ship Hugging Face models from one API.

Everything public is importable from here, but nothing heavy is imported until it is used:
``import hubtrain`` stays fast, and ``hubtrain.ImageClassifier`` pulls in timm and Lightning on first touch.
"""
from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# public name -> module that defines it
_LAZY: dict[str, str] = {
    # backbones
    "BackboneConfig": "hubtrain.backbones",
    "create_backbone": "hubtrain.backbones",
    "list_backbones": "hubtrain.backbones",
    # metrics
    "MetricConfig": "hubtrain.metrics",
    "MetricManager": "hubtrain.metrics",
    # tasks
    "ImageClassifier": "hubtrain.tasks.classification",
    "SemanticSegmentor": "hubtrain.tasks.segmentation",
    "ObjectDetector": "hubtrain.tasks.detection",
    "CausalLMTask": "hubtrain.tasks.causal_lm",
    # data
    "ImageDataModule": "hubtrain.data.image",
    "SegmentationDataModule": "hubtrain.data.segmentation",
    "DetectionDataModule": "hubtrain.data.detection",
    "TextDataModule": "hubtrain.data.text",
    # training
    "AutoTrainer": "hubtrain.training",
    "TunerConfig": "hubtrain.training",
    "LoggerConfig": "hubtrain.training",
    "LoggerManager": "hubtrain.training",
    # language models
    "ResNetBKConfig": "hubtrain.models.resnet_bk",
    "ResNetBKModel": "hubtrain.models.resnet_bk",
    "ResNetBKForCausalLM": "hubtrain.models.resnet_bk",
    "create_resnet_bk_for_hf": "hubtrain.models.resnet_bk",
    "green_scan": "hubtrain.models.resnet_bk",
    # shipping
    "push_to_hub": "hubtrain.hub",
    "upload_model_to_hub": "hubtrain.hub",
    "batch_upload_models": "hubtrain.hub",
    "create_model_card": "hubtrain.artifacts",
    "load": "hubtrain.artifacts",
    "export_to_onnx": "hubtrain.export",
    "verify_onnx_model": "hubtrain.export",
    "optimize_onnx_model": "hubtrain.export",
    "export_to_torchscript": "hubtrain.export",
    "export_to_tensorrt": "hubtrain.export",
    "benchmark_speedup": "hubtrain.export",
    "export_model_for_deployment": "hubtrain.export",
}

__all__ = sorted(_LAZY) + ["__version__"]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'hubtrain' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # cache: the next access skips __getattr__
    return value


def __dir__() -> list[str]:
    return __all__
