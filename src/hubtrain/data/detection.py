"""Object detection data: COCO JSON, CSV rows ``(image, x1, y1, x2, y2, label)``, or built-in synthetic shapes.

Boxes are ``xyxy`` in pixels of the image as the model sees it: ``tv_tensors.BoundingBoxes`` travel through the
same ``transforms.v2`` pipeline as the image, so resizing and flipping move them with it. Labels are contiguous
``0..K-1`` from one mapping shared by all splits (COCO category ids sorted ascending; CSV label names sorted),
so a class that is absent from one split never shifts the others. Bad annotations fail at ``setup()`` with the
file and the offending value.
"""
from __future__ import annotations

import json
import os
from collections import defaultdict
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset
from torchvision import tv_tensors
from torchvision.transforms import v2

from hubtrain.data.dense import DenseDataModule
from hubtrain.data.segmentation import as_hw, dense_transforms, read_rgb
from hubtrain.data.synthetic import SHAPE_NAMES, make_shape_sample
from hubtrain.data.transforms import resolve_transform_config

SYNTHETIC_SIZES = {"train": 320, "val": 64, "test": 64}
Record = dict[str, Any]  # {"path": Path, "boxes": (N,4) float32 xyxy, "labels": (N,) int64}


def detection_transforms(config: dict[str, Any], train: bool) -> v2.Compose:
    # SanitizeBoundingBoxes drops boxes that resizing squeezed below a pixel (and their labels).
    return dense_transforms(config, train, extra=[v2.SanitizeBoundingBoxes(min_size=1.0)])


def detection_collate(batch: Sequence[tuple[torch.Tensor, dict[str, torch.Tensor]]]
                      ) -> tuple[torch.Tensor, list[dict[str, torch.Tensor]]]:
    """Stack the (equally sized) images; keep targets as a list, since each image has its own number of boxes."""
    images, targets = zip(*batch)
    return torch.stack(images), list(targets)


class DetectionDataset(Dataset):
    """Returns ``(image (3,H,W) float, {"boxes": (N,4) float32 xyxy, "labels": (N,) int64})``."""

    def __init__(self, records: Sequence[Record], transform: v2.Compose | None = None) -> None:
        self.records = list(records)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.records)

    def load(self, index: int) -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
        record = self.records[index]
        return read_rgb(record["path"]), record["boxes"], record["labels"]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        image, boxes, labels = self.load(index)
        sample = {
            "image": tv_tensors.Image(image),
            "boxes": tv_tensors.BoundingBoxes(torch.as_tensor(boxes, dtype=torch.float32).reshape(-1, 4),
                                              format="XYXY", canvas_size=tuple(image.shape[-2:])),
            "labels": torch.as_tensor(labels, dtype=torch.int64),
        }
        if self.transform is not None:
            sample = self.transform(sample)
        target = {"boxes": sample["boxes"].as_subclass(torch.Tensor), "labels": sample["labels"]}
        return sample["image"].as_subclass(torch.Tensor), target


class SyntheticShapesDetection(DetectionDataset):
    """Synthetic shapes (see ``hubtrain.data.synthetic``) with labels 0=circle, 1=rectangle, 2=triangle."""

    def __init__(self, split: str, size: int, image_size: int = 64, seed: int = 0,
                 transform: v2.Compose | None = None) -> None:
        super().__init__([], transform)
        self.split, self.size, self.image_size, self.seed = split, size, image_size, seed

    def __len__(self) -> int:
        return self.size

    def load(self, index: int) -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
        sample = make_shape_sample(self.split, index, self.image_size, self.seed)
        return torch.from_numpy(sample.image.copy()).permute(2, 0, 1), sample.boxes, sample.labels


