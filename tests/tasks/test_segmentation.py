"""SemanticSegmentor: losses against hand-computed values, ignore_index, decoder strides, learning, round trip."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from hubtrain.data.segmentation import SegmentationDataModule
from hubtrain.tasks.losses import SegmentationLoss, dice_loss, softmax_focal_loss
from hubtrain.tasks.segmentation import SemanticSegmentor
from hubtrain.training import AutoTrainer

QUIET = dict(enable_progress_bar=False, enable_model_summary=False, accelerator="cpu", devices=1)
TINY = dict(aspp_channels=32, decoder_channels=32, low_level_channels=16, pretrained=False)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # Two intra-op threads on a loaded 2-core machine spin against each other (measured ~25x slower here).
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _logits_from_probs(p1: list[float]) -> torch.Tensor:
    """(1, 2, 2, 2) logits whose softmax gives class 1 the probabilities p1 (row-major) and class 0 the rest."""
    p1 = torch.tensor(p1, dtype=torch.float64).view(1, 1, 2, 2)
    return torch.cat([torch.log(1 - p1), torch.log(p1)], dim=1)


P1 = [0.9, 0.2, 0.6, 0.1]
TARGET = torch.tensor([[[1, 0], [1, 0]]])


def test_dice_matches_hand_computed_value():
    logits = _logits_from_probs(P1)
    # class 1: |P.T| = 0.9 + 0.6, |P| = 1.8, |T| = 2; class 0: |P.T| = 0.8 + 0.9, |P| = 2.2, |T| = 2
    expected = 1 - (2 * 1.5 / 3.8 + 2 * 1.7 / 4.2) / 2
    assert dice_loss(logits, TARGET, ignore_index=255, smooth=0.0).item() == pytest.approx(expected, abs=1e-9)
    # ignoring the last pixel removes it from both P and T
    ignored = TARGET.clone()
    ignored[0, 1, 1] = 255
    expected = 1 - (2 * 1.5 / 3.7 + 2 * 0.8 / 2.3) / 2
    assert dice_loss(logits, ignored, ignore_index=255, smooth=0.0).item() == pytest.approx(expected, abs=1e-9)


def test_focal_matches_hand_computed_value_and_reduces_to_cross_entropy():
    logits = _logits_from_probs(P1)
    p_true = [0.9, 0.8, 0.6, 0.9]  # probability of each pixel's true class
    expected = sum(-((1 - p) ** 2) * math.log(p) for p in p_true) / 4
    assert softmax_focal_loss(logits, TARGET, gamma=2.0).item() == pytest.approx(expected, abs=1e-9)

    torch.manual_seed(0)
    logits = torch.randn(2, 5, 8, 8, dtype=torch.float64)
    target = torch.randint(0, 5, (2, 8, 8))
    target[:, :2] = 255
    weights = torch.tensor([0.5, 1.0, 2.0, 1.5, 0.2], dtype=torch.float64)
    ce = F.cross_entropy(logits, target, weight=weights, ignore_index=255)
    assert softmax_focal_loss(logits, target, gamma=0.0, alpha=weights).item() == pytest.approx(ce.item(), abs=1e-12)
    ce = F.cross_entropy(logits, target, ignore_index=255)
    assert softmax_focal_loss(logits, target, gamma=0.0).item() == pytest.approx(ce.item(), abs=1e-12)


@pytest.mark.parametrize("loss_type", ["ce", "dice", "focal", "combined"])
def test_ignore_index_region_does_not_affect_loss(loss_type):
    torch.manual_seed(0)
    criterion = SegmentationLoss(loss_type, ignore_index=255, class_weights=[1.0, 2.0, 0.5])
    target = torch.randint(0, 3, (2, 16, 16))
    target[:, 4:12, 4:12] = 255
    logits = torch.randn(2, 3, 16, 16, requires_grad=True)
    loss = criterion(logits, target)
    loss.backward()
    assert logits.grad[:, :, 4:12, 4:12].abs().max().item() == 0.0
    assert logits.grad.abs().sum().item() > 0

    changed = logits.detach().clone()
    changed[:, :, 4:12, 4:12] = 100 * torch.randn(2, 3, 8, 8)
    assert criterion(changed, target).item() == pytest.approx(loss.item(), abs=1e-6)
    # ... while the same change counts once those pixels are labelled
    labelled = target.clone()
    labelled[:, 4:12, 4:12] = 0
    assert abs(criterion(changed, labelled).item() - criterion(logits.detach(), labelled).item()) > 1e-3


def test_loss_refuses_logits_at_another_resolution():
    with pytest.raises(ValueError, match="upsample the logits"):
        SegmentationLoss("ce")(torch.randn(1, 3, 8, 8), torch.zeros(1, 32, 32, dtype=torch.long))


def test_decoder_and_encoder_strides_are_what_they_claim():
    x = torch.randn(2, 3, 64, 64)
    model = SemanticSegmentor("test_resnet", num_classes=3, output_stride=16, **TINY).eval()
    assert (model.encoder_stride, model.decoder_stride) == (16, 4)
    with torch.no_grad():
        assert model.backbone(x)[-1].shape[-2:] == (64 // 16, 64 // 16)
        assert model.forward_logits(x).shape == (2, 3, 64 // 4, 64 // 4)
        assert model(x).shape == (2, 3, 64, 64)
        assert model(x, output_size=(96, 80)).shape == (2, 3, 96, 80)  # masks larger than the input
        assert model.predict(x).shape == (2, 64, 64)
    assert model.head.atrous_rates == (6, 12, 18)

    fcn = SemanticSegmentor("test_resnet", num_classes=3, head_type="fcn", output_stride=8, **TINY).eval()
    assert (fcn.encoder_stride, fcn.decoder_stride) == (8, 8)
    with torch.no_grad():
        assert fcn.forward_logits(x).shape == (2, 3, 8, 8)
    os32 = SemanticSegmentor("test_resnet", num_classes=3, output_stride=32, **TINY)
    assert os32.encoder_stride == 32 and os32.head.atrous_rates == (3, 6, 9)


def test_loss_and_metrics_see_every_pixel_of_a_larger_mask():
    model = SemanticSegmentor("test_resnet", num_classes=3, **TINY).eval()
    images = torch.randn(2, 3, 32, 32)
    masks = torch.randint(0, 3, (2, 64, 64))
    masks[:, :8] = 255
    with torch.no_grad(), pytest.warns(UserWarning, match="self.log"):  # no trainer attached: logging is skipped
        model.validation_step((images, masks), 0)
    confmat = model.per_class_iou["val"].confmat
    assert int(confmat.sum()) == 2 * 56 * 64  # every labelled pixel of the 64x64 masks, none of the ignored ones
    accuracy = model.metrics.metrics("val")["val/pixel_accuracy"]
    assert int(accuracy.tp.sum() + accuracy.fn.sum()) == 2 * 56 * 64


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(head_type="unet"), "head_type='unet'"),
        (dict(loss_type="lovasz"), "loss_type='lovasz'"),
        (dict(class_weights=[1.0, 2.0]), "class_weights has 2"),
        (dict(output_stride=4), "output_stride=4"),
        (dict(num_classes=1), "num_classes=1"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SemanticSegmentor("test_resnet", **{"num_classes": 3, **TINY, **kwargs})


def test_custom_metrics_and_monitor_fallback():
    from hubtrain.metrics import MetricConfig

    f1 = MetricConfig("f1", metric_class="F1Score", params={"task": "multiclass", "num_classes": 3,
                                                          "ignore_index": 255}, stages=["val"])
    model = SemanticSegmentor("test_resnet", num_classes=3, metrics=[f1], **TINY)
    assert model.monitor == ("val/loss", "min")  # no val/mIoU to follow
    assert list(model.metrics.metrics("val")) == ["val/f1"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A DeepLabV3+ on test_resnet, 4 epochs of 256 synthetic 64-px images (about 10 s on one core)."""
    torch.manual_seed(0)
    data = SegmentationDataModule(dataset_name="synthetic_shapes", image_size=64, batch_size=16,
                                  synthetic_sizes={"train": 256, "val": 64, "test": 32})
    model = SemanticSegmentor("test_resnet", num_classes=data.num_classes, class_names=data.class_names,
                              loss_type="combined", lr=3e-3, **TINY)
    trainer = AutoTrainer(max_epochs=4, default_root_dir=tmp_path_factory.mktemp("runs"), plot_curves=False, **QUIET)
    trainer.fit(model, datamodule=data)
    return model, trainer, data


