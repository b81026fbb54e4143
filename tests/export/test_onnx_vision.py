"""ONNX export of vision models: inputs inferred from the model, dynamic batch and image size, agreement within a
tolerance relative to the logits' scale with equal argmax, atomic writes."""
from __future__ import annotations

import copy
import json

import numpy as np
import onnxruntime as ort
import pytest
import torch
from torch import nn

from checks import assert_onnx_optimized, redundant_onnx_graph
from hubtrain.export import (
    ExportVerificationError,
    export_model_for_deployment,
    export_to_onnx,
    export_to_tensorrt,
    export_to_torchscript,
    optimize_onnx_model,
    verify_onnx_model,
)
from hubtrain.export.tensorrt import tensorrt_unavailable_reason


def test_export_infers_inputs_and_matches_pytorch_at_other_batch_sizes(resnet18_32, resnet18_onnx):
    session = ort.InferenceSession(str(resnet18_onnx), providers=["CPUExecutionProvider"])
    (inp,) = session.get_inputs()
    # a CNN: batch, height and width are all dynamic
    assert inp.name == "pixel_values" and inp.shape[1] == 3 and all(isinstance(d, str) for d in (inp.shape[0], *inp.shape[2:]))
    for shape in [(5, 3, 32, 32), (2, 3, 48, 40)]:  # the export example had batch 2 at 32 px
        x = torch.randn(*shape)
        (onnx_logits,) = session.run(None, {"pixel_values": x.numpy()})
        with torch.no_grad():
            torch_logits = resnet18_32(x).numpy()
        assert np.abs(onnx_logits - torch_logits).max() <= 1e-5 * max(1.0, np.abs(torch_logits).max())
        assert np.array_equal(onnx_logits.argmax(-1), torch_logits.argmax(-1))
    result = verify_onnx_model(resnet18_32, resnet18_onnx)
    assert result.ok and result.tolerance == 1e-5 and result.argmax_match is True
    assert result.max_abs_error <= result.allowed_error == 1e-5 * max(1.0, result.scale)
    # verified at batches the export never saw, and at a second image size
    assert [s[0] for s in result.shapes] == [[1, 3, 32, 32], [3, 3, 32, 32], [2, 3, 64, 64]]


def test_verification_catches_a_model_that_changed(resnet18_32, resnet18_onnx):
    changed = copy.deepcopy(resnet18_32)
    with torch.no_grad():
        changed.fc.bias.add_(1e-3)
    with pytest.raises(ExportVerificationError) as info:
        verify_onnx_model(changed.eval(), resnet18_onnx, example_inputs=torch.randn(2, 3, 32, 32))
    message = str(info.value)
    assert "\n" not in message and "max abs error 1.000e-03" in message and "tolerance 1.0e-05" in message
    assert str(resnet18_onnx) in message


def test_a_model_fixed_to_its_image_size_keeps_only_the_batch_dynamic():
    """A ViT's position embeddings fix the image size: the export keeps only the batch dynamic."""
    import timm

    from hubtrain.export.spec import build_spec

    torch.manual_seed(0)
    vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=4).eval()
    spec = build_spec(vit)
    assert not spec.spatial_dynamic and spec.dynamic_axes == [{0: "batch"}]
    assert [list(b[0].shape) for b in spec.verification_inputs()] == [[1, 3, 224, 224], [3, 3, 224, 224]]


class SizeBranch(nn.Module):
    """Runs at any size eagerly, but branches in Python on the image height: its export fixes the size."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.pretrained_cfg = {"input_size": (3, 32, 32)}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x).mean((2, 3))
        return y * 2 if x.shape[2] == 32 else y


def test_an_export_that_fixes_the_image_size_falls_back_to_a_static_size(tmp_path):
    from hubtrain.export.spec import build_spec
    from hubtrain.export.onnx_export import export_spec_to_onnx

    torch.manual_seed(0)
    model = SizeBranch().eval()
    spec = build_spec(model)
    assert spec.spatial_dynamic  # eager runs at 64 px
    path, result, used = export_spec_to_onnx(spec, tmp_path / "branch.onnx")
    assert not used.spatial_dynamic and result.ok
    (inp,) = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).get_inputs()
    assert isinstance(inp.shape[0], str) and inp.shape[1:] == [3, 32, 32]


class CallCounter(nn.Module):
    """Multiplies by how often it ran: the export sees 1, later PyTorch calls see 2, 3, ... (a real mismatch)."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(4, 3)
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.linear(x) * self.calls


def test_failed_verification_writes_nothing_and_says_why_in_one_line(tmp_path):
    target = tmp_path / "bad.onnx"
    with pytest.raises(ExportVerificationError) as info:
        export_to_onnx(CallCounter().eval(), target, example_inputs=torch.randn(2, 4))
    message = str(info.value)
    assert "\n" not in message and "max abs error" in message and "tolerance" in message and str(target) in message
    assert list(tmp_path.iterdir()) == []  # no output, no temporary left behind


