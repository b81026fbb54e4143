"""DetectionDataModule: COCO and CSV parsing, one label mapping for all splits, boxes resized with images, errors."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from hubtrain.data.detection import DetectionDataModule, detection_collate
from hubtrain.data.synthetic import make_shape_sample

CATEGORIES = [{"id": 3, "name": "cat"}, {"id": 7, "name": "dog"}, {"id": 10, "name": "bird"}]


def write_coco(root: Path, split: str, annotations: list[dict], categories=CATEGORIES, n_images: int = 2,
               size: tuple[int, int] = (100, 50)) -> Path:
    """Images ``img{i}.png`` of ``size`` (W, H) under ``root/split`` and ``root/annotations/instances_<split>.json``."""
    (root / split).mkdir(parents=True, exist_ok=True)
    images = []
    for i in range(n_images):
        Image.new("RGB", size, (i * 40, 80, 120)).save(root / split / f"img{i}.png")
        images.append({"id": i + 1, "file_name": f"img{i}.png", "width": size[0], "height": size[1]})
    path = root / "annotations" / f"instances_{split}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return path


def ann(i: int, image_id: int, bbox: list[float], category_id: int, **extra) -> dict:
    return {"id": i, "image_id": image_id, "bbox": bbox, "category_id": category_id, "area": bbox[2] * bbox[3], **extra}


def test_coco_contiguous_labels_shared_by_splits_and_resized_boxes(tmp_path):
    write_coco(tmp_path, "train", [ann(1, 1, [10, 5, 20, 10], 10), ann(2, 1, [50, 20, 40, 25], 3),
                                   ann(3, 2, [0, 0, 5, 5], 7, iscrowd=1)])
    # val knows only two of the categories, in another order: the mapping must not change
    write_coco(tmp_path, "val", [ann(1, 1, [10, 5, 20, 10], 10)], categories=[CATEGORIES[2], CATEGORIES[0]])
    data = DetectionDataModule(tmp_path, image_size=64, batch_size=2, augment=False)
    data.setup("fit")
    assert data.class_names == ["cat", "dog", "bird"] and data.num_classes == 3

    image, target = data.train_dataset[0]
    assert image.shape == (3, 64, 64)
    assert target["labels"].tolist() == [2, 0]  # ids 10 -> 2, 3 -> 0
    # xywh -> xyxy, then x scaled by 64/100 and y by 64/50 with the image
    expected = torch.tensor([[10, 5, 30, 15], [50, 20, 90, 45]], dtype=torch.float32) * torch.tensor([0.64, 1.28, 0.64, 1.28])
    torch.testing.assert_close(target["boxes"], expected)
    _, crowd_only = data.train_dataset[1]  # the crowd box is skipped: a background-only image
    assert crowd_only["boxes"].shape == (0, 4) and crowd_only["labels"].numel() == 0
    assert data.val_dataset[0][1]["labels"].tolist() == [2]

    images, targets = next(iter(data.train_dataloader()))
    assert images.shape == (2, 3, 64, 64) and sorted(len(t["boxes"]) for t in targets) == [0, 2]  # shuffled


def test_training_flip_moves_boxes_with_the_image(tmp_path):
    write_coco(tmp_path, "train", [ann(1, 1, [10, 5, 20, 10], 3), ann(2, 2, [10, 5, 20, 10], 3)])
    data = DetectionDataModule(tmp_path, image_size=(50, 100), val_split=0.5)
    data.setup("fit")
    seen = set()
    torch.manual_seed(0)
    for _ in range(12):
        _, target = data.train_dataset[0]
        seen.add(tuple(target["boxes"][0].tolist()))
    assert seen == {(10.0, 5.0, 30.0, 15.0), (70.0, 5.0, 90.0, 15.0)}  # as is, and mirrored in x


@pytest.mark.parametrize("bad, error, match", [
    (ann(9, 1, [90, 5, 20, 10], 3), ValueError, "annotation 9 of img0.png: box \\[90.0, 5.0, 110.0, 15.0\\] lies outside"),
    (ann(9, 1, [10, 5, 0, 10], 3), ValueError, "annotation 9 .* has no area"),
    (ann(9, 1, [10, 5, 20, 10], 42), ValueError, "category_id 42 is not in 'categories'"),
    (ann(9, 77, [10, 5, 20, 10], 3), ValueError, "unknown image_id 77"),
])
def test_bad_coco_annotations_are_reported(tmp_path, bad, error, match):
    write_coco(tmp_path, "train", [ann(1, 1, [10, 5, 20, 10], 3), bad])
    with pytest.raises(error, match=match):
        DetectionDataModule(tmp_path).setup("fit")


def test_missing_coco_files_are_reported(tmp_path):
    write_coco(tmp_path, "train", [ann(1, 1, [10, 5, 20, 10], 3)])
    (tmp_path / "train" / "img1.png").unlink()
    with pytest.raises(FileNotFoundError, match="img1.png"):
        DetectionDataModule(tmp_path).setup("fit")
    with pytest.raises(FileNotFoundError, match="instances_train.json"):
        DetectionDataModule(tmp_path / "empty").setup("fit")
    with pytest.raises(FileNotFoundError, match="nope.json"):
        DetectionDataModule(train_annotations=tmp_path / "nope.json").setup("fit")


def test_csv_rows_grouped_per_image_with_negatives(tmp_path):
    for name in ("a.png", "b.png", "c.png"):
        Image.new("RGB", (80, 40)).save(tmp_path / name)
    (tmp_path / "train.csv").write_text(
        "image,x1,y1,x2,y2,label\n"
        "a.png,10,5,30,25,dog\n"
        "a.png,40,0,80,40,cat\n"
        "b.png,,,,,\n"
        "c.png,0,0,8,8,cat\n"
    )
    (tmp_path / "val.csv").write_text("image,x1,y1,x2,y2,label\nc.png,1,1,9,9,zebra\n")
    data = DetectionDataModule(format="csv", train_annotations=tmp_path / "train.csv",
                               val_annotations=tmp_path / "val.csv", image_size=(40, 80), augment=False)
    data.setup("fit")
    assert data.class_names == ["cat", "dog", "zebra"]  # sorted over all splits
    _, a = data.train_dataset[0]
    assert a["labels"].tolist() == [1, 0] and a["boxes"][0].tolist() == [10.0, 5.0, 30.0, 25.0]
    _, b = data.train_dataset[1]
    assert b["boxes"].shape == (0, 4)
    assert data.val_dataset[0][1]["labels"].tolist() == [2]

    (tmp_path / "bad.csv").write_text("image,x1,y1,x2,y2,label\na.png,30,5,10,25,dog\n")
    with pytest.raises(ValueError, match="row for a.png: box \\[30.0, 5.0, 10.0, 25.0\\] has no area"):
        DetectionDataModule(format="csv", train_annotations=tmp_path / "bad.csv").setup("fit")
    (tmp_path / "out.csv").write_text("image,x1,y1,x2,y2,label\na.png,30,5,90,25,dog\n")
    with pytest.raises(ValueError, match="outside the 80x40 image"):
        DetectionDataModule(format="csv", train_annotations=tmp_path / "out.csv").setup("fit")
    (tmp_path / "gone.csv").write_text("image,x1,y1,x2,y2,label\nmissing.png,1,1,5,5,dog\n")
    with pytest.raises(FileNotFoundError, match="missing.png"):
        DetectionDataModule(format="csv", train_annotations=tmp_path / "gone.csv").setup("fit")
    (tmp_path / "nolabel.csv").write_text("image,x1,y1,x2,y2,label\na.png,1,1,5,5,\n")
    with pytest.raises(ValueError, match="every box needs a class name"):
        DetectionDataModule(format="csv", train_annotations=tmp_path / "nolabel.csv").setup("fit")


def test_collate_keeps_variable_box_counts():
    batch = [(torch.zeros(3, 8, 8), {"boxes": torch.zeros(n, 4), "labels": torch.zeros(n, dtype=torch.long)}) for n in (0, 3, 1)]
    images, targets = detection_collate(batch)
    assert images.shape == (3, 3, 8, 8) and [len(t["labels"]) for t in targets] == [0, 3, 1]


def test_synthetic_detection_boxes_follow_the_shapes():
    data = DetectionDataModule(dataset_name="synthetic_shapes", image_size=64, augment=False,
                               synthetic_sizes={"train": 16, "val": 8})
    data.setup("fit")
    assert data.class_names == ["circle", "rectangle", "triangle"] and data.num_classes == 3
    for i in range(8):
        _, target = data.val_dataset[i]
        sample = make_shape_sample("val", i, 64, seed=data.seed)
        assert torch.equal(target["boxes"], torch.from_numpy(sample.boxes))
        assert torch.equal(target["labels"], torch.from_numpy(sample.labels))
        for (x1, y1, x2, y2), label in zip(sample.boxes.astype(int), sample.labels):
            ys, xs = np.nonzero(sample.mask == label + 1)
            inside = (xs >= x1) & (xs < x2) & (ys >= y1) & (ys < y2)
            assert inside.any()
        # the box is tight: the shape touches its left and bottom edges (all three shapes do)
        x1, y1, x2, y2 = sample.boxes[0].astype(int)
        region = sample.mask[y1:y2, x1:x2] == sample.labels[0] + 1
        assert region[:, 0].any() and region[-1, :].any()


@pytest.mark.parametrize("kwargs, match", [
    (dict(format="voc", data_dir="x"), "format='voc'"),
    (dict(dataset_name="coco2017"), "dataset_name='coco2017'"),
    (dict(), "give data_dir or train_annotations"),
])
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        DetectionDataModule(**kwargs)