def _check_box(box: Sequence[float], width: float | None, height: float | None, where: str) -> None:
    x1, y1, x2, y2 = box
    if not (x2 > x1 and y2 > y1):
        raise ValueError(f"{where}: box {list(box)} has no area (need x2 > x1 and y2 > y1); fix or drop it.")
    # Half a pixel of slack: annotation tools often round the far edge up.
    if x1 < -0.5 or y1 < -0.5 or (width is not None and x2 > width + 0.5) or (height is not None and y2 > height + 0.5):
        raise ValueError(f"{where}: box {list(box)} lies outside the {width}x{height} image; fix or drop it.")


def coco_categories(paths: Sequence[Path]) -> tuple[dict[int, int], list[str]]:
    """One category-id -> label mapping for all splits: the union of their categories, sorted by id."""
    names: dict[int, str] = {}
    for path in paths:
        for cat in json.loads(Path(path).read_text())["categories"]:
            if names.setdefault(int(cat["id"]), cat["name"]) != cat["name"]:
                raise ValueError(f"{path}: category id {cat['id']} is named {cat['name']!r} here but "
                                 f"{names[int(cat['id'])]!r} in another split; use one category list.")
    ids = sorted(names)
    return {cid: i for i, cid in enumerate(ids)}, [names[cid] for cid in ids]


def load_coco(annotation_file: str | os.PathLike, images_dir: str | os.PathLike,
              category_to_label: dict[int, int]) -> list[Record]:
    """Records from a COCO ``instances`` JSON (``bbox`` is ``[x, y, w, h]``); crowd annotations are skipped."""
    annotation_file, images_dir = Path(annotation_file), Path(images_dir)
    data = json.loads(annotation_file.read_text())
    for key in ("images", "annotations", "categories"):
        if key not in data:
            raise ValueError(f"{annotation_file} has no {key!r} list; is it a COCO instances file?")
    images = {img["id"]: img for img in data["images"]}
    per_image: dict[Any, list[dict]] = defaultdict(list)
    for ann in data["annotations"]:
        if ann.get("iscrowd", 0):
            continue
        if ann["image_id"] not in images:
            raise ValueError(f"{annotation_file}: annotation {ann.get('id')} refers to unknown image_id {ann['image_id']}.")
        per_image[ann["image_id"]].append(ann)

    records: list[Record] = []
    missing = [str(images_dir / img["file_name"]) for img in images.values() if not (images_dir / img["file_name"]).is_file()]
    if missing:
        raise FileNotFoundError(f"{len(missing)} image(s) listed in {annotation_file} do not exist: {', '.join(missing[:5])}")
    for image_id, img in images.items():
        boxes, labels = [], []
        for ann in per_image[image_id]:
            where = f"{annotation_file}: annotation {ann.get('id')} of {img['file_name']}"
            if ann["category_id"] not in category_to_label:
                raise ValueError(f"{where}: category_id {ann['category_id']} is not in 'categories' "
                                 f"(known: {sorted(category_to_label)}).")
            x, y, w, h = (float(v) for v in ann["bbox"])
            box = (x, y, x + w, y + h)
            _check_box(box, img.get("width"), img.get("height"), where)
            boxes.append(box)
            labels.append(category_to_label[ann["category_id"]])
        records.append({"path": images_dir / img["file_name"],
                        "boxes": np.asarray(boxes, dtype=np.float32).reshape(-1, 4),
                        "labels": np.asarray(labels, dtype=np.int64)})
    if not records:
        raise ValueError(f"{annotation_file} lists no images.")
    return records


def csv_label_names(paths: Sequence[Path], label_column: str = "label") -> list[str]:
    import pandas as pd

    names: set[str] = set()
    for path in paths:
        frame = pd.read_csv(path, dtype={label_column: str})
        names.update(str(v) for v in frame[label_column].dropna())
    return sorted(names)


