"""PyTorch Hub entry points for ResNet-BK.

    import torch
    model = torch.hub.load("<owner>/hubtrain", "resnet_bk_10m")                      # random init, preset size
    model = torch.hub.load("<owner>/hubtrain", "resnet_bk_10m", pretrained=True)     # weights from the HF Hub
    model = torch.hub.load("/path/to/hubtrain", "resnet_bk_custom", source="local",
                           d_model=512, n_layers=12, use_birman_schwinger=True)

Every entry returns a ``transformers`` ``ResNetBKForCausalLM``. ``pretrained=True`` reads the weights with
``from_pretrained`` from the local Hugging Face cache, or downloads them from the Hub into it; when neither works it
raises :class:`hubtrain.errors.OfflineModelError` naming the repo and the ways out. It never hands back random
weights under a pretrained name.
"""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

dependencies = ["torch", "transformers"]

# torch.hub puts the repository root on sys.path, not src/: make the package importable from a plain clone.
if importlib.util.find_spec("hubtrain") is None:
    sys.path.insert(0, str(Path(__file__).resolve().parent / "src"))

#: Where each preset's pretrained weights live on the Hugging Face Hub (override with ``repo_id=``).
DEFAULT_REPO_IDS = {
    "1M": "hubtrain/resnet-bk-1m",
    "10M": "hubtrain/resnet-bk-10m",
    "100M": "hubtrain/resnet-bk-100m",
    "1B": "hubtrain/resnet-bk-1b",
    "10B": "hubtrain/resnet-bk-10b",
}


def _from_hub(repo_id: str, **overrides):
    """The preset's pretrained weights through hubtrain's one loader: the local cache first, the Hub only if allowed
    and reachable (a one-line OfflineModelError otherwise), safetensors only, hubtrain's own modeling code."""
    import hubtrain
    from hubtrain.artifacts import resolve_folder
    from hubtrain.errors import OfflineModelError

    folder = resolve_folder(repo_id)
    if not any(folder.glob("*.safetensors")):
        raise OfflineModelError(
            f"the snapshot of {repo_id!r} at {folder} holds no safetensors weights; re-download it "
            f"(hf download {repo_id}) or use pretrained=False for a randomly initialised model")
    return hubtrain.load(folder, model_kwargs=overrides).model


def _preset(size: str, pretrained: bool, repo_id: str | None, overrides: dict):
    if pretrained:
        return _from_hub(repo_id or DEFAULT_REPO_IDS[size], **overrides)
    if repo_id is not None:
        raise ValueError(f"repo_id={repo_id!r} is only used with pretrained=True; pass pretrained=True to load it, "
                         "or drop repo_id for a randomly initialised model")
    from hubtrain.models.resnet_bk import create_resnet_bk_for_hf

    return create_resnet_bk_for_hf(size, **overrides)


def resnet_bk_1m(pretrained: bool = False, repo_id: str | None = None, **overrides):
    """ResNet-BK with about 1M non-embedding parameters (preset "1M"); ``overrides`` are ResNetBKConfig fields."""
    return _preset("1M", pretrained, repo_id, overrides)


def resnet_bk_10m(pretrained: bool = False, repo_id: str | None = None, **overrides):
    """ResNet-BK with about 10M non-embedding parameters (preset "10M"); ``overrides`` are ResNetBKConfig fields."""
    return _preset("10M", pretrained, repo_id, overrides)


def resnet_bk_100m(pretrained: bool = False, repo_id: str | None = None, **overrides):
    """ResNet-BK with about 100M non-embedding parameters (preset "100M"); ``overrides`` are ResNetBKConfig fields."""
    return _preset("100M", pretrained, repo_id, overrides)


def resnet_bk_1b(pretrained: bool = False, repo_id: str | None = None, **overrides):
    """ResNet-BK with about 1B non-embedding parameters (preset "1B"); ``overrides`` are ResNetBKConfig fields."""
    return _preset("1B", pretrained, repo_id, overrides)


def resnet_bk_10b(pretrained: bool = False, repo_id: str | None = None, **overrides):
    """ResNet-BK with about 10B non-embedding parameters (preset "10B"); ``overrides`` are ResNetBKConfig fields."""
    return _preset("10B", pretrained, repo_id, overrides)


def resnet_bk_custom(**config):
    """A randomly initialised ResNet-BK from any ResNetBKConfig fields, e.g. ``d_model=512, n_layers=12``."""
    from hubtrain.models.resnet_bk import ResNetBKConfig, ResNetBKForCausalLM

    return ResNetBKForCausalLM(ResNetBKConfig(**config))
