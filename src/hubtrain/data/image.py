"""``ImageDataModule``: image-classification data from folders, CSV files, Hugging Face datasets on disk,
scikit-learn's bundled digits, or torchvision's CIFAR / MNIST sets, all behind one Lightning data module.

Three rules hold in every mode:

- one class index for all splits, computed once from every split's labels (a class missing from ``val/`` cannot
  shift the others);
- a validation split carved from train (``val_split``) is a view of the same samples with *evaluation* transforms;
- transforms follow the model's timm data config (``transform_config`` or ``ImageDataModule.from_backbone``).
"""
from __future__ import annotations

import io
import os
import warnings
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import pytorch_lightning as pl
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import DataLoader, Dataset, Subset

from .loading import resumable_loader
from .transforms import build_transform, resolve_transform_config

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
TORCHVISION_DATASETS = {"cifar10": "CIFAR10", "cifar100": "CIFAR100", "mnist": "MNIST", "fashionmnist": "FashionMNIST"}
# What torchvision looks for under data_dir, for the offline error message.
TORCHVISION_FILES = {
    "CIFAR10": "cifar-10-batches-py/{data_batch_1..5, test_batch, batches.meta} (or cifar-10-python.tar.gz)",
    "CIFAR100": "cifar-100-python/{train, test, meta} (or cifar-100-python.tar.gz)",
    "MNIST": "MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte (the four files, unzipped)",
    "FashionMNIST": "FashionMNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte (the four files, unzipped)",
}
SPLIT_ALIASES = {"train": ("train",), "val": ("val", "validation", "valid"), "test": ("test",)}
# AutoTimm's torchvision augmentation presets -> timm create_transform arguments
AUGMENTATION_PRESETS = {"default": {}, "autoaugment": {"auto_augment": "original"}, "randaugment": {"auto_augment": "rand-m9-mstd0.5"}}


def _columns(columns: Sequence[str], image_column: str | None, label_column: str | None) -> tuple[str, str]:
    """The (image, label) columns: as given, else "image" / "label" when present, else AutoTimm's rule (the first
    column holds images, the first other column labels)."""
    image = image_column or ("image" if "image" in columns else columns[0])
    others = [c for c in columns if c != image]
    label = label_column or ("label" if "label" in others else (others[0] if others else "label"))
    return image, label


def dataset_labels(dataset: Dataset) -> list[int]:
    """Class index of every sample, read without loading images (for balanced sampling)."""
    if isinstance(dataset, Subset):
        labels = dataset_labels(dataset.dataset)
        return [labels[i] for i in dataset.indices]
    if isinstance(dataset, ImageListDataset):
        return [int(label) for _, label in dataset.samples]
    if isinstance(dataset, HFImageDataset):
        return [dataset.label_of(raw) for raw in dataset.dataset[dataset.label_column]]
    return [int(t) for t in dataset.targets]  # torchvision's datasets


def load_image(path: str | os.PathLike, mode: str = "RGB") -> Image.Image:
    """Open an image, or raise a ``ValueError`` that names the file."""
    try:
        with Image.open(path) as img:
            return img.convert(mode)
    except (UnidentifiedImageError, OSError, SyntaxError) as err:
        raise ValueError(f"cannot read image {path}: {err.__class__.__name__}: {err}; remove or replace the file.") from None


class ImageListDataset(Dataset):
    """``(path or PIL image, label)`` pairs, loaded lazily and transformed."""

    def __init__(self, samples: Sequence[tuple[Any, int]], transform: Callable | None = None, mode: str = "RGB") -> None:
        self.samples = list(samples)
        self.transform = transform
        self.mode = mode

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        image, label = self.samples[index]
        image = image.convert(self.mode) if isinstance(image, Image.Image) else load_image(image, self.mode)
        return (self.transform(image) if self.transform else image), label


