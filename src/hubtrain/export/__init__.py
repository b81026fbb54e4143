"""Deployment exports with verified numerics: ONNX, onnxruntime optimisation, TorchScript, TensorRT, benchmarks.

``from hubtrain.export import export_to_onnx`` is all most users need; heavy imports (onnx, onnxruntime,
tensorrt) happen only when the corresponding function runs.
"""
from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "export_to_onnx": "onnx_export",
    "verify_onnx_model": "onnx_export",
    "optimize_onnx_model": "onnx_export",
    "VerificationResult": "onnx_export",
    "onnx_node_count": "onnx_export",
    "onnx_op_types": "onnx_export",
    "ExportError": "spec",
    "ExportVerificationError": "spec",
    "quantize_onnx": "quantize",
    "QuantizationReport": "quantize",
    "export_to_torchscript": "torchscript",
    "export_to_tensorrt": "tensorrt",
    "tensorrt_unavailable_reason": "tensorrt",
    "TensorRTRunner": "tensorrt",
    "benchmark_speedup": "benchmark",
    "benchmark_tensorrt_speedup": "benchmark",
    "markdown_table": "benchmark",
    "export_model_for_deployment": "pipeline",
    "export_decode_step_to_onnx": "decode",
    "OnnxGenerator": "decode",
    "onnx_generate": "decode",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'hubtrain.export' has no attribute {name!r}")
    module = importlib.import_module(f"hubtrain.export.{_EXPORTS[name]}")
    value = getattr(module, name if name != "benchmark_tensorrt_speedup" else "benchmark_speedup")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
