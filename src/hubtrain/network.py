"""The one place for hubtrain's network policy: when the Hub may be asked, for how long, and what a failure means.

Rules every caller gets from here:

1. a copy in the local Hugging Face cache is used as it is, without contacting the Hub;
2. with ``HF_HUB_OFFLINE`` (or ``TRANSFORMERS_OFFLINE``) set, nothing else is tried: a missing file is an
   ``OfflineModelError`` at once;
3. otherwise the Hub is asked once, with a short timeout and no retries (``HUBTRAIN_HUB_TIMEOUT``, default 5 s),
   and an unreachable Hub becomes the same ``OfflineModelError`` within seconds, naming the model and the ways out.
"""
from __future__ import annotations

import contextlib
import contextvars
import os
import socket
from pathlib import Path
from typing import Iterator, Sequence

from .errors import OfflineModelError


def hub_timeout() -> float:
    """Seconds to wait for the Hub: ``HUBTRAIN_HUB_TIMEOUT``, else ``HF_HUB_ETAG_TIMEOUT``, else 5."""
    return float(os.environ.get("HUBTRAIN_HUB_TIMEOUT") or os.environ.get("HF_HUB_ETAG_TIMEOUT") or 5)


def _is_true(value: str | None) -> bool:
    return (value or "").strip().upper() in {"1", "ON", "YES", "TRUE"}


_FORCED_OFFLINE: contextvars.ContextVar[str | None] = contextvars.ContextVar("hubtrain_forced_offline", default=None)


@contextlib.contextmanager
def offline(why: str) -> Iterator[None]:
    """Within the block nothing is downloaded, whatever the environment says (``why`` goes into the error): what
    rebuilding from a checkpoint uses, so a checkpoint can never make hubtrain fetch a model the user did not name."""
    token = _FORCED_OFFLINE.set(why)
    try:
        yield
    finally:
        _FORCED_OFFLINE.reset(token)


def offline_reason() -> str:
    return _FORCED_OFFLINE.get() or "HF_HUB_OFFLINE is set"


def hub_offline() -> bool:
    """Offline inside :func:`offline`, if ``huggingface_hub`` thinks so, or if the variable was set after it was
    imported (tests do that)."""
    from huggingface_hub import constants

    return _FORCED_OFFLINE.get() is not None or bool(constants.HF_HUB_OFFLINE) or _is_true(os.environ.get("HF_HUB_OFFLINE")) or _is_true(
        os.environ.get("TRANSFORMERS_OFFLINE")
    )


def network_errors() -> tuple[type[BaseException], ...]:
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
        raise offline_error(model, repo_id, offline_reason())

    timeout = hub_timeout()
    errors = network_errors()
    unreachable = f"the Hub at {constants.ENDPOINT} could not be reached (timeout {timeout:g} s)"
    for filename in filenames:
        try:
            # One HEAD request, no retries: the fast answer to "is it there, and can we reach it at all".
            get_hf_file_metadata(hf_hub_url(repo_id, filename, revision=revision), timeout=timeout)
        except errors as err:
            raise offline_error(model, repo_id, f"{unreachable} ({type(err).__name__})") from None
        except EntryNotFoundError:
            continue
        try:
            return Path(hf_hub_download(repo_id, filename, revision=revision, etag_timeout=timeout))
        except (LocalEntryNotFoundError, *errors) as err:
            raise offline_error(model, repo_id, f"{unreachable} ({type(err).__name__})") from None
    return None


@contextlib.contextmanager
def socket_timeout(seconds: float) -> Iterator[None]:
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(previous)




def hub_snapshot(repo_id: str, *, revision: str | None = None, allow_patterns: Sequence[str] | None = None,
                 model: str | None = None) -> Path:
    """Local folder of a whole Hub repo: the cached snapshot if there is one, else one short-timeout download."""
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    model = model or repo_id
    try:
        return Path(snapshot_download(repo_id, revision=revision, allow_patterns=allow_patterns, local_files_only=True))
    except LocalEntryNotFoundError:
        pass
    if hub_offline():
        raise offline_error(model, repo_id, offline_reason())
    try:
        with socket_timeout(hub_timeout()):
            return Path(snapshot_download(repo_id, revision=revision, allow_patterns=allow_patterns, etag_timeout=hub_timeout()))
    except (LocalEntryNotFoundError, *network_errors()) as err:
        raise offline_error(model, repo_id, f"the Hub at {constants.ENDPOINT} could not be reached ({type(err).__name__})") from None
    except HfHubHTTPError as err:
        status = err.response.status_code if err.response is not None else "?"
        raise FileNotFoundError(f"{model!r}: the Hub answered HTTP {status} for repo {repo_id!r}; check the repo id and your token") from None


__all__ = ["hub_file", "hub_offline", "offline", "hub_snapshot", "hub_timeout", "network_errors", "offline_error", "socket_timeout"]
