"""ObjectDetector (FCOS): target assignment, losses against hand-computed values, NMS decoding, learning, round trip."""
from __future__ import annotations

import math

import pytest
import torch
from torchvision.ops import box_iou, generalized_box_iou_loss

from hubtrain.data.detection import DetectionDataModule
from hubtrain.data.synthetic import make_shape_sample
from hubtrain.tasks.detection import ObjectDetector
from hubtrain.tasks.heads.fcos import DEFAULT_REGRESSION_RANGES, assign_targets, decode, fcos_loss, make_points
from hubtrain.tasks.losses import centerness_target
from hubtrain.training import AutoTrainer

QUIET = dict(enable_progress_bar=False, enable_model_summary=False, accelerator="cpu", devices=1)
STRIDES = [8, 16, 32, 64, 128]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # Two intra-op threads on a loaded 2-core machine spin against each other (measured ~25x slower here).
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _points(size: int) -> tuple[dict[str, torch.Tensor], list[int]]:
    sizes = [(math.ceil(size / s), math.ceil(size / s)) for s in STRIDES]
    return make_points(sizes, STRIDES, DEFAULT_REGRESSION_RANGES, torch.device("cpu")), [h * w for h, w in sizes]


def test_giou_and_centerness_match_hand_computed_values():
    a, b = torch.tensor([[0.0, 0.0, 2.0, 2.0]]), torch.tensor([[1.0, 1.0, 3.0, 3.0]])
    iou, enclosing, union = 1 / 7, 9.0, 7.0
    assert generalized_box_iou_loss(a, b).item() == pytest.approx(1 - (iou - (enclosing - union) / enclosing), abs=1e-6)
    assert centerness_target(torch.tensor([1.0, 2.0, 3.0, 4.0])).item() == pytest.approx(math.sqrt(1 / 3 * 2 / 4))
    assert centerness_target(torch.tensor([5.0, 5.0, 5.0, 5.0])).item() == pytest.approx(1.0)


def test_assignment_centre_sampling_regression_ranges_and_smallest_box():
    points, _ = _points(64)
    box, label = torch.tensor([[8.0, 8.0, 40.0, 40.0]]), torch.tensor([1])
    matched, ltrb = assign_targets(points, box, label, center_sampling_radius=1.5)
    positive = matched >= 0
    # P3 centres are 4, 12, 20, ...; within 1.5 strides (12 px) of the box centre (24, 24): x, y in {20, 28}
    assert sorted(map(tuple, points["xy"][positive].tolist())) == [(20, 20), (20, 28), (28, 20), (28, 28)]
    assert (points["stride"][positive] == 8).all()
    first = torch.nonzero(positive)[0, 0]
    assert ltrb[first].tolist() == [12.0, 12.0, 20.0, 20.0]  # point (20, 20) to the box sides
    matched, _ = assign_targets(points, box, label, center_sampling_radius=0.0)
    assert int((matched >= 0).sum()) == 16  # every P3 centre strictly inside the box

    # A 200-px box: its centre's largest side distance (100) falls in P4's range (64, 128), so only P4 learns it.
    big_points, _ = _points(256)
    matched, _ = assign_targets(big_points, torch.tensor([[28.0, 28.0, 228.0, 228.0]]), label)
    assert (matched >= 0).any() and set(big_points["stride"][matched >= 0].tolist()) == {16.0}

    # Where two boxes overlap, a location learns the smaller one.
    boxes = torch.tensor([[0.0, 0.0, 64.0, 64.0], [16.0, 16.0, 48.0, 48.0]])
    matched, _ = assign_targets(points, boxes, torch.tensor([0, 2]), center_sampling_radius=0.0)
    centre = int(((points["xy"] - torch.tensor([28.0, 28.0])).abs().sum(1) == 0).nonzero()[0, 0])
    assert matched[centre].item() == 1

    matched, _ = assign_targets(points, torch.zeros(0, 4), torch.zeros(0, dtype=torch.long))
    assert (matched == -1).all()


