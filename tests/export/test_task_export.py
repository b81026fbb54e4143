"""Every hubtrain task exports: classifier (inputs from its own data config), segmentor and FCOS detector."""
from __future__ import annotations

import onnxruntime as ort
import pytest
import torch

from hubtrain.export import export_to_onnx, verify_onnx_model


def test_image_classifier_exports_from_its_own_config(tmp_path):
    from hubtrain.tasks.classification import ImageClassifier

    torch.manual_seed(0)
    model = ImageClassifier("test_resnet", num_classes=3, pretrained=False).eval()
    path = export_to_onnx(model, tmp_path / "cls.onnx")  # nothing but the model: 3x160x160 from timm's config
    (inp,) = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).get_inputs()
    assert inp.shape[1] == 3 and all(isinstance(d, str) for d in inp.shape[2:])  # a CNN: any image size
    result = verify_onnx_model(model, path)
    assert result.ok and [s[0][2:] for s in result.shapes] == [[160, 160], [160, 160], [192, 192]]
    # a task trained on other images exports at the size its own saved preprocessing produces
    model.preprocessing = {"input_size": [3, 32, 32], "mean": [0.5] * 3, "std": [0.5] * 3}
    result = verify_onnx_model(model, path)
    assert result.ok and [s[0][2:] for s in result.shapes] == [[32, 32], [32, 32], [64, 64]]


@pytest.mark.parametrize("task", ["SemanticSegmentor", "ObjectDetector"])
def test_dense_tasks_export_all_outputs(task, tmp_path):
    import hubtrain.tasks as tasks

    torch.manual_seed(0)
    kwargs = {"num_classes": 3, "pretrained": False} if task == "SemanticSegmentor" else {"num_classes": 3, "pretrained": False, "fpn_channels": 32, "head_num_convs": 1}
    model = getattr(tasks, task)("resnet18", **kwargs).eval()
    example = torch.randn(2, 3, 64, 64)
    path = export_to_onnx(model, tmp_path / f"{task}.onnx", example_inputs=example)
    with torch.no_grad():
        outputs = model(example)
    expected = len(outputs) if isinstance(outputs, dict) else 1
    assert len(ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).get_outputs()) == expected
    result = verify_onnx_model(model, path, example_inputs=example)  # batches 1 and 3
    assert result.max_abs_error <= 1e-5
