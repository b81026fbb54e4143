"""The whole deployment path in one call: ONNX (+ decode step), optimised ONNX, TorchScript, TensorRT, benchmark.

Everything lands in one folder that appears only when every step that ran has passed its verification, together
with ``report.json`` saying what was produced, how far each artefact is from PyTorch, and how fast it runs.
"""
from __future__ import annotations

import json
import os
import platform
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from hubtrain.export.spec import build_spec
from hubtrain.export.benchmark import benchmark_speedup, file_size_mb
from hubtrain.export.decode import export_decode_step_to_onnx, has_flat_cache
from hubtrain.export.onnx_export import export_spec_to_onnx, optimize_onnx_model
from hubtrain.export.tensorrt import export_to_tensorrt, tensorrt_unavailable_reason
from hubtrain.export.torchscript import export_to_torchscript
from hubtrain.utils import atomic_dir, write_text_atomic

FORMATS = ("onnx", "onnx-optimized", "onnx-int8", "torchscript", "tensorrt")


def export_model_for_deployment(
    model: nn.Module,
    output_dir: str | os.PathLike,
    *,
    example_inputs: Any = None,
    formats: Sequence[str] = ("onnx", "onnx-optimized", "tensorrt"),
    optimize_level: str = "extended",
    tolerance: float | None = None,
    fp16: bool = True,
    int8: bool = False,
    calibration_data: Any = None,
    max_batch_size: int = 8,
    max_seq_len: int = 512,
    benchmark: bool = True,
    batch_sizes: Sequence[int] = (1, 8),
    seq_lens: Sequence[int] | None = None,
    num_threads: int | None = None,
    iters: int = 20,
) -> dict[str, Any]:
    """Export ``model`` to every requested format in ``output_dir`` and write ``report.json``; return the report.

    ``formats`` picks from ``onnx`` (always made: the others start from it), ``onnx-optimized`` (onnxruntime at
    ``optimize_level``), ``torchscript`` and ``tensorrt`` (skipped, with the reason in the report, where no CUDA
    GPU or no ``tensorrt`` package is present). A recurrent LM whose cache flattens to tensors also
    gets ``decode_step.onnx`` (one token + recurrent state in, logits + state out). With ``benchmark``, eager vs onnxruntime (vs TensorRT) latencies are measured
    at ``batch_sizes`` (and ``seq_lens`` for language models). The folder replaces ``output_dir`` atomically.
    """
    unknown = set(formats) - set(FORMATS)
    if unknown:
        raise ValueError(f"unknown export formats {sorted(unknown)}; choose from {list(FORMATS)}")
    spec = build_spec(model, example_inputs, what="export_model_for_deployment")
    output_dir = Path(output_dir)
    report: dict[str, Any] = {
        "model": spec.name,
        "kind": spec.kind,
        "torch": torch.__version__,
        "platform": platform.platform(),
        "artifacts": {},
    }
    with atomic_dir(output_dir) as tmp:
        onnx_path, result, spec = export_spec_to_onnx(spec, tmp / "model.onnx", tolerance=tolerance)
        report["artifacts"]["onnx"] = {
            "file": "model.onnx", "size_mb": round(file_size_mb(onnx_path), 3), "verification": result.to_dict() if result else None,
            "inputs": spec.input_names, "dynamic_axes": {n: {str(k): v for k, v in d.items()} for n, d in zip(spec.input_names, spec.dynamic_axes)},
        }
        lm = getattr(spec.module, "model", None)
        if spec.kind == "causal_lm" and lm is not None and has_flat_cache(lm):
            decode_path, decode_check = export_decode_step_to_onnx(lm, tmp / "decode_step.onnx")
            report["artifacts"]["decode_step"] = {"file": "decode_step.onnx", "size_mb": round(file_size_mb(decode_path), 3),
                                                  "verification": decode_check}
        optimized = None
        if "onnx-optimized" in formats:
            optimized = optimize_onnx_model(onnx_path, tmp / f"model.{optimize_level}.onnx", level=optimize_level,
                                            verify_inputs=spec.verification_inputs())
            report["artifacts"]["onnx-optimized"] = {"file": optimized.name, "level": optimize_level,
                                                     "size_mb": round(file_size_mb(optimized), 3)}
        if "onnx-int8" in formats:  # dynamic INT8 (or static, with calibration_data), checked by argmax agreement
            from hubtrain.export.quantize import quantize_onnx

            mode = "static" if calibration_data is not None else "dynamic"
            quantized = quantize_onnx(onnx_path, tmp / "model.int8.onnx", spec, mode=mode, calibration=calibration_data)
            report["artifacts"]["onnx-int8"] = {"file": "model.int8.onnx", "size_mb": round(file_size_mb(tmp / "model.int8.onnx"), 3),
                                                "verification": quantized.to_dict()}
        if "torchscript" in formats:
            ts = export_to_torchscript(model, tmp / "model.torchscript.pt", example_inputs, tolerance=tolerance)
            report["artifacts"]["torchscript"] = {"file": ts.name, "size_mb": round(file_size_mb(ts), 3)}
        engine = None
        if "tensorrt" in formats:
            reason = tensorrt_unavailable_reason()
            if reason:
                report["artifacts"]["tensorrt"] = {"skipped": reason}
            else:
                engine = export_to_tensorrt(onnx_path, tmp / "model.engine", fp16=fp16, int8=int8,
                                            calibration_data=calibration_data, max_batch_size=max_batch_size,
                                            max_seq_len=max_seq_len)
                report["artifacts"]["tensorrt"] = {"file": engine.name, "fp16": fp16, "int8": int8,
                                                   "size_mb": round(file_size_mb(engine), 3)}
        if benchmark:
            report["benchmark"] = {
                "num_threads": num_threads or torch.get_num_threads(),
                "rows": benchmark_speedup(model, onnx_path, engine, batch_sizes=batch_sizes, seq_lens=seq_lens,
                                          optimized_onnx_path=optimized, num_threads=num_threads, iters=iters,
                                          example_inputs=example_inputs),
            }
        write_text_atomic(tmp / "report.json", json.dumps(report, indent=2, default=str) + "\n")
    report["output_dir"] = str(output_dir)
    return report