def test_learns_synthetic_shapes(trained):
    model, trainer, data = trained
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    # Measured here: val/mIoU 0.90, pixel accuracy 0.98; chance mIoU is about 0.25.
    assert metrics["val/mIoU"] > 0.6, metrics
    assert metrics["val/pixel_accuracy"] > 0.9, metrics
    for name in ("background", "circle", "rectangle", "triangle"):
        assert metrics[f"val/IoU_{name}"] > 0.3, metrics
    assert model.monitor == ("val/mIoU", "max")
    best = trainer.checkpoint_callback.best_model_path
    assert "val_mIoU=" in best and "val_mIoU=0.0000" not in best

    test = trainer.test(model, datamodule=data, verbose=False)[0]
    assert test["test/mIoU"] > 0.6, test

    images, masks = next(iter(data.test_dataloader()))
    pred = model.predict(images)
    assert pred.shape == masks.shape and pred.dtype == torch.long
    assert (pred == masks).float().mean().item() > 0.9


def test_save_pretrained_round_trip_gives_identical_outputs(trained, tmp_path):
    model, _, data = trained
    folder = model.save_pretrained(tmp_path / "segmentor")
    assert {p.name for p in folder.iterdir()} >= {"model.safetensors", "config.json", "README.md"}
    loaded = SemanticSegmentor.from_pretrained(folder)
    assert loaded.class_names == data.class_names and loaded.decoder_stride == model.decoder_stride
    images, _ = next(iter(data.val_dataloader()))
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(images), loaded(images))  # same weights, same graph: bit-identical on CPU


