"""Shared fixtures: a real Hugging Face cache, timm model folders and image datasets, all built in tmp dirs.

Nothing here touches the network. Every test session starts with ``HF_HUB_OFFLINE=1`` and an empty, private
Hugging Face home, so a test that forgets to provide its model fails fast instead of downloading.

Fixtures (see each docstring):

- ``hf_cache``: factory that lays out ``models--org--name/{blobs,refs/main,snapshots/<commit>}`` exactly as
  ``huggingface_hub`` does, from timm's own ``save_for_hf`` (``hf_cache("org/name", "test_resnet")``) or from any
  folder (``hf_cache.add_folder("org/name", folder)``, e.g. a transformers ``save_pretrained`` folder).
- ``timm_folder``: factory for a ``local-dir:`` folder (timm ``save_for_hf`` layout).
- ``image_folder``: factory for a tiny ``train/<class>/`` image-folder dataset with learnable classes.
- ``one_thread``: run the test with ``torch.set_num_threads(1)`` (tiny models on a shared 2-core machine).
"""
from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path
from typing import Any, Callable, Iterable

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # `from checks import ...`: the check functions tests share

from hfcache import CachedRepo, HFCache  # noqa: E402,F401  (the cache layout the hf_cache fixture hands out)

# Set before anything imports huggingface_hub (it reads these once, at import): no test may reach the real Hub.
_SESSION_HF_HOME = Path(os.environ.get("PYTEST_HF_HOME", "")) if os.environ.get("PYTEST_HF_HOME") else None
if _SESSION_HF_HOME is None:
    import tempfile

    import atexit

    _SESSION_HF_HOME = Path(tempfile.mkdtemp(prefix="hubtrain-hf-home-"))
    atexit.register(shutil.rmtree, _SESSION_HF_HOME, True)
os.environ["HF_HOME"] = str(_SESSION_HF_HOME)
os.environ["HF_HUB_CACHE"] = str(_SESSION_HF_HOME / "hub")
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a test that needs the (local) network flips it, see HFCache.set_offline
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture
def hf_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> HFCache:
    """A fresh, offline Hugging Face cache for this test (``HF_HOME``/``HF_HUB_CACHE`` point into tmp).

    Usage::

        repo = hf_cache("acme/tiny-resnet", "test_resnet")        # timm save_for_hf -> models--acme--tiny-resnet
        backbone = create_backbone(repo.hub_name, pretrained=True)  # "hf-hub:acme/tiny-resnet", loaded offline
        hf_cache.add_folder("acme/tiny-vit", vit.save_pretrained_folder)  # any folder, e.g. transformers'
    """
    return HFCache(tmp_path / "hf-home", monkeypatch)


@pytest.fixture
def timm_folder(tmp_path: Path) -> Callable[..., tuple[Path, dict[str, Any]]]:
    """Factory: ``timm_folder(model_name="test_resnet", seed=0, **create_kwargs) -> (folder, state_dict)``.

    The folder is timm's ``save_for_hf`` layout (config.json + model.safetensors): load it as ``local-dir:<folder>``.
    """
    import timm
    import torch
    from timm.models import save_for_hf

    counter = iter(range(1_000_000))

    def make(model_name: str = "test_resnet", *, seed: int = 0, **create_kwargs: Any) -> tuple[Path, dict[str, Any]]:
        torch.manual_seed(seed)
        model = timm.create_model(model_name, pretrained=False, **create_kwargs)
        folder = tmp_path / f"timm-{model_name}-{next(counter)}"
        save_for_hf(model, folder, safe_serialization=True)
        return folder, {k: v.detach().clone() for k, v in model.state_dict().items()}

    return make


# Distinct, learnable looks per class: a base colour plus a class-specific stripe pattern.
_PALETTE = [(230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180), (70, 240, 240)]


def _class_image(index: int, size: int, rng: Any) -> Any:
    import numpy as np
    from PIL import Image

    base = np.array(_PALETTE[index % len(_PALETTE)], dtype=np.float32)
    img = np.tile(base, (size, size, 1))
    step = 2 + index
    img[::step] *= 0.3  # stripes every (2 + index) rows
    img += rng.normal(0.0, 20.0, img.shape)
    return Image.fromarray(img.clip(0, 255).astype("uint8"))


