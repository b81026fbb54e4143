"""Task, export and Hub claims: each check that guards one fails on a library broken in the way it guards against."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

from checks import assert_onnx_optimized, assert_uploaded_weights, check_auroc_receives_probabilities, redundant_onnx_graph
from learning import assert_detection_beats_no_boxes, assert_segmentation_beats_background, fit_detection, fit_segmentation

sys.path.insert(0, str(Path(__file__).parents[1] / "hub"))  # tests/hub: the local Hub server
from hub_server import LocalHubServer, patch_client_endpoint  # noqa: E402

HUB_TOKEN = "hf_SensitivityTokenDoNotLeak012345678"


def fails(check, *args, reason: str, **kwargs) -> str:
    """Run ``check``; it must raise AssertionError with a message that matches ``reason``. Returns the message."""
    with pytest.raises(AssertionError, match=reason) as info:
        check(*args, **kwargs)
    print(f"{check.__name__} failed as it should: {info.value}")
    return str(info.value)


def test_segmentation_check_fails_with_a_constant_head(segmentation_head_constant, hf_cache, tmp_path):
    """The run of tests/compat/test_hub_and_dense.py::test_segmentation_with_hf_hub_timm with the head fed zeros:
    the best constant it learns is background everywhere."""
    repo = hf_cache("acme/seg-resnet", "test_resnet")
    _, _, score = fit_segmentation(repo.hub_name, default_root_dir=tmp_path, logger=False, enable_checkpointing=False)
    fails(assert_segmentation_beats_background, score, reason="segmentation: ")


def test_detection_check_fails_with_a_constant_head(detection_head_constant, hf_cache, tmp_path):
    """The run of tests/compat/test_hub_and_dense.py::test_detection_with_hf_hub_timm with the head fed zeros."""
    repo = hf_cache("acme/det-resnet", "test_resnet")
    _, _, score = fit_detection(repo.hub_name, default_root_dir=tmp_path, logger=False, enable_checkpointing=False)
    fails(assert_detection_beats_no_boxes, score, reason="detection: ")


@pytest.mark.parametrize("broken", [False, True], ids=["intact", "broken"])
def test_onnx_optimiser_check_fails_when_the_file_is_copied(broken, request, tmp_path):
    """tests/export/test_onnx_vision.py::test_optimized_models_are_saved_and_agree at its weakest level (basic)."""
    import hubtrain.export as export

    if broken:
        request.getfixturevalue("onnx_optimiser_copies")
    original = redundant_onnx_graph(tmp_path / "redundant.onnx")
    out = export.optimize_onnx_model(original, tmp_path / "redundant.basic.onnx", level="basic")
    if broken:
        fails(assert_onnx_optimized, original, out, "basic", reason="was not rewritten")
    else:
        assert_onnx_optimized(original, out, "basic")


@pytest.mark.parametrize("broken", [False, True], ids=["intact", "broken"])
def test_auroc_check_fails_when_the_metric_gets_logits(broken, request, image_folder, tmp_path, one_thread):
    """tests/tasks/test_classification.py::test_auroc_receives_probabilities."""
    if broken:
        request.getfixturevalue("auroc_given_logits")
    root = image_folder(("a", "b", "c"), {"train": 6, "val": 6})
    if broken:
        fails(check_auroc_receives_probabilities, root, tmp_path, reason="not the softmax of the logits")
    else:
        check_auroc_receives_probabilities(root, tmp_path)


@pytest.mark.parametrize("broken", [False, True], ids=["intact", "broken"])
def test_upload_check_fails_when_the_conversion_drops_keys(broken, request, resnet_bk, tmp_path, monkeypatch):
    """tests/hub/test_hub.py::test_batch_upload_reports_each_checkpoint_and_exits_non_zero_on_failure: a .pt
    checkpoint converted to safetensors on upload."""
    import torch
    from huggingface_hub import snapshot_download

    from hubtrain.hub import upload_model_to_hub

    if broken:
        request.getfixturevalue("upload_drops_keys")
    checkpoint = tmp_path / "tiny_a.pt"
    torch.save({"config": resnet_bk.config.to_dict(), "state_dict": resnet_bk.state_dict()}, checkpoint)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    with LocalHubServer(tokens={HUB_TOKEN: "alice"}, max_lifetime_s=120) as hub, patch_client_endpoint(hub.endpoint):
        upload_model_to_hub(checkpoint, "alice/rbk-tiny-a", token=HUB_TOKEN)
        folder = Path(snapshot_download("alice/rbk-tiny-a", cache_dir=tmp_path / "cache", endpoint=hub.endpoint, token=HUB_TOKEN))
    if broken:
        fails(assert_uploaded_weights, folder, resnet_bk, reason=r"key\(s\) missing")
    else:
        assert_uploaded_weights(folder, resnet_bk)
