"""SegmentationDataModule: folder pairs, CSV, synthetic shapes, joint transforms and bad-input errors."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import Subset
from torchvision.transforms import v2

from hubtrain.data.segmentation import SegmentationDataModule
from hubtrain.data.synthetic import make_shape_sample

PALETTE = np.array([[0, 0, 0], [255, 0, 0], [0, 0, 255]], dtype=np.uint8)


def _mask(h: int, w: int, seed: int) -> np.ndarray:
    """Left part class 0, a class-1 block and a class-2 block, placed asymmetrically so flips show."""
    rng = np.random.default_rng(seed)
    mask = np.zeros((h, w), dtype=np.uint8)
    x = int(rng.integers(w // 2, w - 8))
    mask[2 : h // 2, x:] = 1
    mask[h // 2 :, x:] = 2
    return mask


def write_pairs(root: Path, n: int, size: tuple[int, int] = (30, 40), seed: int = 0, mask_suffix: str = ".png") -> None:
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(parents=True, exist_ok=True)
    for i in range(n):
        mask = _mask(*size, seed + i)
        Image.fromarray(PALETTE[mask]).save(root / "images" / f"img_{i}.jpg", quality=100)
        Image.fromarray(mask, mode="L").save(root / "masks" / f"img_{i}{mask_suffix}")


def test_folder_pairs_batches_and_nearest_mask_resize(tmp_path):
    write_pairs(tmp_path / "train", 6)
    write_pairs(tmp_path / "val", 2, seed=100)
    data = SegmentationDataModule(tmp_path, image_size=32, batch_size=4, num_classes=3, augment=False)
    data.setup("fit")
    assert len(data.train_dataset) == 6 and len(data.val_dataset) == 2
    images, masks = next(iter(data.train_dataloader()))
    assert images.shape == (4, 3, 32, 32) and images.dtype == torch.float32
    assert masks.shape == (4, 32, 32) and masks.dtype == torch.int64
    # Classes 0 and 2 touch along the block edges; bilinear resizing would invent 1s there, nearest never does.
    assert set(masks.unique().tolist()) <= {0, 1, 2}
    for image, mask in zip(images, masks):
        red = image[0] > image[2] + 1.0  # class 1 is pure red, class 2 pure blue (normalised units)
        assert (red == (mask == 1)).float().mean() > 0.95
    assert data.preprocessing["input_size"] == (3, 32, 32)


def test_training_flips_image_and_mask_together(tmp_path):
    write_pairs(tmp_path / "train", 4)
    write_pairs(tmp_path / "val", 1)
    data = SegmentationDataModule(tmp_path, image_size=32, batch_size=4)
    data.setup("fit")
    eval_mask = SegmentationDataModule(tmp_path, image_size=32, augment=False)
    eval_mask.setup("fit")
    reference = eval_mask.train_dataset[0][1]
    flipped = 0
    torch.manual_seed(0)
    for _ in range(12):
        image, mask = data.train_dataset[0]
        assert ((image[0] > image[2] + 1.0) == (mask == 1)).float().mean() > 0.95
        if torch.equal(mask, reference.flip(-1)):
            flipped += 1
        else:
            assert torch.equal(mask, reference)
    assert 0 < flipped < 12


def test_val_split_carved_from_train_uses_eval_transforms(tmp_path):
    write_pairs(tmp_path / "train", 10)
    data = SegmentationDataModule(tmp_path, image_size=32, val_split=0.2)
    data.setup("fit")
    assert isinstance(data.val_dataset, Subset) and len(data.val_dataset) == 2 and len(data.train_dataset) == 8
    assert not set(data.val_dataset.indices) & set(data.train_dataset.indices)
    val_steps = data.val_dataset.dataset.transform.transforms
    train_steps = data.train_dataset.dataset.transform.transforms
    assert not any(isinstance(t, v2.RandomHorizontalFlip) for t in val_steps)
    assert any(isinstance(t, v2.RandomHorizontalFlip) for t in train_steps)


def test_csv_mode_and_ignore_index_kept(tmp_path):
    write_pairs(tmp_path / "files", 3)
    mask = np.array(Image.open(tmp_path / "files" / "masks" / "img_0.png"))
    mask[:4, :4] = 255
    Image.fromarray(mask, mode="L").save(tmp_path / "files" / "masks" / "img_0.png")
    rows = "\n".join(f"files/images/img_{i}.jpg,files/masks/img_{i}.png" for i in range(3))
    (tmp_path / "train.csv").write_text("image,mask\n" + rows + "\n")
    (tmp_path / "val.csv").write_text("image,mask\n" + rows.splitlines()[0] + "\n")
    data = SegmentationDataModule(format="csv", train_csv=tmp_path / "train.csv", val_csv=tmp_path / "val.csv",
                                  image_size=(40, 30), num_classes=3, augment=False)
    data.setup("fit")
    image, mask = data.val_dataset[0]
    assert image.shape == (3, 40, 30) and mask.shape == (40, 30)
    assert 255 in mask.unique().tolist()  # ignored pixels survive resizing untouched

    (tmp_path / "bad.csv").write_text("image,mask\nfiles/images/img_0.jpg,files/masks/nope.png\n")
    with pytest.raises(FileNotFoundError, match="nope.png"):
        SegmentationDataModule(format="csv", train_csv=tmp_path / "bad.csv").setup("fit")
    (tmp_path / "cols.csv").write_text("img,seg\nx,y\n")
    with pytest.raises(ValueError, match="no column 'image'"):
        SegmentationDataModule(format="csv", train_csv=tmp_path / "cols.csv").setup("fit")


def test_missing_pairs_are_reported_by_path(tmp_path):
    write_pairs(tmp_path / "train", 3)
    Image.new("RGB", (40, 30)).save(tmp_path / "train" / "images" / "orphan.png")
    (tmp_path / "train" / "masks" / "img_1.png").unlink()
    with pytest.raises(ValueError, match="2 file\\(s\\).*img_1.jpg.*orphan.png"):
        SegmentationDataModule(tmp_path).setup("fit")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        SegmentationDataModule(tmp_path / "elsewhere").setup("fit")


def test_bad_masks_and_images_name_the_file(tmp_path):
    write_pairs(tmp_path / "train", 3)
    write_pairs(tmp_path / "val", 1)
    Image.fromarray(np.full((30, 40), 7, dtype=np.uint8), mode="L").save(tmp_path / "train" / "masks" / "img_0.png")
    Image.new("RGB", (40, 30)).save(tmp_path / "train" / "masks" / "img_1.png")
    (tmp_path / "train" / "images" / "img_2.jpg").write_bytes(b"not an image")
    data = SegmentationDataModule(tmp_path, num_classes=3, augment=False)
    data.setup("fit")
    dataset = data.train_dataset
    with pytest.raises(ValueError, match="img_0.png holds class indices \\[7\\]"):
        dataset[0]
    with pytest.raises(ValueError, match="img_1.png has mode 'RGB'"):
        dataset[1]
    with pytest.raises(ValueError, match="cannot read image .*img_2.jpg"):
        dataset[2]


@pytest.mark.parametrize("kwargs, match", [
    (dict(format="xml", data_dir="x"), "format='xml'"),
    (dict(dataset_name="cityscapes"), "dataset_name='cityscapes'"),
    (dict(), "give data_dir"),
    (dict(format="csv"), "needs train_csv"),
    (dict(data_dir="x", val_split=1.5), "val_split=1.5"),
])
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SegmentationDataModule(**kwargs)


def test_synthetic_shapes_are_deterministic_and_consistent():
    a, b = make_shape_sample("train", 5), make_shape_sample("train", 5)
    assert np.array_equal(a.image, b.image) and np.array_equal(a.mask, b.mask)
    assert not np.array_equal(a.image, make_shape_sample("val", 5).image)
    for i in range(20):
        s = make_shape_sample("train", i)
        covered = np.zeros_like(s.mask, dtype=bool)
        for (x1, y1, x2, y2), label in zip(s.boxes.astype(int), s.labels):
            region = s.mask[y1:y2, x1:x2]
            assert (region == label + 1).mean() > 0.3  # the shape fills a good part of its box
            covered[y1:y2, x1:x2] = True
        assert (s.mask[~covered] == 0).all()  # nothing outside the boxes

    data = SegmentationDataModule(dataset_name="synthetic_shapes", image_size=48, synthetic_sizes={"train": 8, "val": 4})
    assert data.num_classes == 4 and data.class_names == ["background", "circle", "rectangle", "triangle"]
    data.setup("fit")
    image, mask = data.val_dataset[0]
    assert image.shape == (3, 48, 48) and set(mask.unique().tolist()) <= {0, 1, 2, 3}


def test_from_backbone_takes_the_backbones_normalisation():
    data = SegmentationDataModule.from_backbone("test_vit", dataset_name="synthetic_shapes", image_size=32)
    import timm

    expected = timm.data.resolve_data_config({}, model=timm.create_model("test_vit", pretrained=False))
    assert data.preprocessing["mean"] == tuple(expected["mean"]) and data.preprocessing["std"] == tuple(expected["std"])
    assert data.preprocessing["input_size"] == (3, 32, 32)
