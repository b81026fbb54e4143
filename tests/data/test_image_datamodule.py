"""ImageDataModule: every source, one class index across splits, eval transforms on carved val, clear errors."""
from __future__ import annotations

import csv

import numpy as np
from pathlib import Path

import pytest
import torch
from PIL import Image

from hubtrain import ImageDataModule
from hubtrain.backbones import create_backbone


def _labels_by_class(dataset) -> dict[str, set[int]]:
    """class folder name -> labels given to its files (a list dataset of paths)."""
    out: dict[str, set[int]] = {}
    for path, label in dataset.samples:
        out.setdefault(path.parent.name, set()).add(label)
    return out


def test_class_missing_from_val_does_not_shift_labels(image_folder):
    root = image_folder(("cat", "dog", "fox"), {"train": 4, "val": 2}, missing={"val": ["dog"]})
    dm = ImageDataModule(data_dir=root, image_size=16, batch_size=4)
    dm.setup()
    assert dm.class_names == ["cat", "dog", "fox"] and dm.num_classes == 3
    assert _labels_by_class(dm.train_dataset) == {"cat": {0}, "dog": {1}, "fox": {2}}
    assert _labels_by_class(dm.val_dataset) == {"cat": {0}, "fox": {2}}  # fox stays 2, not 1


def test_class_only_in_val_extends_the_index_for_all_splits(image_folder):
    root = image_folder(("ant", "bee"), {"train": 3, "val": 2}, missing={"train": ["bee"]})
    with pytest.warns(UserWarning, match="bee"):
        dm = ImageDataModule(data_dir=root, image_size=16)
        dm.setup()
    assert dm.class_names == ["ant", "bee"]
    assert _labels_by_class(dm.val_dataset) == {"ant": {0}, "bee": {1}}


def test_carved_val_split_uses_eval_transforms(image_folder):
    root = image_folder(("a", "b"), {"train": 10})
    dm = ImageDataModule(data_dir=root, image_size=16, val_split=0.2, seed=1)
    dm.setup()
    train_idx, val_idx = set(dm.train_dataset.indices), set(dm.val_dataset.indices)
    assert len(val_idx) == 4 and not train_idx & val_idx and len(train_idx | val_idx) == 20
    x1, y1 = dm.val_dataset[0]
    x2, y2 = dm.val_dataset[0]
    assert torch.equal(x1, x2) and y1 == y2  # evaluation: deterministic
    draws = [dm.train_dataset[0][0] for _ in range(5)]
    assert any(not torch.equal(draws[0], d) for d in draws[1:])  # training: augmented
    # Same seed, same split; another seed, another split.
    again = ImageDataModule(data_dir=root, image_size=16, val_split=0.2, seed=1)
    again.setup()
    assert again.val_dataset.indices == dm.val_dataset.indices
    other = ImageDataModule(data_dir=root, image_size=16, val_split=0.2, seed=2)
    other.setup()
    assert other.val_dataset.indices != dm.val_dataset.indices


def test_transforms_follow_the_backbone_data_config(tmp_path):
    backbone = create_backbone("test_vit", pretrained=False)  # mean = std = 0.5, bicubic
    dm = ImageDataModule.from_backbone(backbone, dataset_name="digits", image_size=32)
    assert dm.preprocessing["mean"] == (0.5, 0.5, 0.5) and dm.preprocessing["interpolation"] == "bicubic"
    assert dm.preprocessing["input_size"] == (3, 32, 32)
    # A flat grey image through the eval transform: (v / 255 - mean) / std, computed by hand.
    value = 200
    out = dm.eval_transform(Image.new("RGB", (40, 40), (value,) * 3))
    assert out.shape == (3, 32, 32)
    torch.testing.assert_close(out, torch.full((3, 32, 32), (value / 255 - 0.5) / 0.5), atol=1e-6, rtol=0)
    # A backbone name works too (built without weights, only to read its config).
    assert ImageDataModule.from_backbone("test_resnet", dataset_name="digits").preprocessing["interpolation"] == "bilinear"


def test_digits_builtin_split_and_batches():
    dm = ImageDataModule(dataset_name="digits", image_size=16, batch_size=32, seed=42)
    dm.setup()
    assert dm.num_classes == 10 and dm.class_names == [str(d) for d in range(10)]
    sizes = {k: len(getattr(dm, f"{k}_dataset")) for k in ("train", "val", "test")}
    assert sizes == {"train": 1257, "val": 270, "test": 270}
    assert not set(dm.train_dataset.indices) & set(dm.test_dataset.indices)
    x, y = next(iter(dm.val_dataloader()))
    assert x.shape == (32, 3, 16, 16) and y.dtype == torch.int64
    dm.batch_size = 8  # the batch-size finder changes this attribute
    assert next(iter(dm.train_dataloader()))[0].shape[0] == 8