def test_hf_hub_timm_backbone_loads_cached_weights_and_rebuilds_offline(hf_cache, tmp_path):
    repo = hf_cache("acme/tiny-resnet", "test_resnet")
    # The seed's example, with a cached hub model: SemanticSegmentor(backbone="hf-hub:...", head_type="deeplabv3plus")
    model = SemanticSegmentor(backbone=repo.hub_name, num_classes=19, head_type="deeplabv3plus",
                              aspp_channels=16, decoder_channels=16, low_level_channels=8)
    weights = model.backbone.model.state_dict()
    assert weights.keys() <= repo.state_dict.keys()
    assert all(torch.equal(weights[k], repo.state_dict[k]) for k in weights)
    assert model.encoder_stride == 16  # output_stride reaches timm through hf-hub: as well

    folder = model.save_pretrained(tmp_path / "seg")
    loaded = SemanticSegmentor.from_pretrained(folder)  # HF_HUB_OFFLINE=1: rebuilt from config.json alone
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(model.eval()(x), loaded(x))


@pytest.mark.parametrize("config_name", ["ConvNextConfig", "ViTConfig"])
def test_transformers_backbones_give_full_resolution_logits(config_name, tmp_path):
    import transformers

    if config_name == "ConvNextConfig":
        config = transformers.ConvNextConfig(hidden_sizes=[16, 24, 32, 48], depths=[1, 1, 1, 1], image_size=64)
    else:
        config = transformers.ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                        intermediate_size=64, image_size=64, patch_size=16)
    model = SemanticSegmentor(config, num_classes=3, aspp_channels=16, decoder_channels=16, low_level_channels=8).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert model.forward_logits(x).shape[-1] == 64 // model.decoder_stride
        assert model(x).shape == (2, 3, 64, 64)
        loaded = SemanticSegmentor.from_pretrained(model.save_pretrained(tmp_path / "seg"))
        assert torch.equal(model(x), loaded(x))


def test_cli_fit_from_yaml(tmp_path):
    from hubtrain.cli import main

    config = tmp_path / "seg.yaml"
    config.write_text(f"""
model:
  class_path: hubtrain.SemanticSegmentor
  init_args: {{backbone: test_resnet, num_classes: 4, pretrained: false, aspp_channels: 16, decoder_channels: 16,
              low_level_channels: 8}}
data:
  class_path: hubtrain.SegmentationDataModule
  init_args: {{dataset_name: synthetic_shapes, image_size: 32, batch_size: 8, synthetic_sizes: {{train: 16, val: 8}}}}
trainer: {{max_epochs: 1, default_root_dir: {tmp_path / 'runs'}, enable_progress_bar: false}}
""")
    assert main(["fit", "--config", str(config)]) in (0, None)
    [metrics_csv] = (tmp_path / "runs").rglob("metrics.csv")
    header = metrics_csv.read_text().splitlines()[0].split(",")
    assert {"val/mIoU", "val/pixel_accuracy", "val/IoU_3"} <= set(header)