@pytest.fixture
def image_folder(tmp_path: Path) -> Callable[..., Path]:
    """Factory for a tiny image-folder dataset; returns its root.

    ``image_folder(classes=("cat", "dog", "fox"), per_class={"train": 12, "val": 4}, size=16, seed=0,
    missing={"val": ["fox"]}, corrupt=["train/cat/bad.png"], ext=".png")`` writes ``root/<split>/<class>/*.png``.
    Classes look different (colour + stripes), so a small model learns them in a few steps. ``missing`` leaves a
    class out of a split (its folder is not created); ``corrupt`` writes files that are not images.
    """
    counter = iter(range(1_000_000))

    def make(
        classes: Iterable[str] = ("cat", "dog", "fox"),
        per_class: dict[str, int] | None = None,
        *,
        size: int = 16,
        seed: int = 0,
        missing: dict[str, list[str]] | None = None,
        corrupt: Iterable[str] = (),
        ext: str = ".png",
    ) -> Path:
        import numpy as np

        classes = list(classes)
        per_class = per_class or {"train": 12, "val": 4}
        missing = missing or {}
        rng = np.random.default_rng(seed)
        root = tmp_path / f"images-{next(counter)}"
        for split, n in per_class.items():
            for index, name in enumerate(classes):
                if name in missing.get(split, []):
                    continue
                folder = root / split / name
                folder.mkdir(parents=True, exist_ok=True)
                for i in range(n):
                    _class_image(index, size, rng).save(folder / f"{name}_{i:03d}{ext}")
        for rel in corrupt:
            path = root / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(b"this is not an image")
        return root

    return make


@pytest.fixture
def one_thread():
    """Tiny models on a shared 2-core machine train faster single-threaded than fighting for both cores."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def classifier():
    """A tiny ``ImageClassifier`` (timm's test_resnet, 3 classes, random weights), in eval mode."""
    import torch

    from hubtrain.tasks.classification import ImageClassifier

    torch.manual_seed(0)
    return ImageClassifier("test_resnet", num_classes=3, pretrained=False).eval()


@pytest.fixture(scope="session")
def resnet_bk():
    """A tiny ResNet-BK (vocabulary 64, width 32, 2 layers), in eval mode."""
    import torch

    from hubtrain.models.resnet_bk import ResNetBKConfig, ResNetBKForCausalLM

    torch.manual_seed(0)
    config = ResNetBKConfig(vocab_size=64, d_model=32, n_layers=2, num_channels=4, channel_dim=8, ffn_dim=32,
                            num_experts=2, top_k=1, n_seq=32)
    return ResNetBKForCausalLM(config).eval()


@pytest.fixture(scope="session")
def lm_folder(tmp_path_factory):
    """A trained ResNet-BK folder with its tokenizer: ``hubtrain quickstart lm --fast`` for 12 steps (seconds)."""
    import torch

    from hubtrain.cli.quickstart_lm import run_quickstart_lm

    root = tmp_path_factory.mktemp("quickstart-lm")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        result = run_quickstart_lm(output_dir=root / "lm", root_dir=root / "runs", fast=True, max_steps=12,
                                   tokenizer_cache_dir=root / "tok", enable_progress_bar=False, max_new_tokens=4)
    finally:
        torch.set_num_threads(threads)
    return Path(result["output_dir"])


@pytest.fixture(scope="session")
def digits_folder(tmp_path_factory):
    """A digits classifier folder as ``hubtrain quickstart`` writes it (timm's test_resnet, 2 epochs, seconds)."""
    import torch

    from hubtrain.cli.quickstart import run_quickstart

    root = tmp_path_factory.mktemp("quickstart")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        result = run_quickstart(backbone="test_resnet", max_epochs=2, output_dir=str(root / "digits"),
                                root_dir=str(root / "runs"), enable_progress_bar=False)
    finally:
        torch.set_num_threads(threads)
    return Path(result["output_dir"])