def load_csv(csv_path: str | os.PathLike, label_to_index: dict[str, int], image_column: str = "image",
             label_column: str = "label") -> list[Record]:
    """Rows ``image,x1,y1,x2,y2,label``; several rows per image; a row with empty box fields is a negative image."""
    import pandas as pd

    csv_path = Path(csv_path)
    if not csv_path.is_file():
        raise FileNotFoundError(f"CSV file {csv_path} does not exist.")
    frame = pd.read_csv(csv_path, dtype={label_column: str})
    needed = [image_column, "x1", "y1", "x2", "y2", label_column]
    if absent := [c for c in needed if c not in frame.columns]:
        raise ValueError(f"CSV {csv_path} lacks column(s) {absent}; expected {needed}.")
    records: list[Record] = []
    for image_name, rows in frame.groupby(image_column, sort=True):
        path = csv_path.parent / str(image_name)
        if not path.is_file():
            raise FileNotFoundError(f"image {path} (listed in {csv_path}) does not exist.")
        try:
            with Image.open(path) as img:  # reads the header only
                width, height = img.size
        except (UnidentifiedImageError, OSError) as err:
            raise ValueError(f"cannot read image {path}: {err}; replace or remove the file.") from err
        rows = rows.dropna(subset=["x1", "y1", "x2", "y2"])
        boxes, labels = [], []
        for row in rows.itertuples(index=False):
            row = row._asdict()
            box = tuple(float(row[k]) for k in ("x1", "y1", "x2", "y2"))
            _check_box(box, width, height, f"{csv_path}: row for {image_name}")
            boxes.append(box)
            label = row[label_column]
            if not isinstance(label, str) or label not in label_to_index:
                raise ValueError(f"{csv_path}: row for {image_name} has label {label!r}; every box needs a class name.")
            labels.append(label_to_index[label])
        records.append({"path": path, "boxes": np.asarray(boxes, dtype=np.float32).reshape(-1, 4),
                        "labels": np.asarray(labels, dtype=np.int64)})
    if not records:
        raise ValueError(f"CSV {csv_path} lists no images.")
    return records


