"""Tiny LightningModules and data for the trainer tests: an MLP on a separable synthetic 3-class problem."""
from __future__ import annotations

import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from sklearn.datasets import make_classification
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from hubtrain.metrics import MetricConfig, MetricManager

NUM_FEATURES, NUM_CLASSES = 16, 3


def make_data(n: int = 256, seed: int = 0) -> tuple[TensorDataset, TensorDataset]:
    x, y = make_classification(
        n_samples=n, n_features=NUM_FEATURES, n_informative=8, n_redundant=0, n_classes=NUM_CLASSES,
        class_sep=2.0, random_state=seed,
    )
    x, y = torch.tensor(x, dtype=torch.float32), torch.tensor(y, dtype=torch.long)
    cut = int(0.75 * n)
    return TensorDataset(x[:cut], y[:cut]), TensorDataset(x[cut:], y[cut:])


class TinyDataModule(pl.LightningDataModule):
    def __init__(self, batch_size: int = 32, n: int = 256) -> None:
        super().__init__()
        self.batch_size = batch_size
        self.train_set, self.val_set = make_data(n)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.train_set, batch_size=self.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_set, batch_size=64)

    def test_dataloader(self) -> DataLoader:
        return DataLoader(self.val_set, batch_size=64)


class TinyClassifier(pl.LightningModule):
    """Stands in for a hubtrain task: MetricManager, probabilities to metrics, and a ``monitor``."""

    def __init__(self, lr: float = 0.05, hidden: int = 32) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.lr = lr
        self.net = nn.Sequential(nn.Linear(NUM_FEATURES, hidden), nn.ReLU(), nn.Linear(hidden, NUM_CLASSES))
        self.metrics = MetricManager(
            [MetricConfig("accuracy", metric_class="Accuracy", params={"task": "multiclass"}, prog_bar=True)],
            num_classes=NUM_CLASSES,
        )
        self.optimizer_steps = 0

    @property
    def monitor(self) -> tuple[str, str]:
        return "val/accuracy", "max"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def _step(self, batch, stage: str) -> torch.Tensor:
        x, y = batch
        logits = self(x)
        loss = F.cross_entropy(logits, y)
        self.log(f"{stage}/loss", loss, on_step=stage == "train", on_epoch=True)
        self.metrics.update(stage, logits.softmax(-1), y)
        self.metrics.log(self, stage)
        return loss

    def training_step(self, batch, batch_idx):
        return self._step(batch, "train")

    def validation_step(self, batch, batch_idx):
        self._step(batch, "val")

    def test_step(self, batch, batch_idx):
        self._step(batch, "test")

    def on_before_optimizer_step(self, optimizer) -> None:
        self.optimizer_steps += 1

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.lr, momentum=0.9)


class PlainModule(pl.LightningModule):
    """The seed's approach 2: a user LightningModule with its own training_step and no ``monitor``."""

    def __init__(self, with_validation: bool = False) -> None:
        super().__init__()
        self.with_validation = with_validation
        self.net = nn.Sequential(nn.Linear(NUM_FEATURES, 16), nn.ReLU(), nn.Linear(16, NUM_CLASSES))

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = F.cross_entropy(self(x), y)
        self.log("train/loss", loss)
        return loss

    def validation_step(self, batch, batch_idx):
        if self.with_validation:
            x, y = batch
            self.log("val/loss", F.cross_entropy(self(x), y))

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=1e-2)


@pytest.fixture
def data() -> TinyDataModule:
    return TinyDataModule()


QUIET = dict(enable_progress_bar=False, enable_model_summary=False, accelerator="cpu", devices=1)


class _Kit:
    """What the tests need, handed out as a fixture (pytest's importlib mode cannot import conftest by name)."""

    TinyClassifier = TinyClassifier
    PlainModule = PlainModule
    TinyDataModule = TinyDataModule
    make_data = staticmethod(make_data)
    QUIET = QUIET


@pytest.fixture
def kit() -> type[_Kit]:
    return _Kit