def test_fcos_loss_hand_computed_focal_and_perfect_boxes():
    points, _ = _points(64)
    num_points, num_classes = points["xy"].shape[0], 3
    targets = [{"boxes": torch.tensor([[8.0, 8.0, 40.0, 40.0]]), "labels": torch.tensor([2])}]
    matched, ltrb_true = assign_targets(points, targets[0]["boxes"], targets[0]["labels"])
    num_pos = int((matched >= 0).sum())
    logit = -3.0
    outputs = {
        "cls": torch.full((1, num_points, num_classes), logit),
        "ltrb": ltrb_true.unsqueeze(0).clone(),  # perfect boxes where positive
        "ctr": torch.zeros(1, num_points),
    }
    losses = fcos_loss(outputs, points, targets, num_classes, focal_alpha=0.25, focal_gamma=2.0)
    p = 1 / (1 + math.exp(-logit))
    positive_term = 0.25 * (1 - p) ** 2 * -math.log(p)
    negative_term = 0.75 * p**2 * -math.log(1 - p)
    total_entries = num_points * num_classes
    expected = (num_pos * positive_term + (total_entries - num_pos) * negative_term) / num_pos
    assert losses["loss_cls"].item() == pytest.approx(expected, rel=1e-5)
    assert losses["loss_box"].item() == pytest.approx(0.0, abs=1e-6)
    # centerness logits of 0 predict 0.5: BCE against the true centerness of each positive location
    ctr = centerness_target(ltrb_true[matched >= 0])
    expected_ctr = float(sum(-(c * math.log(0.5) + (1 - c) * math.log(0.5)) for c in ctr.tolist())) / num_pos
    assert losses["loss_ctr"].item() == pytest.approx(expected_ctr, rel=1e-5)

    outputs["ltrb"] = outputs["ltrb"] * 2  # boxes twice too large: GIoU loss > 0
    assert fcos_loss(outputs, points, targets, num_classes)["loss_box"].item() > 0.1


def test_decode_scores_boxes_and_classwise_nms():
    points, level_sizes = _points(64)
    num_points = points["xy"].shape[0]
    outputs = {"cls": torch.full((1, num_points, 3), -20.0), "ltrb": torch.zeros(1, num_points, 4),
               "ctr": torch.full((1, num_points), 20.0)}
    a = int(((points["xy"] - torch.tensor([20.0, 20.0])).abs().sum(1) == 0).nonzero()[0, 0])
    b = int(((points["xy"] - torch.tensor([28.0, 20.0])).abs().sum(1) == 0).nonzero()[0, 0])
    outputs["cls"][0, a, 2] = 4.0
    outputs["ltrb"][0, a] = torch.tensor([10.0, 10.0, 10.0, 10.0])  # box (10, 10, 30, 30)
    outputs["cls"][0, b, 2] = 3.0
    outputs["ltrb"][0, b] = torch.tensor([18.0, 10.0, 2.0, 10.0])  # the same box from a neighbour: suppressed
    outputs["cls"][0, b, 0] = 2.0  # same box, another class: kept (NMS is per class)
    result = decode(outputs, points, level_sizes, (64, 64), score_thresh=0.05, nms_thresh=0.5)[0]
    assert result["labels"].tolist() == [2, 0]
    assert result["boxes"].tolist() == [[10.0, 10.0, 30.0, 30.0]] * 2
    assert result["scores"][0].item() == pytest.approx(math.sqrt(1 / (1 + math.exp(-4.0)) * 1 / (1 + math.exp(-20.0))))
    assert decode(outputs, points, level_sizes, (64, 64), max_detections=1)[0]["labels"].tolist() == [2]