class DetectionDataModule(DenseDataModule):
    """Detection data for ``ObjectDetector``; batches are ``(images (B,3,H,W), [{"boxes", "labels"}, ...])``.

    Sources:
      * ``dataset_name="synthetic_shapes"``: built-in, 3 classes (circle, rectangle, triangle);
      * ``format="coco"``: ``<split>_annotations`` COCO JSON files (default
        ``data_dir/annotations/instances_<split>.json``) with images under ``<split>_images``
        (default ``data_dir/<split>``);
      * ``format="csv"``: ``<split>_annotations`` CSV files, image paths relative to the CSV's folder.
    Without a validation split, ``val_split`` of train is held out and read with evaluation transforms.
    """

    collate_fn = staticmethod(detection_collate)  # variable numbers of boxes per image

    def __init__(
        self,
        data_dir: str | os.PathLike | None = None,
        dataset_name: str | None = None,
        format: str = "coco",
        train_annotations: str | os.PathLike | None = None,
        val_annotations: str | os.PathLike | None = None,
        test_annotations: str | os.PathLike | None = None,
        train_images: str | os.PathLike | None = None,
        val_images: str | os.PathLike | None = None,
        test_images: str | os.PathLike | None = None,
        image_size: int | Sequence[int] = 64,
        batch_size: int = 8,
        num_workers: int = 0,
        val_split: float = 0.1,
        augment: bool = True,
        transform_config: Any = None,
        synthetic_sizes: dict[str, int] | None = None,
        seed: int = 42,
    ) -> None:
        super().__init__()
        if dataset_name is not None and dataset_name != "synthetic_shapes":
            raise ValueError(f"dataset_name={dataset_name!r} is not built in; use 'synthetic_shapes' or data_dir.")
        if format not in ("coco", "csv"):
            raise ValueError(f"format={format!r} is not supported; use 'coco' or 'csv'.")
        if dataset_name is None and data_dir is None and train_annotations is None:
            raise ValueError("give data_dir or train_annotations (COCO JSON / CSV), or dataset_name='synthetic_shapes'.")
        if not 0.0 <= val_split < 1.0:
            raise ValueError(f"val_split={val_split} must be in [0, 1).")
        self.data_dir = None if data_dir is None else Path(data_dir)
        self.dataset_name, self.format = dataset_name, format
        self.annotations = {"train": train_annotations, "val": val_annotations, "test": test_annotations}
        self.image_dirs = {"train": train_images, "val": val_images, "test": test_images}
        self.image_size = as_hw(image_size)
        self.batch_size, self.num_workers = batch_size, num_workers
        self.val_split, self.augment, self.seed = val_split, augment, seed
        # Normalisation (and resize interpolation) follow the backbone's timm data config when one is given.
        self.transform_config = resolve_transform_config(transform_config, self.image_size)
        self.synthetic_sizes = {**SYNTHETIC_SIZES, **(synthetic_sizes or {})}
        self.class_names: list[str] | None = list(SHAPE_NAMES) if dataset_name == "synthetic_shapes" else None
        self._label_map: dict | None = None
        self.train_dataset: Dataset | None = None
        self.val_dataset: Dataset | None = None
        self.test_dataset: Dataset | None = None

    @property
    def num_classes(self) -> int | None:
        if self.class_names is None and self.dataset_name is None:
            self._build_label_map()
        return None if self.class_names is None else len(self.class_names)

    def _annotation_path(self, split: str) -> Path | None:
        given = self.annotations[split]
        if given is not None:
            path = Path(given)
            if not path.is_file():
                raise FileNotFoundError(f"{split}_annotations={path} does not exist.")
            return path
        if self.data_dir is None or self.format != "coco":
            if split == "train":
                raise ValueError(f"format={self.format!r} needs train_annotations=<path>.")
            return None
        path = self.data_dir / "annotations" / f"instances_{split}.json"
        if split == "train" and not path.is_file():
            raise FileNotFoundError(f"{path} does not exist; pass train_annotations=<COCO JSON>.")
        return path if path.is_file() else None

    def _images_dir(self, split: str, annotation: Path) -> Path:
        given = self.image_dirs[split]
        if given is not None:
            return Path(given)
        return self.data_dir / split if self.data_dir is not None else annotation.parent

    def _build_label_map(self) -> None:
        """Fix the label mapping from every split's annotations before any split is read."""
        if self._label_map is not None:
            return
        paths = [p for p in (self._annotation_path(s) for s in ("train", "val", "test")) if p is not None]
        if self.format == "coco":
            self._label_map, self.class_names = coco_categories(paths)
        else:
            self.class_names = csv_label_names(paths)
            self._label_map = {name: i for i, name in enumerate(self.class_names)}

    def _transform(self, train: bool) -> v2.Compose:
        return detection_transforms(self.transform_config, train and self.augment)

    def _dataset(self, split: str, train: bool) -> Dataset | None:
        if self.dataset_name == "synthetic_shapes":
            return SyntheticShapesDetection(split, self.synthetic_sizes[split], self.image_size[0], self.seed,
                                            self._transform(train))
        self._build_label_map()
        path = self._annotation_path(split)
        if path is None:
            return None
        if self.format == "coco":
            records = load_coco(path, self._images_dir(split, path), self._label_map)
        else:
            records = load_csv(path, self._label_map)
        return DetectionDataset(records, self._transform(train))

    def setup(self, stage: str | None = None) -> None:
        if stage in (None, "fit", "validate"):
            train = self._dataset("train", train=True)
            val = self._dataset("val", train=False)
            if val is None:
                train, val = self.split_off_val(train, self._dataset("train", train=False))
            self.train_dataset, self.val_dataset = train, val
        if stage in (None, "test", "predict"):
            self.test_dataset = self._dataset("test", train=False)
            if self.test_dataset is None and stage == "test":
                raise FileNotFoundError("no test split: pass test_annotations=<path> (or add "
                                        "annotations/instances_test.json under data_dir).")
