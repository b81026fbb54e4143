"""Fixtures for the compatibility matrix: the three Hugging Face approaches, tiny data, a local Hub mirror.

Approaches (``APPROACHES``), each a factory ``build(approach, **task_kwargs) -> LightningModule``:

- ``hf_hub_timm``: ``ImageClassifier(backbone="hf-hub:acme/test-convnext")``, timm's ``test_convnext`` saved with
  ``save_for_hf`` into a Hugging Face cache this test lays out (offline);
- ``hf_direct``: ``ImageClassifier(backbone=ViTModel(ViTConfig(...)))``, a 2-layer ViT built in the test;
- ``hf_direct_module``: the seed's own route, a user-written ``pl.LightningModule`` around a ``ViTModel`` with its
  own ``training_step`` and ``configure_optimizers`` (``SeedViTClassifier`` below);
- ``hf_auto``: ``ImageClassifier(backbone="hf:acme/tiny-vit")``, a ViT + ``ViTImageProcessor`` saved with
  ``save_pretrained`` into the cache, loaded through ``AutoModel``.

Sizes: 32 px images, ViTs with 2 layers of width 32 and 8-px patches, timm's ``test_convnext``: each fit is a second
or two on 2 CPU cores.
"""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

APPROACHES = ("hf_hub_timm", "hf_direct", "hf_direct_module", "hf_auto")
HUB_TIMM_REPO = "acme/test-convnext"
AUTO_REPO = "acme/tiny-vit"
NUM_CLASSES = 3
IMAGE_SIZE = 32
# Non-default preprocessing in the hf_auto repo, so a test can tell it was read from preprocessor_config.json.
AUTO_MEAN = [0.45, 0.46, 0.47]
AUTO_STD = [0.22, 0.23, 0.24]


def tiny_vit_config():
    from transformers import ViTConfig

    return ViTConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        image_size=IMAGE_SIZE,
        patch_size=8,
    )


class SeedViTClassifier(pl.LightningModule):
    """The seed's approach 2, written the way its user would: ViTModel + linear head, own steps and optimiser.

    Beyond the seed's snippet it logs validation/test loss and accuracy (so checkpoints and early stopping have a
    metric) and keeps ``lr`` as an attribute (so Lightning's LR finder can tune it).
    """

    def __init__(self, num_classes: int = NUM_CLASSES, lr: float = 1e-3) -> None:
        super().__init__()
        from transformers import ViTModel

        self.save_hyperparameters()
        self.lr = lr
        self.vit = ViTModel(tiny_vit_config())
        self.classifier = torch.nn.Linear(self.vit.config.hidden_size, num_classes)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.vit(pixel_values=pixel_values).pooler_output)

    def _step(self, batch: Any, stage: str) -> torch.Tensor:
        x, y = batch
        logits = self(x)
        loss = F.cross_entropy(logits, y)
        self.log(f"{stage}/loss", loss, on_epoch=True, on_step=stage == "train")
        self.log(f"{stage}/accuracy", (logits.argmax(-1) == y).float().mean(), on_epoch=True, on_step=False)
        return loss

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        return self._step(batch, "train")

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self._step(batch, "val")

    def test_step(self, batch: Any, batch_idx: int) -> None:
        self._step(batch, "test")

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.parameters(), lr=self.lr)


# ---------------------------------------------------------------------------------------------------------------
# data