class HFImageDataset(Dataset):
    """A Hugging Face ``datasets.Dataset`` with an image column and a label column, mapped to our class index."""

    def __init__(self, dataset: Any, image_column: str, label_column: str, class_to_idx: dict[str, int],
                 transform: Callable | None = None, mode: str = "RGB") -> None:
        self.dataset, self.image_column, self.label_column = dataset, image_column, label_column
        self.class_to_idx, self.transform, self.mode = class_to_idx, transform, mode
        feature = dataset.features[label_column]
        self._names = list(feature.names) if hasattr(feature, "names") else None

    def __len__(self) -> int:
        return len(self.dataset)

    def label_of(self, raw: Any) -> int:
        return self.class_to_idx[self._names[raw] if self._names is not None else str(raw)]

    def __getitem__(self, index: int) -> tuple[Any, int]:
        row = self.dataset[index]
        image = row[self.image_column]
        if isinstance(image, dict) and image.get("bytes"):
            image = load_image(io.BytesIO(image["bytes"]), self.mode)
        elif isinstance(image, dict) and image.get("path"):
            image = load_image(image["path"], self.mode)
        elif not isinstance(image, Image.Image):
            raise ValueError(f"row {index}: column {self.image_column!r} holds {type(image).__name__}, not an image.")
        image = image.convert(self.mode)
        return (self.transform(image) if self.transform else image), self.label_of(row[self.label_column])


def _sorted_labels(labels: set[str]) -> list[str]:
    """Integer-looking labels sort numerically ("2" < "10"), others alphabetically."""
    if labels and all(label.lstrip("-").isdigit() for label in labels):
        return sorted(labels, key=int)
    return sorted(labels)


