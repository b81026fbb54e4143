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

import hashlib
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import sys

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # `from checks import ...`: the check functions tests share

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


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@dataclass
class CachedRepo:
    """A repo laid out in the test's Hugging Face cache.

    ``repo_id`` ("org/name"), ``hub_name`` ("hf-hub:org/name", what timm/hubtrain take), ``snapshot`` (the
    ``snapshots/<commit>`` folder), ``commit`` (40 hex), ``state_dict`` (the saved tensors, when built from a model)
    and ``model`` (the module whose weights were saved, when there was one).
    """

    repo_id: str
    snapshot: Path
    commit: str
    state_dict: dict[str, Any] = field(default_factory=dict)
    model: Any = None

    @property
    def hub_name(self) -> str:
        return f"hf-hub:{self.repo_id}"

    def __str__(self) -> str:
        return self.repo_id


class HFCache:
    """A private Hugging Face home for one test; call it (or ``add_timm_model``) to publish repos into it.

    ``hf_cache.hub_dir`` is ``$HF_HUB_CACHE``; ``hf_cache.home`` is ``$HF_HOME``. ``hf_cache.set_offline(False)``
    lets huggingface_hub try the network again (pair it with ``HF_ENDPOINT`` pointing at a local server).
    """

    def __init__(self, home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        from huggingface_hub import constants

        self.home = home
        self.hub_dir = home / "hub"
        self.hub_dir.mkdir(parents=True, exist_ok=True)
        self._monkeypatch = monkeypatch
        # huggingface_hub (and transformers through it) read these module constants at call time.
        monkeypatch.setenv("HF_HOME", str(home))
        monkeypatch.setenv("HF_HUB_CACHE", str(self.hub_dir))
        monkeypatch.setattr(constants, "HF_HOME", str(home))
        monkeypatch.setattr(constants, "HF_HUB_CACHE", str(self.hub_dir))
        monkeypatch.setattr(constants, "HUGGINGFACE_HUB_CACHE", str(self.hub_dir), raising=False)
        self.set_offline(True)

    def set_offline(self, offline: bool) -> None:
        from huggingface_hub import constants

        if offline:
            self._monkeypatch.setenv("HF_HUB_OFFLINE", "1")
        else:
            self._monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
            self._monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
        self._monkeypatch.setattr(constants, "HF_HUB_OFFLINE", offline)

    def add_folder(self, repo_id: str, folder: str | os.PathLike, *, revision: str = "main", repo_type: str = "model") -> CachedRepo:
        """Copy every file of ``folder`` into the cache as ``repo_id`` at ``revision`` (blobs named by sha256)."""
        folder = Path(folder)
        files = sorted(p for p in folder.rglob("*") if p.is_file())
        if not files:
            raise FileNotFoundError(f"hf_cache.add_folder: {folder} holds no files")
        repo_dir = self.hub_dir / f"{repo_type}s--{repo_id.replace('/', '--')}"
        hashes = {p.relative_to(folder).as_posix(): _sha256(p) for p in files}
        commit = hashlib.sha1(json.dumps(hashes, sort_keys=True).encode()).hexdigest()
        snapshot = repo_dir / "snapshots" / commit
        for rel, digest in hashes.items():
            blob = repo_dir / "blobs" / digest
            blob.parent.mkdir(parents=True, exist_ok=True)
            if not blob.exists():
                shutil.copyfile(folder / rel, blob)
            link = snapshot / rel
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(os.path.relpath(blob, link.parent))
        (repo_dir / "refs").mkdir(parents=True, exist_ok=True)
        (repo_dir / "refs" / revision).write_text(commit)
        return CachedRepo(repo_id=repo_id, snapshot=snapshot, commit=commit)

    def add_timm_model(
        self,
        repo_id: str = "hubtrain-test/test_resnet",
        model_name: str = "test_resnet",
        *,
        model: Any = None,
        seed: int = 0,
        safetensors: bool = True,
        **create_kwargs: Any,
    ) -> CachedRepo:
        """Create ``model_name`` with seeded random weights (or take ``model``), save it with timm's ``save_for_hf``
        and publish that folder as ``repo_id``. ``safetensors=False`` writes ``pytorch_model.bin`` instead."""
        import tempfile

        import timm
        import torch
        from timm.models import save_for_hf

        if model is None:
            torch.manual_seed(seed)
            model = timm.create_model(model_name, pretrained=False, **create_kwargs)
        with tempfile.TemporaryDirectory(dir=self.home) as tmp:
            save_for_hf(model, tmp, safe_serialization=True if safetensors else False)
            repo = self.add_folder(repo_id, tmp)
        repo.state_dict = {k: v.detach().clone() for k, v in model.state_dict().items()}
        repo.model = model
        return repo

    __call__ = add_timm_model


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