def test_corrupt_images_are_reported_with_their_paths(image_folder):
    root = image_folder(("a", "b"), {"train": 3, "val": 1}, corrupt=["train/a/broken.png"])
    with pytest.raises(ValueError, match="broken.png"):
        ImageDataModule(data_dir=root, image_size=16, verify_images=True).setup()
    dm = ImageDataModule(data_dir=root, image_size=16, verify_images=False)  # no pre-flight: found when read
    dm.setup()
    broken = [i for i, (p, _) in enumerate(dm.train_dataset.samples) if p.name == "broken.png"][0]
    with pytest.raises(ValueError, match=r"cannot read image .*broken\.png"):
        dm.train_dataset[broken]


def test_empty_split_and_missing_folders_name_the_directory(image_folder, tmp_path):
    root = image_folder(("a", "b"), {"train": 2})
    (root / "val" / "a").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match=str(root / "val")):
        ImageDataModule(data_dir=root).setup()
    with pytest.raises(FileNotFoundError, match="train"):
        ImageDataModule(data_dir=tmp_path / "nowhere").setup()


def test_bad_arguments():
    with pytest.raises(ValueError, match="val_split"):
        ImageDataModule(dataset_name="digits", val_split=1.5)
    with pytest.raises(ValueError, match="one source"):
        ImageDataModule(dataset_name="digits", train_csv="x.csv")
    with pytest.raises(ValueError, match="'imagenet'"):
        ImageDataModule(dataset_name="imagenet").setup()
    with pytest.raises(ValueError, match="give a source"):
        ImageDataModule()
    with pytest.raises(ValueError, match="unknown key"):
        ImageDataModule(dataset_name="digits", transform_config={"means": (0.5,)})


def test_torchvision_dataset_offline_says_which_files_go_where(tmp_path):
    with pytest.raises(FileNotFoundError) as err:
        ImageDataModule(data_dir=tmp_path, dataset_name="CIFAR10").setup()
    assert "cifar-10-batches-py" in str(err.value) and str(tmp_path) in str(err.value)


def _write_csv(path, rows) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["file", "species"])
        writer.writerows(rows)


def test_csv_mode(image_folder, tmp_path):
    root = image_folder(("cat", "dog"), {"train": 3, "val": 2})
    rows = {s: [(str(p.relative_to(root)), p.parent.name) for p in sorted((root / s).rglob("*.png"))] for s in ("train", "val")}
    _write_csv(root / "train.csv", rows["train"])
    _write_csv(root / "val.csv", [r for r in rows["val"] if r[1] == "dog"])  # only dogs in val
    dm = ImageDataModule(train_csv=root / "train.csv", val_csv=root / "val.csv", image_column="file", label_column="species", image_size=16, batch_size=2)
    dm.setup()
    assert dm.class_names == ["cat", "dog"]
    assert {label for _, label in dm.val_dataset.samples} == {1}
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (2, 3, 16, 16)
    _write_csv(tmp_path / "bad.csv", [("missing.png", "cat")])
    with pytest.raises(FileNotFoundError, match="missing.png"):
        ImageDataModule(train_csv=tmp_path / "bad.csv", image_column="file", label_column="species").setup()
    with pytest.raises(ValueError, match="no column 'image'"):
        ImageDataModule(train_csv=root / "train.csv", image_column="image").setup()
    # without column names, AutoTimm's rule: the first column holds the images, the next one the labels
    dm = ImageDataModule(train_csv=root / "train.csv", val_csv=root / "val.csv", image_size=16)
    assert dm.class_names == ["cat", "dog"] and len(dm.train_dataset) == 6


def _hf_dataset(image_folder):
    import datasets

    root = image_folder(("cat", "dog", "fox"), {"train": 3, "test": 2})
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=["cat", "dog", "fox"])})
    def split(name):
        files = sorted((root / name).rglob("*.png"))
        return datasets.Dataset.from_dict(
            {"image": [str(f) for f in files], "label": [["cat", "dog", "fox"].index(f.parent.name) for f in files]},
            features=features,
        )
    return datasets.DatasetDict({"train": split("train"), "test": split("test")}), root


def test_hf_datasets_on_disk_parquet_and_imagefolder(image_folder, tmp_path):
    dsd, root = _hf_dataset(image_folder)
    dsd.save_to_disk(tmp_path / "disk")
    (tmp_path / "pq").mkdir()
    for name, ds in dsd.items():
        ds.to_parquet(tmp_path / "pq" / f"{name}.parquet")
    for source, fmt in ((tmp_path / "disk", "disk"), (tmp_path / "pq", "parquet"), (root, "imagefolder")):
        dm = ImageDataModule(hf_dataset=source, image_size=16, batch_size=3, val_split=0.3, seed=0)
        dm.setup()
        assert dm.class_names == ["cat", "dog", "fox"], fmt
        assert len(dm.test_dataset) == 6, fmt
        x, y = next(iter(dm.test_dataloader()))
        assert x.shape == (3, 3, 16, 16), fmt
        # Each label agrees with its image: the fixture paints cats red, dogs green and foxes blue (a permutation of
        # the labels, or of the images, keeps the label counts but not this)
        mean, std = (torch.tensor(dm.preprocessing[key]).view(3, 1, 1) for key in ("mean", "std"))
        pairs = [dm.test_dataset[i] for i in range(6)]
        painted = [int((image * std + mean).mean((1, 2)).argmax()) for image, _ in pairs]
        assert [label for _, label in pairs] == painted and sorted(painted) == [0, 0, 1, 1, 2, 2], fmt


