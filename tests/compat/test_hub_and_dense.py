"""HF Hub timm beyond classification, and the real HTTP download path.

- ``test_download_from_local_hub_mirror``: huggingface_hub's own download code against an ``olah`` Hub mirror
  started here on 127.0.0.1 (``HF_ENDPOINT``), into an empty cache, with ``HF_HUB_OFFLINE`` unset; then training.
- segmentation and detection with an ``hf-hub:`` timm backbone from a test-built cache, judged against the trivial
  predictors (background everywhere; no boxes).
"""
from __future__ import annotations

import pytest
import torch

from hubtrain import AutoTrainer, ImageClassifier
from learning import assert_detection_beats_no_boxes, assert_segmentation_beats_background, fit_detection, fit_segmentation


def test_download_from_local_hub_mirror(olah_mirror, hf_cache, monkeypatch, tmp_path, loaders, trainer_kwargs):
    import timm
    from huggingface_hub import constants
    from timm.models import save_for_hf

    torch.manual_seed(0)
    source = timm.create_model("test_resnet", pretrained=False)
    save_for_hf(source, tmp_path / "src", safe_serialization=True)
    olah_mirror.add_repo("acme/served-resnet", tmp_path / "src")
    olah_mirror.start()

    # Online, pointed at the mirror; the cache is empty, so the weights can only come over HTTP.
    hf_cache.set_offline(False)
    monkeypatch.setenv("HF_ENDPOINT", olah_mirror.endpoint)
    monkeypatch.setattr(constants, "ENDPOINT", olah_mirror.endpoint)
    monkeypatch.setattr(
        constants, "HUGGINGFACE_CO_URL_TEMPLATE", olah_mirror.endpoint + "/{repo_id}/resolve/{revision}/{filename}"
    )
    assert not any(hf_cache.hub_dir.iterdir())

    model = ImageClassifier(backbone="hf-hub:acme/served-resnet", num_classes=3, lr=3e-3)
    snapshots = list((hf_cache.hub_dir / "models--acme--served-resnet" / "snapshots").glob("*/model.safetensors"))
    assert len(snapshots) == 1, "the weights were not downloaded into the cache"
    for key, value in source.state_dict().items():
        if not key.startswith("fc."):
            assert torch.equal(model.backbone.model.state_dict()[key], value), key

    trainer = AutoTrainer(max_epochs=2, **trainer_kwargs)
    trainer.fit(model, loaders("train"), loaders("val"))
    assert trainer.global_step == 12 and torch.isfinite(trainer.callback_metrics["val/loss"])


def test_segmentation_with_hf_hub_timm(hf_cache, trainer_kwargs):
    """Learns the shapes: beats predicting background everywhere by the margins of
    ``assert_segmentation_beats_background`` (which that predictor, 0.86 pixel accuracy here, used to pass)."""
    repo = hf_cache("acme/seg-resnet", "test_resnet")
    model, data, score = fit_segmentation(repo.hub_name, **trainer_kwargs)
    assert_segmentation_beats_background(score)
    images, masks = next(iter(data.val_dataloader()))
    with torch.no_grad():
        logits = model.eval()(images)
    assert logits.shape[-2:] == masks.shape[-2:] == (32, 32)  # predictions at the mask's resolution


def test_detection_with_hf_hub_timm(hf_cache, trainer_kwargs):
    """Finds the shapes: mAP@0.5 and recall above the margins of ``assert_detection_beats_no_boxes`` (predicting no
    boxes scores 0 on both)."""
    repo = hf_cache("acme/det-resnet", "test_resnet")
    model, data, score = fit_detection(repo.hub_name, **trainer_kwargs)
    assert_detection_beats_no_boxes(score)
    images = next(iter(data.val_dataloader()))[0]
    detections = model.predict(images)
    assert len(detections) == len(images)
    for det in detections:
        assert set(det) >= {"boxes", "scores", "labels"}
        assert det["boxes"].shape[-1] == 4 and len(det["boxes"]) == len(det["scores"]) == len(det["labels"])
