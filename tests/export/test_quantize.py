"""INT8 ONNX (onnxruntime.quantization): dynamic and static (calibrated on the task's own data module), checked by
argmax agreement with the float model; accuracy on the digits validation split, ResNet-BK's projections quantised
with its scan kept in float."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

pytest.importorskip("onnxruntime")

from hubtrain.artifacts import load  # noqa: E402
from hubtrain.export import export_to_onnx  # noqa: E402
from hubtrain.export.onnx_export import onnx_op_types, ort_session, run_onnx  # noqa: E402
from hubtrain.export.quantize import onnx_bytes, quantize_onnx  # noqa: E402
from hubtrain.export.spec import build_spec  # noqa: E402


def _accuracy(session, loader) -> float:
    right = total = 0
    for images, labels in loader:
        right += int((run_onnx(session, (images,))[0].argmax(-1) == labels.numpy()).sum())
        total += len(labels)
    return right / total


@pytest.mark.parametrize("mode", ["dynamic", "static"])
def test_int8_classifier_agrees_with_float_on_the_validation_split(digits_folder, tmp_path, mode, one_thread):
    from hubtrain.data.image import ImageDataModule

    model = load(digits_folder)
    data = ImageDataModule(dataset_name="digits", image_size=32, batch_size=64, seed=0)
    data.setup("fit")
    float_path = export_to_onnx(model, tmp_path / "float.onnx")
    int8_path = export_to_onnx(model, tmp_path / f"{mode}.onnx", quantize="int8", quantization=mode,
                               calibration=data if mode == "static" else None)
    ops = onnx_op_types(int8_path)
    assert ({"ConvInteger", "MatMulInteger"} & ops) if mode == "dynamic" else {"QuantizeLinear", "DequantizeLinear"} <= ops
    assert onnx_bytes(float_path) / onnx_bytes(int8_path) > 3.0  # INT8 weights, a few float scales

    val = [(images, labels) for images, labels in data.val_dataloader()]
    report = quantize_onnx(float_path, tmp_path / "again.onnx", build_spec(model), mode=mode, calibration=data,
                           verify_inputs=[(images,) for images, _ in val])
    # a 2-epoch test_resnet is far less confident than the quickstart resnet18 (see benchmarks/quantization.py)
    assert report.rows == sum(len(labels) for _, labels in val) and report.agreement >= 0.9, report
    float_acc = _accuracy(ort_session(float_path), val)
    int8_acc = _accuracy(ort_session(int8_path), val)
    assert float_acc - int8_acc <= 0.03, (float_acc, int8_acc)


def test_int8_resnet_bk_quantises_projections_and_keeps_the_scan_float(lm_folder, tmp_path, one_thread):
    task = load(lm_folder)
    float_path = export_to_onnx(task, tmp_path / "float.onnx")
    int8_path = export_to_onnx(task, tmp_path / "int8.onnx", quantize="int8")
    ops = onnx_op_types(int8_path)
    assert "MatMulInteger" in ops and not any(op.startswith(("QLinear", "ConvInteger")) for op in ops)
    assert onnx_op_types(float_path) & {"Scan", "Loop"} <= ops  # the recurrence is untouched
    ids = torch.randint(0, task.model.config.vocab_size, (2, 48), generator=torch.Generator().manual_seed(0))
    reference, quantized = run_onnx(ort_session(float_path), (ids,))[0], run_onnx(ort_session(int8_path), (ids,))[0]
    agreement = float((reference.argmax(-1) == quantized.argmax(-1)).mean())
    assert agreement >= 0.8, agreement
    assert onnx_bytes(float_path) / onnx_bytes(int8_path) > 2.0


def test_export_command_writes_the_int8_graph_with_its_agreement(digits_folder, tmp_path, capsys):
    from hubtrain.cli import main

    out = tmp_path / "export"
    assert main(["export", str(digits_folder), "--quantize", "int8", "-o", str(out), "--optimize", "none"]) == 0
    report = json.loads((out / "report.json").read_text())
    check = report["artifacts"]["onnx-int8"]["verification"]
    assert (out / "model.int8.onnx").is_file() and check["mode"] == "dynamic" and check["ok"]
    assert "argmax agreement" in capsys.readouterr().out
    assert np.isfinite(check["max_abs_error"])
