"""Semantic segmentation data: image/mask folder pairs, CSV lists, or the built-in synthetic shapes.

Images and masks go through the *same* geometric transforms (torchvision ``transforms.v2`` with a
``tv_tensors.Mask``, which it resizes with nearest-neighbour interpolation so class indices never blend);
only the image is converted to float and normalised. Masks hold one class index per pixel; ``ignore_index``
marks pixels that count in neither loss nor metrics.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset
from torchvision import tv_tensors
from torchvision.transforms import InterpolationMode, v2

from hubtrain.data.dense import DenseDataModule
from hubtrain.data.synthetic import SHAPE_NAMES, make_shape_sample
from hubtrain.data.transforms import resolve_transform_config

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"}
SYNTHETIC_SIZES = {"train": 320, "val": 64, "test": 64}


def as_hw(image_size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(image_size, int):
        return image_size, image_size
    if len(image_size) != 2:
        raise ValueError(f"image_size={image_size!r} must be an int or (height, width).")
    return int(image_size[0]), int(image_size[1])


def read_rgb(path: str | os.PathLike) -> torch.Tensor:
    """(3, H, W) uint8; an unreadable or corrupt file is reported with its path."""
    try:
        with Image.open(path) as img:
            return torch.from_numpy(np.array(img.convert("RGB"))).permute(2, 0, 1).contiguous()
    except (UnidentifiedImageError, OSError) as err:
        raise ValueError(f"cannot read image {path}: {err}; replace or remove the file.") from err


def read_mask(path: str | os.PathLike) -> torch.Tensor:
    """(H, W) int64 class indices from a single-channel (L or palette) image."""
    try:
        with Image.open(path) as img:
            if img.mode not in ("L", "P", "I", "I;16"):
                raise ValueError(
                    f"mask {path} has mode {img.mode!r}; masks must be single-channel images of class indices "
                    "(PIL mode L or P), not colour images."
                )
            return torch.from_numpy(np.array(img).astype(np.int64))
    except (UnidentifiedImageError, OSError) as err:
        raise ValueError(f"cannot read mask {path}: {err}; replace or remove the file.") from err


def dense_transforms(config: dict[str, Any], train: bool, extra: Sequence[v2.Transform] = ()) -> v2.Compose:
    """Resize to ``config["input_size"]`` (+ horizontal flip when training), then scale and normalise the image.

    ``transforms.v2`` applies each geometric step to every ``tv_tensor`` in the sample: images with the config's
    interpolation, masks with nearest neighbour, boxes by their coordinates.
    """
    interpolation = InterpolationMode(config.get("interpolation", "bilinear"))
    geometric: list[v2.Transform] = [v2.Resize(tuple(config["input_size"][1:]), interpolation=interpolation, antialias=True)]
    if train:
        geometric.append(v2.RandomHorizontalFlip())
    return v2.Compose([
        *geometric,
        *extra,
        v2.ToDtype({tv_tensors.Image: torch.float32, "others": None}, scale=True),
        v2.Normalize(mean=list(config["mean"]), std=list(config["std"])),
    ])


def dense_eval_transform(task: Any) -> Any:
    """PIL image -> normalised tensor, as a segmentor's or detector's data module evaluates (plain resize to the
    saved input size, no crop)."""
    transform = dense_transforms(resolve_transform_config(task), train=False)
    return lambda image: transform(tv_tensors.Image(v2.functional.pil_to_tensor(image)))


class SegmentationDataset(Dataset):
    """(image, mask) pairs from files; returns a normalised float image (3, H, W) and an int64 mask (H, W)."""

    def __init__(self, pairs: Sequence[tuple[Path, Path]], transform: v2.Compose | None = None,
                 num_classes: int | None = None, ignore_index: int | None = 255) -> None:
        self.pairs = list(pairs)
        self.transform = transform
        self.num_classes = num_classes
        self.ignore_index = ignore_index

    def __len__(self) -> int:
        return len(self.pairs)

    def _check(self, mask: torch.Tensor, path: Path) -> None:
        if self.num_classes is None:
            return
        values = mask.unique()
        bad = values[(values >= self.num_classes) & (values != (self.ignore_index if self.ignore_index is not None else -1))]
        if bad.numel():
            raise ValueError(
                f"mask {path} holds class indices {bad.tolist()} outside 0..{self.num_classes - 1} "
                f"(ignore_index={self.ignore_index}); fix the mask or raise num_classes."
            )

    def load(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image_path, mask_path = self.pairs[index]
        image, mask = read_rgb(image_path), read_mask(mask_path)
        if image.shape[-2:] != mask.shape:
            raise ValueError(
                f"image {image_path} is {tuple(image.shape[-2:])} but its mask {mask_path} is {tuple(mask.shape)}; "
                "an image and its mask must have the same height and width."
            )
        self._check(mask, mask_path)
        return image, mask

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image, mask = self.load(index)
        image, mask = tv_tensors.Image(image), tv_tensors.Mask(mask)
        if self.transform is not None:
            image, mask = self.transform(image, mask)
        return image.as_subclass(torch.Tensor), mask.as_subclass(torch.Tensor).long()


class SyntheticShapesSegmentation(SegmentationDataset):
    """Synthetic shapes (see ``hubtrain.data.synthetic``): class 0 is background, shape k is class k + 1."""

    def __init__(self, split: str, size: int, image_size: int = 64, seed: int = 0,
                 transform: v2.Compose | None = None) -> None:
        super().__init__([], transform, num_classes=len(SHAPE_NAMES) + 1)
        self.split, self.size, self.image_size, self.seed = split, size, image_size, seed

    def __len__(self) -> int:
        return self.size

    def load(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        sample = make_shape_sample(self.split, index, self.image_size, self.seed)
        return torch.from_numpy(sample.image.copy()).permute(2, 0, 1), torch.from_numpy(sample.mask.astype(np.int64))


def _stems(folder: Path) -> dict[str, Path]:
    if not folder.is_dir():
        raise FileNotFoundError(f"folder {folder} does not exist; expected <data_dir>/<split>/images and masks.")
    return {p.stem: p for p in sorted(folder.iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES}


def folder_pairs(images_dir: Path, masks_dir: Path) -> list[tuple[Path, Path]]:
    """Pairs matched by file stem; any image without a mask (or mask without an image) is an error."""
    images, masks = _stems(images_dir), _stems(masks_dir)
    unmatched = [str(images[s]) for s in images.keys() - masks.keys()] + [str(masks[s]) for s in masks.keys() - images.keys()]
    if unmatched:
        shown = ", ".join(sorted(unmatched)[:5]) + (f" (and {len(unmatched) - 5} more)" if len(unmatched) > 5 else "")
        raise ValueError(
            f"{len(unmatched)} file(s) in {images_dir} / {masks_dir} have no partner with the same stem: {shown}; "
            "every image needs a mask named like it (e.g. images/a.jpg <-> masks/a.png)."
        )
    if not images:
        raise ValueError(f"no images found in {images_dir} (suffixes {sorted(IMAGE_SUFFIXES)}).")
    return [(images[s], masks[s]) for s in sorted(images)]


def csv_pairs(csv_path: str | os.PathLike, image_column: str = "image", mask_column: str = "mask") -> list[tuple[Path, Path]]:
    """Pairs from a CSV; relative paths are resolved against the CSV's folder. Missing files are listed."""
    import pandas as pd

    csv_path = Path(csv_path)
    if not csv_path.is_file():
        raise FileNotFoundError(f"CSV file {csv_path} does not exist.")
    frame = pd.read_csv(csv_path)
    for column in (image_column, mask_column):
        if column not in frame.columns:
            raise ValueError(f"CSV {csv_path} has no column {column!r} (columns: {list(frame.columns)}); "
                             "set image_column / mask_column.")
    root = csv_path.parent
    pairs = [(root / str(i), root / str(m)) for i, m in zip(frame[image_column], frame[mask_column])]
    missing = [str(p) for pair in pairs for p in pair if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"{len(missing)} file(s) listed in {csv_path} do not exist: {', '.join(missing[:5])}")
    if not pairs:
        raise ValueError(f"CSV {csv_path} lists no (image, mask) rows.")
    return pairs


