"""Find a timm backbone's files without ever waiting silently on the network.

timm, left alone, asks the Hub for every pretrained name and, when the Hub is unreachable, ``huggingface_hub``
retries with back-off for the better part of a minute before giving up. We resolve files ourselves first, under
the rules of :mod:`hubtrain.network` (cache first, nothing with ``HF_HUB_OFFLINE``, one short request otherwise),
so timm only ever sees local paths.
"""
from __future__ import annotations

import os
from pathlib import Path

from ..network import hub_file, hub_offline, hub_timeout, network_errors, offline_error, offline_reason, socket_timeout

# Weight files a timm repo may hold, safest first (timm prefers the same order).
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "open_clip_model.safetensors", "open_clip_pytorch_model.bin")


def split_revision(repo: str) -> tuple[str, str | None]:
    """``"org/name@rev"`` -> ``("org/name", "rev")`` (timm's convention for hf-hub names)."""
    repo_id, _, revision = repo.partition("@")
    return repo_id, revision or None


def resolve_hub_folder(repo: str, *, pretrained: bool) -> Path:
    """Local snapshot folder of a timm repo on the Hub: ``config.json``, plus weights when ``pretrained``."""
    repo_id, revision = split_revision(repo)
    model = f"hf-hub:{repo}"
    config = hub_file(repo_id, ["config.json"], revision=revision, model=model)
    if config is None:
        raise FileNotFoundError(f"{model!r} has no config.json, so it is not a timm model repo; check the repo id.")
    if pretrained:
        weights = hub_file(repo_id, WEIGHT_FILES, revision=revision, model=model)
        if weights is None:
            raise FileNotFoundError(
                f"{model!r} has none of {list(WEIGHT_FILES)}; use pretrained=False for a randomly initialised model."
            )
        if weights.parent != config.parent:
            raise ValueError(
                f"{model!r}: cached config.json ({config.parent.name}) and weights ({weights.parent.name}) come from "
                f"different snapshots; pin a revision with 'hf-hub:{repo_id}@<commit>' or clear the cached repo."
            )
    return config.parent


def resolve_timm_weights(model_name: str) -> dict[str, str] | None:
    """``pretrained_cfg_overlay`` pointing timm at a local weight file for a registry name, or ``None``.

    ``None`` means timm knows no pretrained weights for this name; timm then raises its own error.
    """
    import timm.models

    cfg = timm.models.get_pretrained_cfg(model_name)
    if cfg is None:
        return None
    if cfg.hf_hub_id:
        repo_id, revision = split_revision(cfg.hf_hub_id)
        files = [cfg.hf_hub_filename] if cfg.hf_hub_filename else list(WEIGHT_FILES[:2])
        path = hub_file(repo_id, files, revision=revision, model=model_name)
        if path is None:
            raise FileNotFoundError(f"{model_name!r}: the Hub repo {cfg.hf_hub_id} has none of {files}.")
        return {"file": str(path)}
    if cfg.url:
        import torch.hub

        cached = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(cfg.url)
        if cached.is_file():
            return {"file": str(cached)}
        if hub_offline():
            raise offline_error(model_name, None, f"{offline_reason()} (nor is {cached} present)")
        cached.parent.mkdir(parents=True, exist_ok=True)
        try:
            with socket_timeout(hub_timeout()):
                torch.hub.download_url_to_file(cfg.url, str(cached), progress=True)
        except (OSError, *network_errors()) as err:
            raise offline_error(model_name, None, f"{cfg.url} could not be fetched ({type(err).__name__})") from None
        return {"file": str(cached)}
    return None