class ImageDataModule(pl.LightningDataModule):
    """Classification data for Lightning, AutoTimm-compatible.

    Sources (exactly one):
        - ``data_dir`` with ``train/<class>/*.jpg`` (and optional ``val/``, ``test/``) - folder mode;
        - ``train_csv`` (+ ``val_csv``, ``test_csv``) with ``image_column`` (paths, relative to ``image_dir``,
          else ``data_dir``, else the CSV's folder) and ``label_column`` (class names or integers); the columns
          default to "image" / "label" when present, else (as in AutoTimm) the first column and the next;
        - ``hf_dataset``: a ``datasets`` folder (``save_to_disk``), a folder of parquet files, or an image folder
          read with ``datasets``' ``imagefolder`` builder (``hf_format`` picks; ``"auto"`` guesses);
        - ``dataset_name="digits"`` (scikit-learn's digits, no download) or ``"CIFAR10"``, ``"CIFAR100"``,
          ``"MNIST"``, ``"FashionMNIST"`` (torchvision, under ``data_dir``; downloaded only when reachable).

    Args:
        image_size: spatial size fed to the model (int or (H, W)); ``None`` takes it from ``transform_config``
            (224 without one, AutoTimm's default).
        batch_size: per-device batch size (Lightning's batch-size finder scales this attribute).
        num_workers, pin_memory, persistent_workers, prefetch_factor: the data loaders' (defaults 0, False, on
            with workers, torch's; AutoTimm's: up to 4 workers, pinned memory).
        val_split: fraction of train held out for validation when the source has no validation split.
        transform_config: timm data config (``mean``, ``std``, ``interpolation``, ``crop_pct``, ``input_size``), a
            backbone, or a task; see also ``from_backbone``.
        backbone: AutoTimm's way to normalise as a backbone expects: a backbone, a task or a name (built without
            weights to read its data config); the same as ``transform_config=backbone``.
        augmentation_preset: AutoTimm's torchvision presets as timm augmentation: ``"default"``,
            ``"autoaugment"``, ``"randaugment"`` (see ``AUGMENTATION_PRESETS``); ignored with ``train_transforms``.
        transform_backend: ``"torchvision"`` (PIL images; AutoTimm's ``"albumentations"`` is not offered).
        train_transform_kwargs: augmentation passed to ``timm.data.create_transform`` (e.g. ``{"hflip": 0.0}``).
        train_transforms / eval_transforms: callables replacing the built transforms.
        balanced_sampling: draw training samples with replacement, weighted by 1 / class frequency.
        verify_images: decode every image during ``setup`` (the pre-flight pass), so an unreadable file is found
            before training, with every other bad file, instead of mid-epoch. On by default; ``False`` skips it for
            very large datasets (a bad file then fails the batch that reads it, naming the file).
        skip_bad_files: leave out unreadable images and rows with an empty label (warning with the list of what was
            left out) instead of stopping; off by default. Empty class folders are always an error: dropping one
            would shift every later class's index.
        seed: fixes the val split and the training shuffle order.
    """

    def __init__(
        self,
        data_dir: str | os.PathLike | None = None,
        dataset_name: str | None = None,
        train_csv: str | os.PathLike | None = None,
        val_csv: str | os.PathLike | None = None,
        test_csv: str | os.PathLike | None = None,
        image_dir: str | os.PathLike | None = None,
        image_column: str | None = None,
        label_column: str | None = None,
        image_size: int | tuple[int, int] | None = None,
        batch_size: int = 32,
        num_workers: int = 0,
        val_split: float = 0.1,
        train_transforms: Callable | None = None,
        eval_transforms: Callable | None = None,
        augmentation_preset: str | None = None,
        transform_backend: str = "torchvision",
        transform_config: Any = None,
        backbone: Any = None,
        pin_memory: bool = False,
        persistent_workers: bool | None = None,
        prefetch_factor: int | None = None,
        balanced_sampling: bool = False,
        train_transform_kwargs: dict[str, Any] | None = None,
        seed: int = 42,
        hf_dataset: str | os.PathLike | Any | None = None,
        hf_format: str = "auto",
        verify_images: bool = True,
        skip_bad_files: bool = False,
    ) -> None:
        super().__init__()
        if transform_backend != "torchvision":
            raise ValueError(f"ImageDataModule(transform_backend={transform_backend!r}): AutoTimm can augment with "
                             "albumentations, hubtrain with timm's torchvision transforms only; use 'torchvision'.")
        if augmentation_preset is not None and augmentation_preset not in AUGMENTATION_PRESETS:
            raise ValueError(f"ImageDataModule(augmentation_preset={augmentation_preset!r}): hubtrain maps AutoTimm's "
                             f"{sorted(AUGMENTATION_PRESETS)} onto timm; for others pass train_transform_kwargs "
                             "(e.g. {'auto_augment': 'augmix-m5-w4-d2'}) or train_transforms.")
        if backbone is not None:
            if transform_config is not None:
                raise ValueError("ImageDataModule: give transform_config or backbone (AutoTimm's name for the same "
                                 "source of preprocessing), not both.")
            transform_config = self._with_data_config(backbone)
        sources = [s for s in (dataset_name, train_csv, hf_dataset) if s is not None]
        if not sources and data_dir is not None:
            sources = [data_dir]  # folder mode; otherwise data_dir is the root of the other source
        if not sources:
            raise ValueError("ImageDataModule: give a source: data_dir (folders; AutoTimm's default './data' is not "
                             "assumed), train_csv, hf_dataset or dataset_name='digits'.")
        if len(sources) > 1:
            raise ValueError(f"ImageDataModule: give one source, not several ({sources}); data_dir may accompany CSVs or dataset_name as their root.")
        if not 0.0 <= val_split < 1.0:
            raise ValueError(f"val_split={val_split!r}: must lie in [0, 1).")
        if batch_size < 1:
            raise ValueError(f"batch_size={batch_size!r}: must be >= 1.")
        if hf_format not in ("auto", "disk", "imagefolder", "parquet"):
            raise ValueError(f"hf_format={hf_format!r}: use 'auto', 'disk', 'imagefolder' or 'parquet'.")
        self.data_dir = Path(data_dir).expanduser() if data_dir is not None else None
        self.dataset_name = dataset_name
        self.train_csv, self.val_csv, self.test_csv = train_csv, val_csv, test_csv
        self.image_dir = Path(image_dir).expanduser() if image_dir is not None else None
        self.image_column, self.label_column = image_column, label_column
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.val_split = val_split
        self.seed = seed
        self.hf_dataset, self.hf_format = hf_dataset, hf_format
        self.verify_images = verify_images
        self.skip_bad_files = skip_bad_files
        self.skipped: list[str] = []  # what skip_bad_files left out, and why
        self.pin_memory = pin_memory
        self.persistent_workers = (num_workers > 0) if persistent_workers is None else (persistent_workers and num_workers > 0)
        self.prefetch_factor = prefetch_factor
        self.balanced_sampling = balanced_sampling
        self.transform_config = resolve_transform_config(transform_config, image_size)
        self.train_transform_kwargs = {**AUGMENTATION_PRESETS.get(augmentation_preset or "default", {}),
                                       **(train_transform_kwargs or {})}
        if dataset_name is not None and dataset_name.lower() == "digits":
            self.train_transform_kwargs.setdefault("hflip", 0.0)  # a mirrored 2 is not a 2
            self.train_transform_kwargs.setdefault("scale", (0.8, 1.0))
        self.train_transform = train_transforms or build_transform(self.transform_config, train=True, train_kwargs=self.train_transform_kwargs)
        self.eval_transform = eval_transforms or build_transform(self.transform_config, train=False)
        self._class_names: list[str] | None = None
        self.train_dataset: Dataset | None = None
        self.val_dataset: Dataset | None = None
        self.test_dataset: Dataset | None = None

    @staticmethod
    def _with_data_config(backbone: Any) -> Any:
        """A backbone, a task or a dict as given; anything else ``create_backbone`` takes, built without weights just
        to read its data config."""
        if hasattr(getattr(backbone, "backbone", backbone), "data_config") or isinstance(backbone, dict):
            return backbone
        from ..backbones import create_backbone

        return create_backbone(backbone, pretrained=False)

    @classmethod
    def from_backbone(cls, backbone: Any, **kwargs: Any) -> "ImageDataModule":
        """A data module preprocessing as ``backbone`` expects (a backbone, a task, or anything ``create_backbone``
        takes); the same as ``ImageDataModule(backbone=backbone, ...)``."""
        return cls(backbone=backbone, **kwargs)

    # ------------------------------------------------------------------ public properties

    @property
    def mode(self) -> str:
        return "L" if self.transform_config["input_size"][0] == 1 else "RGB"

    @property
    def class_names(self) -> list[str]:
        if self._class_names is None:
            self.setup()
        return list(self._class_names)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def class_to_idx(self) -> dict[str, int]:
        return {name: i for i, name in enumerate(self.class_names)}

    @property
    def preprocessing(self) -> dict[str, Any]:
        """The evaluation preprocessing, as a timm data config (tasks store it in checkpoints and config.json)."""
        return dict(self.transform_config)

    # ------------------------------------------------------------------ building the splits

    def prepare_data(self) -> None:
        if self.dataset_name and self.dataset_name.lower() in TORCHVISION_DATASETS:
            self._torchvision(TORCHVISION_DATASETS[self.dataset_name.lower()], train=True, transform=None)
            self._torchvision(TORCHVISION_DATASETS[self.dataset_name.lower()], train=False, transform=None)

    def setup(self, stage: str | None = None) -> None:
        if self._class_names is not None:
            return
        if self.dataset_name is not None:
            name = self.dataset_name.lower()
            if name == "digits":
                self._setup_digits()
            elif name in TORCHVISION_DATASETS:
                self._setup_torchvision(TORCHVISION_DATASETS[name])
            else:
                raise ValueError(
                    f"dataset_name={self.dataset_name!r} is not built in; use 'digits' or one of "
                    f"{sorted(TORCHVISION_DATASETS.values())}, or give data_dir / train_csv / hf_dataset."
                )
        elif self.train_csv is not None:
            self._setup_samples(self._csv_splits())
        elif self.hf_dataset is not None:
            self._setup_hf()
        else:
            self._setup_samples(self._folder_splits())
        for split in ("train_dataset", "val_dataset"):
            if getattr(self, split) is None or len(getattr(self, split)) == 0:
                raise ValueError(f"the {split.removesuffix('_dataset')} split is empty; add data or lower val_split.")

    def _carve_val(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        """Seeded (train, val) index split of ``n`` training samples."""
        if self.val_split <= 0:
            raise ValueError("there is no validation split and val_split=0; add a val/ split or set val_split > 0.")
        perm = np.random.default_rng(self.seed).permutation(n)
        n_val = max(1, int(round(n * self.val_split)))
        if n_val >= n:
            raise ValueError(f"val_split={self.val_split} leaves no training samples out of {n}.")
        return np.sort(perm[n_val:]), np.sort(perm[:n_val])

    def _setup_samples(self, splits: dict[str, list[tuple[Any, str]]]) -> None:
        """Labels are names here; the class index comes from all splits together."""
        names = _sorted_labels({label for samples in splits.values() for _, label in samples})
        missing_in_train = sorted(set(names) - {label for _, label in splits["train"]})
        if missing_in_train:
            warnings.warn(f"classes {missing_in_train} have no training samples; the model cannot learn them.", stacklevel=3)
        self._class_names = names
        index = {name: i for i, name in enumerate(names)}
        encoded = {split: [(x, index[label]) for x, label in samples] for split, samples in splits.items()}
        if self.verify_images:
            encoded = self._preflight_images(encoded)
        train = encoded["train"]
        if "val" in encoded:
            self.train_dataset = ImageListDataset(train, self.train_transform, self.mode)
            self.val_dataset = ImageListDataset(encoded["val"], self.eval_transform, self.mode)
        else:
            tr, va = self._carve_val(len(train))
            self.train_dataset = Subset(ImageListDataset(train, self.train_transform, self.mode), tr.tolist())
            self.val_dataset = Subset(ImageListDataset(train, self.eval_transform, self.mode), va.tolist())
        if "test" in encoded:
            self.test_dataset = ImageListDataset(encoded["test"], self.eval_transform, self.mode)

    def _preflight_images(self, encoded: dict[str, list[tuple[Any, int]]]) -> dict[str, list[tuple[Any, int]]]:
        """Decode every image file once; stop naming every unreadable one, or leave them out with skip_bad_files."""
        bad: dict[str, str] = {}
        for samples in encoded.values():
            for x, _ in samples:
                if isinstance(x, (str, Path)) and str(x) not in bad:
                    try:
                        with Image.open(x) as img:
                            img.load()
                    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
                        bad[str(x)] = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
        if not bad:
            return encoded
        listing = "; ".join(f"{path} ({why})" for path, why in list(bad.items())[:10]) + (" ..." if len(bad) > 10 else "")
        if not self.skip_bad_files:
            raise ValueError(f"{len(bad)} unreadable image(s): {listing}; remove or replace them, or pass "
                             "skip_bad_files=True to leave them out")
        self._skip([f"{path}: unreadable ({why})" for path, why in bad.items()])
        return {split: [(x, y) for x, y in samples if str(x) not in bad] for split, samples in encoded.items()}

    def _skip(self, items: list[str]) -> None:
        self.skipped += items
        warnings.warn(f"skip_bad_files: left out {len(items)} item(s): {'; '.join(items[:10])}"
                      f"{' ...' if len(items) > 10 else ''}", stacklevel=4)

    # folders -------------------------------------------------------------------------------

    def _folder_split(self, split_dir: Path) -> list[tuple[Path, str]]:
        classes = sorted(p for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
        images = {c: [f for f in sorted(c.rglob("*")) if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS] for c in classes}
        samples = [(f, c.name) for c, files in images.items() for f in files]
        if not samples:
            raise FileNotFoundError(
                f"no images found in {split_dir}; expected {split_dir}/<class_name>/<image>{IMAGE_EXTENSIONS[:3]}."
            )
        empty = [str(c) for c, files in images.items() if not files]
        if empty:
            raise ValueError(f"class folder(s) with no images: {', '.join(empty)}; an empty class would shift every later "
                             f"class's index: add images ({', '.join(IMAGE_EXTENSIONS[:3])}, ...) or remove the folder")
        return samples

    def _folder_splits(self) -> dict[str, list[tuple[Any, str]]]:
        root = self.data_dir
        if root is None or not root.is_dir():
            raise FileNotFoundError(f"data_dir={str(root)!r} is not a folder; it should hold train/<class_name>/ images.")
        train_dir = root / "train"
        if not train_dir.is_dir():
            raise FileNotFoundError(f"{train_dir} not found; folder mode expects {root}/train/<class_name>/ (optional val/, test/).")
        splits = {"train": self._folder_split(train_dir)}
        for split in ("val", "test"):
            for alias in SPLIT_ALIASES[split]:
                if (root / alias).is_dir():
                    splits[split] = self._folder_split(root / alias)
                    break
        return splits

    # CSV -----------------------------------------------------------------------------------

    def _read_csv(self, path: str | os.PathLike) -> list[tuple[Path, str]]:
        """(image file, label) per row; every bad row (wrong number of fields, missing file, empty label) is named
        in one error."""
        import csv

        path = Path(path).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"CSV file {path} not found.")
        try:
            with open(path, newline="", encoding="utf-8") as f:
                rows = [(n, row) for n, row in enumerate(csv.reader(f), start=1) if any(cell.strip() for cell in row)]
        except (UnicodeDecodeError, csv.Error) as err:
            raise ValueError(f"{path} is not a readable UTF-8 CSV ({err}); save it as CSV with a header row") from None
        if not rows:
            raise ValueError(f"{path} is empty; it needs a header (image,label) and one row per image")
        (_, header), body = rows[0], rows[1:]
        header = [h.strip() for h in header]
        image_column, label_column = _columns(header, self.image_column, self.label_column)
        for column in (image_column, label_column):
            if column not in header:
                raise ValueError(f"{path} has no column {column!r} (columns: {header}); set image_column / label_column.")
        if not body:
            raise ValueError(f"{path} has no rows.")
        ragged = [f"line {n}: {len(row)} fields, the header has {len(header)}" for n, row in body if len(row) != len(header)]
        if ragged:
            raise ValueError(f"{path} is not a well-formed CSV: {'; '.join(ragged[:10])}; every row needs the header's columns")
        i_image, i_label = header.index(image_column), header.index(label_column)
        base = self.image_dir or self.data_dir or path.parent
        samples, bad = [], []
        for row, (image, label) in ((n, (fields[i_image], fields[i_label])) for n, fields in body):
            file = Path(str(image).strip()).expanduser()
            file = file if file.is_absolute() else base / file
            label = str(label).strip()
            if not str(image).strip():
                bad.append(f"line {row}: empty {image_column!r}")
            elif not file.is_file():
                bad.append(f"line {row}: image {file} not found")
            elif not label or label.lower() in ("nan", "none", "null"):
                bad.append(f"line {row}: empty {label_column!r} for {file.name}")
            else:
                samples.append((file, label))
        if bad and not self.skip_bad_files:
            error = FileNotFoundError if any(b.endswith("not found") for b in bad) else ValueError
            raise error(f"{path}: {len(bad)} bad row(s): {'; '.join(bad[:10])}{' ...' if len(bad) > 10 else ''}; "
                        "fix them, or pass skip_bad_files=True to leave them out")
        if bad:
            self._skip([f"{path} {b}" for b in bad])
        return samples

    def _csv_splits(self) -> dict[str, list[tuple[Any, str]]]:
        splits = {"train": self._read_csv(self.train_csv)}
        if self.val_csv is not None:
            splits["val"] = self._read_csv(self.val_csv)
        if self.test_csv is not None:
            splits["test"] = self._read_csv(self.test_csv)
        return splits

    # Hugging Face datasets -----------------------------------------------------------------

    def _load_hf(self) -> dict[str, Any]:
        import datasets

        source = self.hf_dataset
        if isinstance(source, (datasets.Dataset, datasets.DatasetDict)):
            loaded = source
        else:
            path = Path(source).expanduser()
            if not path.exists():
                raise FileNotFoundError(f"hf_dataset={str(path)!r} does not exist.")
            fmt = self.hf_format
            if fmt == "auto":
                if (path / "dataset_dict.json").is_file() or (path / "state.json").is_file():
                    fmt = "disk"
                elif any(path.rglob("*.parquet")):
                    fmt = "parquet"
                else:
                    fmt = "imagefolder"
            if fmt == "disk":
                loaded = datasets.load_from_disk(str(path))
            elif fmt == "parquet":
                files = sorted(path.rglob("*.parquet")) if path.is_dir() else [path]
                by_split: dict[str, list[str]] = {}
                for f in files:
                    split = next((s for s, aliases in SPLIT_ALIASES.items() for a in aliases if f.stem.startswith(a) or f.parent.name == a), "train")
                    by_split.setdefault(split, []).append(str(f))
                loaded = datasets.load_dataset("parquet", data_files=by_split)
            else:
                loaded = datasets.load_dataset("imagefolder", data_dir=str(path))
        if isinstance(loaded, datasets.Dataset):
            loaded = datasets.DatasetDict({"train": loaded})
        splits = {}
        for split, aliases in SPLIT_ALIASES.items():
            for alias in aliases:
                if alias in loaded:
                    splits[split] = loaded[alias]
                    break
        if "train" not in splits:
            raise ValueError(f"hf_dataset has splits {list(loaded)}; one must be called 'train'.")
        self.image_column, self.label_column = _columns(splits["train"].column_names, self.image_column, self.label_column)
        for split, ds in splits.items():
            for column in (self.image_column, self.label_column):
                if column not in ds.column_names:
                    raise ValueError(f"hf_dataset split {split!r} has no column {column!r} (columns: {ds.column_names}); set image_column / label_column.")
        return splits

    def _setup_hf(self) -> None:
        splits = self._load_hf()
        feature = splits["train"].features[self.label_column]
        if hasattr(feature, "names"):
            names = list(feature.names)
        else:
            names = _sorted_labels({str(v) for ds in splits.values() for v in ds.unique(self.label_column)})
        self._class_names = names
        index = {name: i for i, name in enumerate(names)}

        def wrap(ds: Any, transform: Callable) -> HFImageDataset:
            return HFImageDataset(ds, self.image_column, self.label_column, index, transform, self.mode)

        if "val" in splits:
            self.train_dataset = wrap(splits["train"], self.train_transform)
            self.val_dataset = wrap(splits["val"], self.eval_transform)
        else:
            tr, va = self._carve_val(len(splits["train"]))
            self.train_dataset = Subset(wrap(splits["train"], self.train_transform), tr.tolist())
            self.val_dataset = Subset(wrap(splits["train"], self.eval_transform), va.tolist())
        if "test" in splits:
            self.test_dataset = wrap(splits["test"], self.eval_transform)

    # built-in data -------------------------------------------------------------------------

    def _setup_digits(self) -> None:
        from .digits import CLASS_NAMES, load_digits_images, split_indices

        images, labels = load_digits_images(self.mode)
        self._class_names = list(CLASS_NAMES)
        samples = list(zip(images, labels.tolist()))
        index = split_indices(labels, self.seed)
        self.train_dataset = Subset(ImageListDataset(samples, self.train_transform, self.mode), index["train"].tolist())
        self.val_dataset = Subset(ImageListDataset(samples, self.eval_transform, self.mode), index["val"].tolist())
        self.test_dataset = Subset(ImageListDataset(samples, self.eval_transform, self.mode), index["test"].tolist())

    def _torchvision(self, cls_name: str, *, train: bool, transform: Callable | None) -> Dataset:
        import torchvision.datasets

        from ..network import hub_offline, socket_timeout

        cls = getattr(torchvision.datasets, cls_name)
        root = str(self.data_dir or Path("data"))
        gray = cls_name in ("MNIST", "FashionMNIST")
        wrapped = _ToMode(transform, self.mode) if gray or self.mode == "L" else transform
        try:
            return cls(root=root, train=train, transform=wrapped, download=False)
        except RuntimeError:
            pass
        where = (
            f"{cls_name} is not under {Path(root).resolve()}: place {TORCHVISION_FILES[cls_name]} there "
            f"(data_dir={root!r}), or use dataset_name='digits', which needs no download"
        )
        if hub_offline():
            raise FileNotFoundError(f"{where} (HF_HUB_OFFLINE is set, so nothing is downloaded).")
        try:
            with socket_timeout(15.0):
                return cls(root=root, train=train, transform=wrapped, download=True)
        except (OSError, RuntimeError) as err:
            reason = " ".join(str(err).split())[:300]  # torchvision's message spans lines; keep ours to one
            raise FileNotFoundError(f"{where} (download failed: {type(err).__name__}: {reason}).") from None

    def _setup_torchvision(self, cls_name: str) -> None:
        train_aug = self._torchvision(cls_name, train=True, transform=self.train_transform)
        train_eval = self._torchvision(cls_name, train=True, transform=self.eval_transform)
        self._class_names = [str(c) for c in train_aug.classes]
        tr, va = self._carve_val(len(train_aug))
        self.train_dataset = Subset(train_aug, tr.tolist())
        self.val_dataset = Subset(train_eval, va.tolist())
        self.test_dataset = self._torchvision(cls_name, train=False, transform=self.eval_transform)

    # ------------------------------------------------------------------ loaders

    def _loader(self, dataset: Dataset | None, split: str, shuffle: bool) -> DataLoader:
        if dataset is None:
            self.setup()
            dataset = getattr(self, f"{split}_dataset")
        if dataset is None:
            raise ValueError(f"there is no {split} split: add a {split}/ folder, {split}_csv, or a '{split}' split to the dataset.")
        common = dict(batch_size=self.batch_size, num_workers=self.num_workers, pin_memory=self.pin_memory,
                      persistent_workers=self.persistent_workers,
                      prefetch_factor=self.prefetch_factor if self.num_workers > 0 else None)
        if not shuffle:
            return DataLoader(dataset, shuffle=False, **common)
        weights = None
        if self.balanced_sampling:
            labels = dataset_labels(dataset)
            counts = np.bincount(labels)
            weights = [1.0 / counts[label] for label in labels]
        # the order and the augmentations depend on (seed, epoch, position) only: a resumed run is bit-identical
        return resumable_loader(dataset, shuffle=True, seed=self.seed, weights=weights,
                                # A last training batch of one sample breaks BatchNorm; drop the remainder instead.
                                drop_last=len(dataset) > self.batch_size, **common)

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_dataset, "train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_dataset, "val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_dataset, "test", shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        return self._loader(self.test_dataset, "test", shuffle=False)


class _ToMode:
    """torchvision's MNIST yields grey PIL images; convert to the model's mode before the transform."""

    def __init__(self, transform: Callable | None, mode: str) -> None:
        self.transform, self.mode = transform, mode

    def __call__(self, image: Image.Image) -> Any:
        image = image.convert(self.mode)
        return self.transform(image) if self.transform else image
