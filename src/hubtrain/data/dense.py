"""What the segmentation and detection data modules share: preprocessing taken from a backbone, a validation split
carved from train (read through evaluation transforms, so no flips on validation), and the loaders."""
from __future__ import annotations

from typing import Any, Callable

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset, Subset

from .loading import resumable_loader


class DenseDataModule(pl.LightningDataModule):
    """Base class; subclasses set ``transform_config``, ``batch_size``, ``num_workers``, ``val_split``, ``seed``
    and the ``*_dataset`` attributes in ``setup``."""

    collate_fn: Callable | None = None

    @classmethod
    def from_backbone(cls, backbone: Any, **kwargs: Any) -> "DenseDataModule":
        """A data module normalising as ``backbone`` expects (a backbone, a task, or a name built without weights)."""
        if not hasattr(getattr(backbone, "backbone", backbone), "data_config"):
            from hubtrain.backbones import create_backbone

            backbone = create_backbone(backbone, pretrained=False)
        return cls(transform_config=backbone, **kwargs)

    @property
    def preprocessing(self) -> dict[str, Any]:
        """The evaluation preprocessing as a timm data config (tasks store it in checkpoints and config.json)."""
        return dict(self.transform_config)

    def split_off_val(self, train: Dataset, eval_view: Dataset) -> tuple[Dataset, Dataset | None]:
        """Hold out ``val_split`` of ``train`` (seeded); the held-out part is read through ``eval_view``."""
        if self.val_split <= 0:
            return train, None
        order = torch.randperm(len(train), generator=torch.Generator().manual_seed(self.seed)).tolist()
        n_val = max(1, int(round(len(train) * self.val_split)))
        if n_val >= len(train):
            raise ValueError(f"val_split={self.val_split} leaves no training images out of {len(train)}.")
        return Subset(train, order[n_val:]), Subset(eval_view, order[:n_val])

    def _loader(self, dataset: Dataset | None, shuffle: bool, split: str) -> DataLoader:
        if dataset is None:
            raise RuntimeError(f"no {split} data: call setup() first (the Trainer does), or give a {split} split.")
        common = dict(batch_size=self.batch_size, num_workers=self.num_workers, collate_fn=type(self).collate_fn,
                      persistent_workers=self.num_workers > 0)
        if shuffle:  # order and augmentations depend on (seed, epoch, position) only: a resumed run is bit-identical
            return resumable_loader(dataset, shuffle=True, seed=self.seed, **common)
        return DataLoader(dataset, shuffle=False, **common)

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_dataset, shuffle=True, split="train")

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_dataset, shuffle=False, split="val")

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_dataset, shuffle=False, split="test")

    def predict_dataloader(self) -> DataLoader:
        return self._loader(self.test_dataset, shuffle=False, split="predict")
