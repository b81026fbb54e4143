"""INT8 ONNX through ``onnxruntime.quantization``, verified against the float model by how often it agrees.

- ``dynamic``: weights stored as INT8, activations quantised per batch at run time (no data needed);
- ``static``: activations quantised with ranges calibrated on batches of the task's own data (QDQ format, per-channel
  weights).

Language models quantise their projections (``MatMul`` / ``Gemm``) and keep everything else in float, ResNet-BK's
scan included. An INT8 model is not expected to match to 1e-4: the check is agreement (the share of output rows,
images or token positions, whose argmax is the float model's) plus the largest absolute difference, measured on
real data where it is given.
"""
from __future__ import annotations

import os
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import torch

from hubtrain.errors import one_line
from hubtrain.export.spec import ExportError, ExportSpec, ExportVerificationError

QUANT_MODES = ("dynamic", "static")
PROJECTIONS = ["MatMul", "Gemm"]  # what a language model quantises: its linear layers, never its recurrences


@dataclass
class QuantizationReport:
    """How an INT8 graph compares with its float source, on the same inputs."""

    mode: str
    agreement: float  # share of output rows whose argmax equals the float model's
    max_abs_error: float
    rows: int
    float_bytes: int
    int8_bytes: int
    op_types: list[str] | None
    min_agreement: float

    @property
    def size_ratio(self) -> float:
        return self.float_bytes / max(1, self.int8_bytes)

    @property
    def ok(self) -> bool:
        return self.agreement >= self.min_agreement

    def to_dict(self) -> dict[str, Any]:
        return asdict(self) | {"size_ratio": self.size_ratio, "ok": self.ok}


def calibration_batches(source: Any, spec: ExportSpec, limit: int = 8) -> list[tuple[torch.Tensor, ...]]:
    """Model inputs from a data module (its training split), a data loader, or a list of batches: images or
    ``input_ids``, at most ``limit`` batches."""
    if source is None:
        raise ValueError("static INT8 needs calibration data: pass calibration=<the task's data module> (or batches)")
    if hasattr(source, "train_dataloader") and not isinstance(source, (list, tuple)):
        if hasattr(source, "setup"):
            source.setup("fit")
        source = source.train_dataloader()
    out = []
    for batch in source:
        if isinstance(batch, dict):
            tensor = batch.get("input_ids", next(iter(batch.values())))
        elif isinstance(batch, (tuple, list)):
            tensor = batch[0]
        else:
            tensor = batch
        out.append((tensor.to(spec.example_inputs[0].dtype),))
        if len(out) >= limit:
            break
    if not out:
        raise ValueError("the calibration data yielded no batches")
    return out


def _argmax_agreement(expected: np.ndarray, actual: np.ndarray) -> tuple[int, int, float]:
    same = expected.argmax(-1) == actual.argmax(-1)
    return int(same.sum()), int(same.size), float(np.max(np.abs(expected.astype(np.float64) - actual)))


def quantize_onnx(
    float_path: str | os.PathLike,
    out_path: str | os.PathLike,
    spec: ExportSpec,
    *,
    mode: str = "dynamic",
    calibration: Any = None,
    verify_inputs: Sequence[tuple[torch.Tensor, ...]] | None = None,
    op_types: Sequence[str] | None = None,
    min_agreement: float = 0.5,
) -> QuantizationReport:
    """Quantise the float graph at ``float_path`` to ``out_path`` and compare them (see module doc).

    ``op_types`` defaults to every supported op for vision models and to :data:`PROJECTIONS` for language models.
    ``verify_inputs`` default to the calibration batches, else to the spec's inputs at unseen shapes. Raises
    :class:`ExportVerificationError` (nothing written) when agreement falls below ``min_agreement``.
    """
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_dynamic, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from hubtrain.export.onnx_export import ort_session, run_onnx, staged_output

    if mode not in QUANT_MODES:
        raise ValueError(f"unknown quantization {mode!r}; use one of {list(QUANT_MODES)}")
    if op_types is None and spec.kind == "causal_lm":
        op_types = PROJECTIONS
    batches = calibration_batches(calibration, spec) if (mode == "static" or calibration is not None) else None
    names = [i.name for i in ort_session(float_path).get_inputs()]
    with tempfile.TemporaryDirectory(prefix="hubtrain-int8-") as tmp, staged_output(out_path) as staged:
        prepared = Path(tmp) / "prepared.onnx"
        try:
            quant_pre_process(str(float_path), str(prepared), skip_symbolic_shape=True)
            if mode == "dynamic":
                quantize_dynamic(str(prepared), str(staged), weight_type=QuantType.QInt8,
                                 op_types_to_quantize=list(op_types) if op_types else None)
            else:
                class Reader(CalibrationDataReader):
                    def __init__(self) -> None:
                        self.feeds = iter([{n: t.numpy() for n, t in zip(names, b)} for b in batches])

                    def get_next(self) -> dict[str, np.ndarray] | None:
                        return next(self.feeds, None)

                quantize_static(str(prepared), str(staged), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                                weight_type=QuantType.QInt8, activation_type=QuantType.QUInt8,
                                op_types_to_quantize=list(op_types) if op_types else None)
        except Exception as err:
            raise ExportError(f"INT8 ({mode}) quantization of {float_path} failed: {one_line(err)}") from err
        report = compare_int8(float_path, staged, verify_inputs or batches or spec.verification_inputs(), mode=mode,
                              op_types=op_types, min_agreement=min_agreement)
        if not report.ok:
            raise ExportVerificationError(
                f"INT8 ({mode}) {out_path} agrees with the float model on {report.agreement:.1%} of {report.rows} "
                f"outputs, below {min_agreement:.0%}; try static quantization with calibration data, or fewer op types")
    return report


def compare_int8(float_path: str | os.PathLike, int8_path: str | os.PathLike, batches: Iterable[tuple[torch.Tensor, ...]],
                 *, mode: str, op_types: Sequence[str] | None = None, min_agreement: float = 0.0) -> QuantizationReport:
    """Agreement and largest difference between two ONNX graphs on the same batches (first output, argmax rows)."""
    from hubtrain.export.onnx_export import ort_session, run_onnx

    reference, quantized = ort_session(float_path), ort_session(int8_path)
    same = total = 0
    worst = 0.0
    for batch in batches:
        s, n, err = _argmax_agreement(run_onnx(reference, batch)[0], run_onnx(quantized, batch)[0])
        same, total, worst = same + s, total + n, max(worst, err)
    return QuantizationReport(mode=mode, agreement=same / max(1, total), max_abs_error=worst, rows=total,
                              float_bytes=onnx_bytes(float_path), int8_bytes=onnx_bytes(int8_path),
                              op_types=list(op_types) if op_types else None, min_agreement=min_agreement)


def onnx_bytes(path: str | os.PathLike) -> int:
    """Size on disk of a graph and its external weights file, if any."""
    path = Path(path)
    return path.stat().st_size + sum(p.stat().st_size for p in path.parent.glob(f"{path.name}.data"))


__all__ = ["QUANT_MODES", "QuantizationReport", "calibration_batches", "compare_int8", "onnx_bytes", "quantize_onnx"]