@pytest.mark.parametrize("kwargs, match", [
    (dict(detection_arch="retinanet"), "detection_arch='retinanet'"),
    (dict(regression_ranges=[(0, 64)]), "5 \\(min, max\\) pairs"),
    (dict(class_names=["a"]), "class_names has 1"),
])
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ObjectDetector("test_resnet", **{"num_classes": 3, "pretrained": False, **kwargs})


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """FCOS on test_resnet, 5 epochs of 256 synthetic 64-px images (about 15 s on one core)."""
    torch.manual_seed(0)
    data = DetectionDataModule(dataset_name="synthetic_shapes", image_size=64, batch_size=16,
                               synthetic_sizes={"train": 256, "val": 64, "test": 32})
    model = ObjectDetector("test_resnet", num_classes=data.num_classes, class_names=data.class_names,
                           fpn_channels=32, head_num_convs=2, lr=3e-3, pretrained=False)
    trainer = AutoTrainer(max_epochs=5, default_root_dir=tmp_path_factory.mktemp("runs"), plot_curves=False,
                          num_sanity_val_steps=0, **QUIET)
    trainer.fit(model, datamodule=data)
    return model, trainer, data


def test_learns_synthetic_shapes(trained):
    model, trainer, data = trained
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    # Measured here (seeds 0-2): val/map_50 0.90-0.99, val/map 0.57-0.73; an untrained head scores ~0.
    assert metrics["val/map_50"] > 0.6, metrics
    assert metrics["val/map"] > 0.3, metrics
    assert model.monitor == ("val/map", "max")
    assert "val_map=0.0000" not in trainer.checkpoint_callback.best_model_path

    # An easy image: a single shape. The top detection finds it.
    data.setup("test")
    index = next(i for i in range(100) if len(make_shape_sample("test", i, 64, seed=data.seed).labels) == 1)
    image, target = data.test_dataset[index]
    model.train()
    [pred] = model.predict(image)
    assert model.training  # predict() ran in eval mode and put the previous mode back
    assert set(pred) == {"boxes", "scores", "labels"}
    assert pred["scores"].numel() > 0 and (pred["scores"][:-1] >= pred["scores"][1:]).all()
    iou = box_iou(pred["boxes"][:1], target["boxes"]).item()
    assert iou > 0.5 and pred["labels"][0].item() == target["labels"][0].item(), (pred, target)
    assert len(model.predict(torch.stack([image, image]))) == 2


def test_save_pretrained_round_trip_gives_identical_predictions(trained, tmp_path):
    model, _, data = trained
    folder = model.save_pretrained(tmp_path / "detector")
    loaded = ObjectDetector.from_pretrained(folder)
    assert loaded.class_names == data.class_names
    images, _ = next(iter(data.val_dataloader()))
    for a, b in zip(model.predict(images), loaded.predict(images)):
        for key in ("boxes", "scores", "labels"):
            assert torch.equal(a[key], b[key]), key


def test_hf_hub_and_transformers_backbones(hf_cache, tmp_path):
    import transformers

    repo = hf_cache("acme/tiny-resnet", "test_resnet")
    model = ObjectDetector(repo.hub_name, num_classes=3, fpn_channels=16, head_num_convs=1)
    weights = model.backbone.model.state_dict()
    assert weights.keys() <= repo.state_dict.keys()
    assert all(torch.equal(weights[k], repo.state_dict[k]) for k in weights)
    x = torch.randn(2, 3, 64, 64)
    loaded = ObjectDetector.from_pretrained(model.save_pretrained(tmp_path / "det"))  # offline rebuild
    with torch.no_grad():
        assert all(torch.equal(a, b) for a, b in zip(model.eval()(x).values(), loaded(x).values()))

    config = transformers.ConvNextConfig(hidden_sizes=[16, 24, 32, 48], depths=[1, 1, 1, 1], image_size=64)
    detector = ObjectDetector(config, num_classes=3, fpn_channels=16, head_num_convs=1)
    assert detector.fpn.strides == [8, 16, 32, 64, 128]
    assert [set(p) for p in detector.predict(x)] == [{"boxes", "scores", "labels"}] * 2