class SegmentationDataModule(DenseDataModule):
    """Image + mask data for ``SemanticSegmentor``; batches are ``(images (B,3,H,W) float, masks (B,H,W) int64)``.

    Sources, in order of precedence:
      * ``dataset_name="synthetic_shapes"``: built-in, 4 classes (background, circle, rectangle, triangle);
      * ``format="csv"``: ``train_csv`` / ``val_csv`` / ``test_csv`` with ``image_column`` and ``mask_column``;
      * ``format="folder"``: ``data_dir/<split>/<images_subdir>`` and ``data_dir/<split>/<masks_subdir>``,
        files paired by stem. Without a ``val`` split, ``val_split`` of train is held out (with eval transforms).
    """

    def __init__(
        self,
        data_dir: str | os.PathLike | None = None,
        dataset_name: str | None = None,
        format: str = "folder",
        train_csv: str | os.PathLike | None = None,
        val_csv: str | os.PathLike | None = None,
        test_csv: str | os.PathLike | None = None,
        image_column: str = "image",
        mask_column: str = "mask",
        images_subdir: str = "images",
        masks_subdir: str = "masks",
        image_size: int | Sequence[int] = 64,
        batch_size: int = 16,
        num_workers: int = 0,
        num_classes: int | None = None,
        class_names: Sequence[str] | None = None,
        ignore_index: int | None = 255,
        val_split: float = 0.1,
        augment: bool = True,
        transform_config: Any = None,
        synthetic_sizes: dict[str, int] | None = None,
        seed: int = 42,
    ) -> None:
        super().__init__()
        if dataset_name is not None and dataset_name != "synthetic_shapes":
            raise ValueError(f"dataset_name={dataset_name!r} is not built in; use 'synthetic_shapes' or data_dir.")
        if format not in ("folder", "csv"):
            raise ValueError(f"format={format!r} is not supported; use 'folder' or 'csv'.")
        if dataset_name is None and format == "folder" and data_dir is None:
            raise ValueError("give data_dir (format='folder'), train_csv (format='csv') or dataset_name='synthetic_shapes'.")
        if dataset_name is None and format == "csv" and train_csv is None:
            raise ValueError("format='csv' needs train_csv=<path to a CSV with image and mask columns>.")
        if not 0.0 <= val_split < 1.0:
            raise ValueError(f"val_split={val_split} must be in [0, 1).")
        self.data_dir = None if data_dir is None else Path(data_dir)
        self.dataset_name, self.format = dataset_name, format
        self.csvs = {"train": train_csv, "val": val_csv, "test": test_csv}
        self.image_column, self.mask_column = image_column, mask_column
        self.images_subdir, self.masks_subdir = images_subdir, masks_subdir
        self.image_size = as_hw(image_size)
        self.batch_size, self.num_workers = batch_size, num_workers
        self.ignore_index, self.val_split, self.augment, self.seed = ignore_index, val_split, augment, seed
        # Normalisation (and resize interpolation) follow the backbone's timm data config when one is given.
        self.transform_config = resolve_transform_config(transform_config, self.image_size)
        self.synthetic_sizes = {**SYNTHETIC_SIZES, **(synthetic_sizes or {})}
        if dataset_name == "synthetic_shapes":
            num_classes = len(SHAPE_NAMES) + 1
            class_names = class_names or ("background", *SHAPE_NAMES)
        if class_names is not None and num_classes is not None and len(class_names) != num_classes:
            raise ValueError(f"class_names has {len(class_names)} names but num_classes={num_classes}.")
        self.num_classes = num_classes if num_classes is not None else (len(class_names) if class_names else None)
        self.class_names = list(class_names) if class_names is not None else None
        self.train_dataset: Dataset | None = None
        self.val_dataset: Dataset | None = None
        self.test_dataset: Dataset | None = None

    def _transform(self, train: bool) -> v2.Compose:
        return dense_transforms(self.transform_config, train and self.augment)

    def _pairs(self, split: str) -> list[tuple[Path, Path]] | None:
        if self.format == "csv":
            path = self.csvs[split]
            return None if path is None else csv_pairs(path, self.image_column, self.mask_column)
        split_dir = self.data_dir / split
        if split != "train" and not split_dir.exists():
            return None
        return folder_pairs(split_dir / self.images_subdir, split_dir / self.masks_subdir)

    def _dataset(self, split: str, train: bool) -> Dataset | None:
        if self.dataset_name == "synthetic_shapes":
            return SyntheticShapesSegmentation(split, self.synthetic_sizes[split], self.image_size[0], self.seed,
                                               self._transform(train))
        pairs = self._pairs(split)
        if pairs is None:
            return None
        return SegmentationDataset(pairs, self._transform(train), self.num_classes, self.ignore_index)

    def setup(self, stage: str | None = None) -> None:
        if stage in (None, "fit", "validate"):
            train = self._dataset("train", train=True)
            val = self._dataset("val", train=False)
            if val is None:
                train, val = self.split_off_val(train, self._dataset("train", train=False))
            self.train_dataset, self.val_dataset = train, val
        if stage in (None, "test"):
            self.test_dataset = self._dataset("test", train=False)
            if self.test_dataset is None:
                where = self.csvs["test"] if self.format == "csv" else (self.data_dir / "test")
                raise FileNotFoundError(f"no test split: {where} is missing; add it or skip trainer.test().")
        if stage == "predict":
            self.test_dataset = self._dataset("test", train=False) or self._dataset("val", train=False)
