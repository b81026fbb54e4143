"""Find a backbone's files without ever waiting silently on the network.

timm, left alone, asks the Hub for every pretrained name and, when the Hub is unreachable, ``huggingface_hub``
retries with back-off for the better part of a minute before giving up. We resolve files ourselves first:

1. a copy in the local Hugging Face cache is used as it is, without contacting the Hub (delete the cached snapshot
   to refresh it);
2. with ``HF_HUB_OFFLINE`` set, nothing else is tried: a missing file is an ``OfflineModelError`` at once;
3. otherwise the Hub is asked once, with a short timeout and no retries (``HUBTRAIN_HUB_TIMEOUT``, default 5 s),
   and an unreachable Hub becomes the same ``OfflineModelError`` within seconds.

timm then only ever sees local paths.
"""
from __future__ import annotations

import contextlib
import os
import socket
from pathlib import Path
from typing import Iterator, Sequence

from ..errors import OfflineModelError

# Weight files a timm repo may hold, safest first (timm prefers the same order).
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "open_clip_model.safetensors", "open_clip_pytorch_model.bin")


def hub_timeout() -> float:
    """Seconds to wait for the Hub: ``HUBTRAIN_HUB_TIMEOUT``, else ``HF_HUB_ETAG_TIMEOUT``, else 5."""
    return float(os.environ.get("HUBTRAIN_HUB_TIMEOUT") or os.environ.get("HF_HUB_ETAG_TIMEOUT") or 5)


def _is_true(value: str | None) -> bool:
    return (value or "").strip().upper() in {"1", "ON", "YES", "TRUE"}


def hub_offline() -> bool:
    """Offline if ``huggingface_hub`` thinks so, or if the variable was set after it was imported (tests do that)."""
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE) or _is_true(os.environ.get("HF_HUB_OFFLINE")) or _is_true(
        os.environ.get("TRANSFORMERS_OFFLINE")
    )


def _network_errors() -> tuple[type[BaseException], ...]:
    """Connection failures as raised by whichever HTTP client this huggingface_hub uses."""
    from huggingface_hub.errors import OfflineModeIsEnabled

    errors: list[type[BaseException]] = [OfflineModeIsEnabled, ConnectionError, socket.timeout, TimeoutError]
    for module_name in ("httpx2", "httpx"):
        with contextlib.suppress(ImportError):
            module = __import__(module_name)
            errors.append(module.TransportError)
    with contextlib.suppress(ImportError):
        import requests

        errors += [requests.exceptions.ConnectionError, requests.exceptions.Timeout]
    return tuple(errors)


def offline_error(model: str, repo_id: str | None, why: str) -> OfflineModelError:
    from huggingface_hub import constants

    repo = repo_id or model
    return OfflineModelError(
        f"weights for {model!r} are not in the local Hugging Face cache ({constants.HF_HUB_CACHE}) and {why}; "
        f"either build it without weights (pretrained=False) or populate the cache "
        f"(`hf download {repo}` where the Hub is reachable, copy the cache here) and set HF_HUB_OFFLINE=1."
    )


def hub_file(repo_id: str, filenames: Sequence[str], *, revision: str | None = None, model: str | None = None) -> Path | None:
    """Local path of the first of ``filenames`` the repo has; ``None`` if the Hub says it has none of them."""
    from huggingface_hub import constants, get_hf_file_metadata, hf_hub_download, hf_hub_url, try_to_load_from_cache
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError

    model = model or f"hf-hub:{repo_id}"
    for filename in filenames:
        cached = try_to_load_from_cache(repo_id, filename, revision=revision)
        if isinstance(cached, str):
            return Path(cached)
    if hub_offline():
        raise offline_error(model, repo_id, "HF_HUB_OFFLINE is set")

    timeout = hub_timeout()
    network_errors = _network_errors()
    unreachable = f"the Hub at {constants.ENDPOINT} could not be reached (timeout {timeout:g} s)"
    for filename in filenames:
        try:
            # One HEAD request, no retries: the fast answer to "is it there, and can we reach it at all".
            get_hf_file_metadata(hf_hub_url(repo_id, filename, revision=revision), timeout=timeout)
        except network_errors as err:
            raise offline_error(model, repo_id, f"{unreachable} ({type(err).__name__})") from None
        except EntryNotFoundError:
            continue
        try:
            return Path(hf_hub_download(repo_id, filename, revision=revision, etag_timeout=timeout))
        except (LocalEntryNotFoundError, *network_errors) as err:
            raise offline_error(model, repo_id, f"{unreachable} ({type(err).__name__})") from None
    return None


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


@contextlib.contextmanager
def _socket_timeout(seconds: float) -> Iterator[None]:
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(previous)


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
            raise offline_error(model_name, None, f"HF_HUB_OFFLINE is set (nor is {cached} present)")
        cached.parent.mkdir(parents=True, exist_ok=True)
        try:
            with _socket_timeout(hub_timeout()):
                torch.hub.download_url_to_file(cfg.url, str(cached), progress=True)
        except (OSError, *_network_errors()) as err:
            raise offline_error(model_name, None, f"{cfg.url} could not be fetched ({type(err).__name__})") from None
        return {"file": str(cached)}
    return None
