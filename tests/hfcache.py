"""A Hugging Face cache laid out exactly as ``huggingface_hub`` writes it, for tests that load models "from the Hub".

Used by the ``hf_cache`` fixture of ``tests/conftest.py`` (one cache per test) and by tests that need one cache for
a whole module (``HFCache(home, pytest.MonkeyPatch())``). Importable from any test as ``from hfcache import HFCache``
(``tests/conftest.py`` puts this folder on ``sys.path``).
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest


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