@pytest.mark.parametrize("level", ["basic", "extended", "all"])
def test_optimized_models_are_saved_and_agree(level, tmp_path):
    """The saved file is the graph onnxruntime rewrote at that level (a copy of the input would agree too)."""
    original = redundant_onnx_graph(tmp_path / "redundant.onnx")
    out = optimize_onnx_model(original, tmp_path / f"redundant.{level}.onnx", level=level)
    assert out.is_file()
    assert_onnx_optimized(original, out, level)


def test_optimize_rejects_unknown_level_and_missing_file(resnet18_onnx, tmp_path):
    with pytest.raises(ValueError, match="unknown optimisation level 'fast'"):
        optimize_onnx_model(resnet18_onnx, tmp_path / "x.onnx", level="fast")
    with pytest.raises(FileNotFoundError, match="missing.onnx"):
        optimize_onnx_model(tmp_path / "missing.onnx")


def test_torchscript_trace_round_trip(resnet18_32, tmp_path):
    path = export_to_torchscript(resnet18_32, tmp_path / "r18.pt")
    loaded = torch.jit.load(str(path))
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(loaded(x), resnet18_32(x), atol=1e-6, rtol=0)


def test_wrong_model_types_are_named(tmp_path, resnet18_onnx):
    with pytest.raises(TypeError, match="expects a torch.nn.Module .* got str"):
        export_to_onnx("resnet18", tmp_path / "m.onnx")
    with pytest.raises(ValueError, match="cannot infer example inputs for Linear"):
        export_to_onnx(nn.Linear(3, 2), tmp_path / "m.onnx")
    with pytest.raises(ValueError, match="expects an .onnx file"):
        export_to_tensorrt(_touch(tmp_path / "model.pt"), tmp_path / "m.engine")
    assert not (tmp_path / "m.onnx").exists()


def _touch(path):
    path.write_bytes(b"\0")
    return path


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error raised where no CUDA GPU is present")
def test_tensorrt_without_gpu_says_what_is_missing(resnet18_onnx, tmp_path):
    with pytest.raises(RuntimeError, match="needs a CUDA GPU and the tensorrt package"):
        export_to_tensorrt(resnet18_onnx, tmp_path / "r18.engine", fp16=True)
    assert not (tmp_path / "r18.engine").exists()


# Runs where TensorRT can: a CUDA GPU and the `tensorrt` extra. The reason says which is missing: on the CPU machines
# of CI there is no CUDA device, so the engine cannot be built at all (the refusal itself is tested above).
@pytest.mark.skipif(tensorrt_unavailable_reason() is not None, reason=str(tensorrt_unavailable_reason()))
def test_tensorrt_engine_matches_pytorch(resnet18_32, resnet18_onnx, tmp_path):
    from hubtrain.export import TensorRTRunner

    engine = export_to_tensorrt(resnet18_onnx, tmp_path / "r18.engine", fp16=False, max_batch_size=8)
    x = torch.randn(8, 3, 32, 32)
    (out,) = TensorRTRunner(engine)(x)
    with torch.no_grad():
        ref = resnet18_32(x)
    assert torch.allclose(out.cpu(), ref, atol=1e-3, rtol=1e-3)
    fp16 = export_to_tensorrt(resnet18_onnx, tmp_path / "r18_fp16.engine", fp16=True, max_batch_size=8)
    (half,) = TensorRTRunner(fp16)(x)
    assert (half.float().cpu().argmax(-1) == ref.argmax(-1)).float().mean() >= 0.9


def test_deployment_pipeline_writes_report_atomically(resnet18_32, tmp_path):
    out = tmp_path / "deploy"
    report = export_model_for_deployment(resnet18_32, out, formats=("onnx", "onnx-optimized", "tensorrt"),
                                         batch_sizes=(1, 2), iters=2, num_threads=1)
    on_disk = json.loads((out / "report.json").read_text())
    assert on_disk["artifacts"]["onnx"]["verification"]["max_abs_error"] <= 1e-6
    assert (out / "model.onnx").is_file() and (out / on_disk["artifacts"]["onnx-optimized"]["file"]).is_file()
    if not torch.cuda.is_available():
        assert "needs a CUDA GPU" in on_disk["artifacts"]["tensorrt"]["skipped"]
    backends = {(r["backend"], r["batch_size"]) for r in report["benchmark"]["rows"]}
    assert backends == {(b, n) for b in ("eager", "onnxruntime", "onnxruntime-optimized") for n in (1, 2)}
    assert all(r["median_ms"] > 0 for r in report["benchmark"]["rows"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["deploy"]
