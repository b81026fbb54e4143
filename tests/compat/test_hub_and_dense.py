"""HF Hub timm beyond classification, and the real HTTP download path.

- ``test_download_from_local_hub_mirror``: huggingface_hub's own download code against an ``olah`` Hub mirror
  started here on 127.0.0.1 (``HF_ENDPOINT``), into an empty cache, with ``HF_HUB_OFFLINE`` unset; then training.
- segmentation and detection with an ``hf-hub:`` timm backbone from a test-built cache.
"""
from __future__ import annotations

import pytest
import torch

from hubtrain import AutoTrainer, ImageClassifier, ObjectDetector, SemanticSegmentor


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
    from hubtrain import SegmentationDataModule

    repo = hf_cache("acme/seg-resnet", "test_resnet")
    data = SegmentationDataModule(
        dataset_name="synthetic_shapes", image_size=32, batch_size=8, synthetic_sizes={"train": 32, "val": 16}
    )
    model = SemanticSegmentor(backbone=repo.hub_name, num_classes=4, head_type="deeplabv3plus", aspp_channels=32,
                              decoder_channels=32, low_level_channels=16, lr=3e-3)
    trainer = AutoTrainer(max_epochs=2, **trainer_kwargs)
    trainer.fit(model, datamodule=data)
    metrics = trainer.callback_metrics
    assert 0.0 <= float(metrics["val/mIoU"]) <= 1.0
    images, masks = next(iter(data.val_dataloader()))
    with torch.no_grad():
        logits = model.eval()(images)
    assert logits.shape[-2:] == masks.shape[-2:] == (32, 32)  # predictions at the mask's resolution
    # it learned something beyond background: pixel accuracy above the background share
    background = float((masks == 0).float().mean())
    assert float((logits.argmax(1) == masks).float().mean()) > background - 0.05


def test_detection_with_hf_hub_timm(hf_cache, trainer_kwargs):
    from hubtrain import DetectionDataModule

    repo = hf_cache("acme/det-resnet", "test_resnet")
    data = DetectionDataModule(dataset_name="synthetic_shapes", image_size=64, batch_size=4, synthetic_sizes={"train": 16, "val": 8})
    model = ObjectDetector(backbone=repo.hub_name, num_classes=3, fpn_channels=32, head_num_convs=1, lr=1e-3)
    trainer = AutoTrainer(max_epochs=1, **trainer_kwargs)
    trainer.fit(model, datamodule=data)
    assert torch.isfinite(trainer.callback_metrics["train/loss_epoch" if "train/loss_epoch" in trainer.callback_metrics else "train/loss"])
    batch = next(iter(data.val_dataloader()))
    images = batch[0]
    detections = model.predict(images)
    assert len(detections) == len(images)
    for det in detections:
        assert set(det) >= {"boxes", "scores", "labels"}
        assert det["boxes"].shape[-1] == 4 and len(det["boxes"]) == len(det["scores"]) == len(det["labels"])