def test_a_trained_task_passes_on_its_own_preprocessing():
    from hubtrain import BackboneConfig, ImageClassifier

    model = ImageClassifier(BackboneConfig("test_resnet", pretrained=False), num_classes=2)
    model.preprocessing = {"input_size": [3, 20, 20], "mean": [0.1, 0.2, 0.3], "std": [0.5, 0.5, 0.5],
                           "interpolation": "bilinear", "crop_pct": 1.0, "crop_mode": "center"}
    dm = ImageDataModule.from_backbone(model, dataset_name="digits")
    assert dm.preprocessing["input_size"] == (3, 20, 20) and dm.preprocessing["mean"] == (0.1, 0.2, 0.3)
    # Without recorded preprocessing, the task's backbone decides.
    model.preprocessing = None
    assert ImageDataModule(dataset_name="digits", transform_config=model).preprocessing["mean"] == (0.5, 0.5, 0.5)


def _write_idx(path, array: np.ndarray) -> None:
    """The MNIST idx format: magic (0x08 = ubyte, number of dims), big-endian int32 sizes, then raw bytes."""
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(n).to_bytes(4, "big") for n in array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def test_torchvision_dataset_loads_once_its_files_are_where_the_error_said(tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 30), ("t10k", 10)):
        _write_idx(raw / f"{prefix}-images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28)))
        _write_idx(raw / f"{prefix}-labels-idx1-ubyte", np.arange(n) % 10)
    dm = ImageDataModule(data_dir=tmp_path, dataset_name="MNIST", image_size=16, batch_size=4, val_split=0.2)
    dm.setup()
    assert dm.num_classes == 10 and dm.class_names[0].startswith("0")
    assert (len(dm.train_dataset), len(dm.val_dataset), len(dm.test_dataset)) == (24, 6, 10)
    x, y = next(iter(dm.test_dataloader()))
    assert x.shape == (4, 3, 16, 16) and y.tolist() == [0, 1, 2, 3]


def test_preflight_stops_on_every_bad_file_by_default_and_skips_only_when_asked(image_folder):
    root = image_folder(("a", "b"), {"train": 4, "val": 1}, corrupt=["train/a/broken.png", "train/b/bad.png"])
    with pytest.raises(ValueError, match=r"2 unreadable image\(s\): .*broken\.png.*bad\.png|2 unreadable image\(s\): .*bad\.png.*broken\.png"):
        ImageDataModule(data_dir=root, image_size=16).setup()  # both named at once, before any training
    with pytest.warns(UserWarning, match="skip_bad_files: left out 2 item"):
        dm = ImageDataModule(data_dir=root, image_size=16, skip_bad_files=True)
        dm.setup()
    assert sorted(Path(s.split(":")[0]).name for s in dm.skipped) == ["bad.png", "broken.png"]
    names = [p.name for p, _ in dm.train_dataset.dataset.samples] if hasattr(dm.train_dataset, "dataset") else \
        [p.name for p, _ in dm.train_dataset.samples]
    assert "broken.png" not in names and "bad.png" not in names
    assert dm.class_names == ["a", "b"]  # the label mapping did not change


def test_an_empty_class_folder_is_an_error_not_a_shifted_label_mapping(image_folder):
    root = image_folder(("a", "b", "c"), {"train": 2, "val": 1})
    for f in (root / "train" / "b").iterdir():
        f.unlink()
    with pytest.raises(ValueError, match=r"class folder\(s\) with no images: .*train/b.*shift every later class"):
        ImageDataModule(data_dir=root, image_size=16).setup()


def test_csv_rows_with_empty_labels_or_missing_files_are_named(tmp_path, image_folder):
    root = image_folder(("a", "b"), {"train": 2})
    files = sorted((root / "train").rglob("*.png"))
    csv = tmp_path / "train.csv"
    csv.write_text("image,label\n" + f"{files[0]},a\n{files[1]},\n{files[2]},b\n{tmp_path}/missing.png,a\n{files[3]},b\n")
    with pytest.raises(FileNotFoundError, match=r"2 bad row\(s\): line 3: empty 'label'.*line 5: image .*missing.png not found"):
        ImageDataModule(train_csv=csv, image_size=16).setup()
    ragged = tmp_path / "ragged.csv"
    ragged.write_text(f"image,label\n{files[0]},a,extra,columns\n")
    with pytest.raises(ValueError, match="ragged.csv is not a well-formed CSV"):
        ImageDataModule(train_csv=ragged, image_size=16).setup()
    with pytest.warns(UserWarning, match="left out 2 item"):
        dm = ImageDataModule(train_csv=csv, image_size=16, skip_bad_files=True, val_split=0.34)
        dm.setup()
    assert dm.class_names == ["a", "b"] and "nan" not in dm.class_names