def make_images(n: int, seed: int, size: int = IMAGE_SIZE) -> TensorDataset:
    """Normalised images whose class shows in colour and in a stripe pattern: learnable in a few steps."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % NUM_CLASSES
    images = 0.6 * torch.randn(n, 3, size, size, generator=g)
    for c in range(NUM_CLASSES):
        idx = labels == c
        images[idx, c] += 1.0
        images[idx, :, :: 2 + c] -= 1.0
    return TensorDataset(images, labels)


@pytest.fixture(scope="session")
def datasets() -> dict[str, TensorDataset]:
    return {"train": make_images(48, 0), "val": make_images(24, 1), "test": make_images(24, 2)}


@pytest.fixture
def loaders(datasets) -> Callable[..., DataLoader]:
    """``loaders(split, batch_size=8)``; train is shuffled with a fixed seed."""

    def make(split: str, batch_size: int = 8) -> DataLoader:
        shuffle = split == "train"
        g = torch.Generator().manual_seed(0) if shuffle else None
        return DataLoader(datasets[split], batch_size=batch_size, shuffle=shuffle, generator=g)

    return make


# ---------------------------------------------------------------------------------------------------------------
# the approaches


def save_tiny_vit_repo(folder: Path, seed: int = 0) -> Path:
    """A transformers repo as save_pretrained writes it: ViTModel weights + ViTImageProcessor config."""
    from transformers import ViTImageProcessor, ViTModel

    torch.manual_seed(seed)
    ViTModel(tiny_vit_config()).save_pretrained(folder)
    ViTImageProcessor(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}, image_mean=AUTO_MEAN, image_std=AUTO_STD).save_pretrained(folder)
    return folder


@pytest.fixture
def publish(hf_cache, tmp_path) -> Callable[[str], str]:
    """``publish(approach)`` puts the approach's repo into the test's HF cache and returns the backbone name."""

    def make(approach: str) -> str:
        if approach == "hf_hub_timm":
            return hf_cache(HUB_TIMM_REPO, "test_convnext").hub_name
        if approach == "hf_auto":
            hf_cache.add_folder(AUTO_REPO, save_tiny_vit_repo(tmp_path / "tiny-vit-src"))
            return f"hf:{AUTO_REPO}"
        raise ValueError(approach)

    return make


@pytest.fixture
def build(publish) -> Callable[..., pl.LightningModule]:
    """``build(approach, **kwargs)``: the model of one approach; ``kwargs`` go to ``ImageClassifier``."""
    from transformers import ViTModel

    from hubtrain import ImageClassifier

    def make(approach: str, **kwargs: Any) -> pl.LightningModule:
        torch.manual_seed(0)
        kwargs.setdefault("lr", 3e-3)
        if approach == "hf_direct_module":
            return SeedViTClassifier(lr=kwargs["lr"])
        if approach == "hf_direct":
            backbone: Any = ViTModel(tiny_vit_config())
        else:
            backbone = publish(approach)
        return ImageClassifier(backbone=backbone, num_classes=NUM_CLASSES, **kwargs)

    return make


@pytest.fixture
def trainer_kwargs(tmp_path) -> dict[str, Any]:
    """Quiet, CPU-only, runs under tmp; tests override what they exercise."""
    return dict(
        accelerator="cpu",
        devices=1,
        default_root_dir=tmp_path / "runs",
        enable_progress_bar=False,
        enable_model_summary=False,
        log_every_n_steps=1,
        plot_curves=False,
    )


# ---------------------------------------------------------------------------------------------------------------
# a local Hub mirror, reached over HTTP by huggingface_hub's real download path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class OlahMirror:
    """An ``olah`` server on 127.0.0.1 serving local git repos through the Hub API (``olah`` offline mode)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.mirrors = root / "mirrors"
        self.port = _free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self._proc: subprocess.Popen | None = None

    def add_repo(self, repo_id: str, folder: Path) -> Path:
        """Commit ``folder``'s files as the git repo ``models/<repo_id>`` that olah serves."""
        target = self.mirrors / "models" / repo_id
        shutil.copytree(folder, target)
        git = ["git", "-c", "user.email=test@example.com", "-c", "user.name=test", "-C", str(target)]
        subprocess.run([*git, "init", "-q", "-b", "main"], check=True)
        subprocess.run([*git, "add", "-A"], check=True)
        subprocess.run([*git, "commit", "-q", "-m", "add model"], check=True)
        return target

    def start(self, timeout: float = 60.0) -> None:
        config = self.root / "olah.toml"
        config.write_text(
            "[basic]\n"
            f'host = "127.0.0.1"\nport = {self.port}\n'
            f'repos-path = "{self.root / "repos"}"\nmirrors-path = ["{self.mirrors}"]\n'
            "[accessibility]\noffline = true\n"
        )
        log = open(self.root / "olah.out", "wb")
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "olah.server", "-c", str(config), "--log-path", str(self.root / "logs")],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=self.root,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"olah exited with {self._proc.returncode}: {(self.root / 'olah.out').read_text()[-2000:]}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.2)
        raise RuntimeError(f"olah did not listen on {self.endpoint} within {timeout} s")

    def stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._proc.kill()


@pytest.fixture
def olah_mirror(tmp_path) -> OlahMirror:
    import olah  # noqa: F401  (hubtrain[dev] installs it: missing, the test fails instead of skipping)
    if shutil.which("git") is None:
        pytest.skip("olah serves git repositories; git is not installed")
    mirror = OlahMirror(tmp_path / "olah")
    mirror.mirrors.mkdir(parents=True)
    yield mirror
    mirror.stop()
