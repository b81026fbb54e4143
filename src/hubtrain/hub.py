"""Publish models to the Hugging Face Hub: one model or folder, or a whole folder of checkpoints.

Everything goes through ``huggingface_hub``'s own client (``create_repo`` + ``upload_folder``), so what works
against huggingface.co works against any Hub-compatible endpoint (``HF_ENDPOINT``). Rules this module keeps:

- What is uploaded is a folder :mod:`hubtrain.artifacts` wrote or checked: safetensors weights only, checkpoints read
  as data (``hubtrain.load``), the card rendered for the target repo id by the one card builder.
- The token comes from the argument, ``HF_TOKEN``, or ``hf auth login`` (in that order) and never appears in a
  log line, an error message or the model card.
- Errors are one line that says what failed and where (repo, endpoint) and what to do about it.
"""
from __future__ import annotations

import contextlib
import logging
import os
import re
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

from hubtrain.artifacts import CHECKPOINT_SUFFIXES, check_repo_id, infer_model_size, stage_model, write_card
from hubtrain.artifacts import create_model_card  # noqa: F401  (published here too: the seed's import path)
from hubtrain.errors import HubtrainError
from hubtrain.network import network_errors

log = logging.getLogger(__name__)



class HubError(HubtrainError, RuntimeError):
    """A Hub operation failed; the message names the repo and endpoint and never contains the token."""


@dataclass
class PushResult:
    repo_id: str
    url: str
    commit_oid: str | None
    commit_url: str | None
    pr_url: str | None = None
    files: list[str] = field(default_factory=list)


@dataclass
class BatchUploadSummary:
    """What :func:`batch_upload_models` did: one entry per checkpoint, success or failure with its reason."""

    succeeded: list[dict[str, str]] = field(default_factory=list)
    failed: list[dict[str, str]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failed

    def to_dict(self) -> dict[str, Any]:
        return asdict(self) | {"ok": self.ok}

    def __str__(self) -> str:
        lines = [f"uploaded {len(self.succeeded)}, failed {len(self.failed)}"]
        lines += [f"  ok     {s['checkpoint']} -> {s['repo_id']}" for s in self.succeeded]
        lines += [f"  FAILED {f['checkpoint']} -> {f['repo_id']}: {f['error']}" for f in self.failed]
        return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------- token & errors


def resolve_token(token: str | None = None) -> str | None:
    """The token to use: the argument, else ``HF_TOKEN``, else the one saved by ``hf auth login``."""
    if token:
        return token
    from huggingface_hub import get_token

    return get_token()  # reads HF_TOKEN first, then the saved login


def resolve_endpoint(endpoint: str | None = None) -> str:
    from huggingface_hub import constants

    return (endpoint or os.environ.get("HF_ENDPOINT") or constants.ENDPOINT).rstrip("/")


def redact(text: str, token: str | None) -> str:
    if token:
        text = text.replace(token, "hf_***")
    return re.sub(r"hf_[A-Za-z0-9]{20,}", "hf_***", text)


@contextlib.contextmanager
def hub_errors(action: str, repo_id: str, endpoint: str, token: str | None) -> Iterator[None]:
    """Turn ``huggingface_hub`` / network exceptions into one-line :class:`HubError` without the token."""
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

    where = f"{repo_id} at {endpoint}"
    try:
        yield
    except OfflineModeIsEnabled:
        raise HubError(f"{action} {where} failed: HF_HUB_OFFLINE is set; unset it to reach the Hub") from None
    except HfHubHTTPError as err:
        status = err.response.status_code if err.response is not None else None
        detail = redact(str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__, token)
        if status == 401:
            hint = "the token was rejected (HTTP 401); pass a valid token, set HF_TOKEN, or run `hf auth login`"
        elif status == 403:
            hint = f"the token may not write to {repo_id.split('/')[0]!r} (HTTP 403); use a write token for that namespace"
        elif status == 404:
            hint = "not found (HTTP 404); check the repo id"
        else:
            hint = f"HTTP {status}: {detail}"
        raise HubError(redact(f"{action} {where} failed: {hint}", token)) from None
    except network_errors() as err:
        raise HubError(redact(f"{action} {where} failed: cannot reach the Hub ({type(err).__name__}: "
                              f"{str(err).splitlines()[0] if str(err) else 'no answer'}); check the network or HF_ENDPOINT", token)) from None


# ---------------------------------------------------------------------------------------------------- push


def push_to_hub(
    model_or_folder: Any,
    repo_id: str,
    *,
    private: bool = False,
    token: str | None = None,
    commit_message: str = "Upload model with hubtrain",
    create_pr: bool = False,
    endpoint: str | None = None,
    model_card: bool = True,
    metrics: dict[str, float] | None = None,
    metrics_csv: str | os.PathLike | None = None,
    datasets: Sequence[str] | None = None,
    license: str | None = None,
    tags: Sequence[str] | None = None,
    model_size: str | None = None,
    description: str | None = None,
) -> PushResult:
    """Create ``repo_id`` if needed and upload the model (safetensors, config, card, curves) in one commit.

    ``model_or_folder`` is anything with ``save_pretrained`` (every hubtrain task, transformers models) or a folder
    written by it. With ``model_card`` the README is written for ``repo_id`` by :func:`hubtrain.artifacts.write_card`
    (keeping what the folder's card recorded unless new values are given); unchanged files are skipped by the
    client, so pushing again with new metrics commits only the card. Returns the repo URL and the commit.
    """
    from huggingface_hub import HfApi

    check_repo_id(repo_id)
    token = resolve_token(token)
    endpoint = resolve_endpoint(endpoint)
    if not token:
        raise HubError(f"push to {repo_id} at {endpoint} needs a Hugging Face token: pass token=, set HF_TOKEN, "
                       "or run `hf auth login`")
    with tempfile.TemporaryDirectory(prefix="hubtrain-push-") as tmp:
        stage = stage_model(model_or_folder, Path(tmp) / "model")  # the user's folder is left as it is
        if model_card:
            write_card(stage, repo_id, metrics=metrics, metrics_csv=metrics_csv, datasets=datasets, license=license,
                       tags=tags, model_size=model_size, description=description)
        files = sorted(str(p.relative_to(stage)) for p in stage.rglob("*") if p.is_file())
        api = HfApi(endpoint=endpoint, token=token)
        with hub_errors("push to", repo_id, endpoint, token):
            url = api.create_repo(repo_id, private=private, exist_ok=True, token=token)
            info = api.upload_folder(folder_path=stage, repo_id=repo_id, commit_message=commit_message,
                                     create_pr=create_pr, token=token)
    log.info("pushed %s (%d files) to %s", repo_id, len(files), endpoint)
    return PushResult(repo_id=repo_id, url=str(url), commit_oid=getattr(info, "oid", None),
                      commit_url=getattr(info, "commit_url", None), pr_url=getattr(info, "pr_url", None), files=files)


# ---------------------------------------------------------------------------------------------------- checkpoints


def _metrics_csv_near(path: Path) -> Path | None:
    """A Lightning run keeps ``metrics.csv`` in the version folder above ``checkpoints/``."""
    for parent in [path.parent, *list(path.parents)[:3]]:
        candidate = parent / "metrics.csv"
        if candidate.is_file():
            return candidate
    return None


def upload_model_to_hub(
    model_path: str | os.PathLike,
    repo_id: str,
    model_size: str | None = None,
    token: str | None = None,
    private: bool = False,
    *,
    task: str | None = None,
    commit_message: str | None = None,
    endpoint: str | None = None,
    metrics_csv: str | os.PathLike | None = None,
    datasets: Sequence[str] | None = None,
    create_pr: bool = False,
) -> PushResult:
    """Upload one checkpoint (a save_pretrained folder, ``.safetensors``, ``.ckpt`` or ``.pt``) as ``repo_id``.

    Checkpoint files are loaded as data by :func:`hubtrain.load` (``model_size`` names a preset, ``task`` a task
    class) and saved as a safetensors folder first; the card gets the run's ``metrics.csv`` when one is found next
    to the checkpoint.
    """
    from hubtrain.artifacts import load

    path = Path(model_path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    metrics_csv = metrics_csv or _metrics_csv_near(path)
    message = commit_message or f"Upload {path.name} with hubtrain"
    common = dict(private=private, token=token, commit_message=message, endpoint=endpoint, metrics_csv=metrics_csv,
                  datasets=datasets, create_pr=create_pr, model_size=model_size)
    if path.is_dir():
        return push_to_hub(path, repo_id, **common)
    model = load(path, model_size=model_size, task=task)
    common["model_size"] = model_size or (infer_model_size(path.name) if task is None else None)
    return push_to_hub(model, repo_id, **common)


def _checkpoints_in(checkpoint_dir: Path) -> list[Path]:
    items = []
    for p in sorted(checkpoint_dir.iterdir()):
        if p.name.startswith("."):
            continue
        if p.is_dir() and (p / "config.json").is_file():
            items.append(p)
        elif p.is_file() and p.suffix in CHECKPOINT_SUFFIXES and p.suffix != ".bin":
            items.append(p)
    return items


def repo_name_for(path: Path) -> str:
    stem = path.name if path.is_dir() else path.stem
    return re.sub(r"[^\w.-]+", "-", stem).strip("-.").lower().replace("_", "-")


def batch_upload_models(
    checkpoint_dir: str | os.PathLike,
    repo_prefix: str,
    token: str | None = None,
    private: bool = False,
    *,
    model_sizes: dict[str, str] | None = None,
    task: str | None = None,
    endpoint: str | None = None,
    datasets: Sequence[str] | None = None,
) -> BatchUploadSummary:
    """Upload every checkpoint in ``checkpoint_dir`` as its own repo ``{repo_prefix}-{name}``.

    One failure does not stop the others; the summary lists what succeeded (with URLs) and what failed (with
    the one-line reason). Callers (the CLI) exit non-zero when ``summary.ok`` is False.
    """
    folder = Path(checkpoint_dir)
    if not folder.is_dir():
        raise FileNotFoundError(f"checkpoint directory not found: {folder}")
    items = _checkpoints_in(folder)
    if not items:
        raise FileNotFoundError(f"no checkpoints in {folder}: expected save_pretrained folders or .safetensors/.ckpt/.pt files")
    namespace, _, prefix = repo_prefix.partition("/")
    if not namespace or not prefix:
        raise ValueError(f"repo_prefix must look like 'namespace/prefix', got {repo_prefix!r}")
    summary = BatchUploadSummary()
    token = resolve_token(token)
    for item in items:
        name = repo_name_for(item)
        repo_id = f"{repo_prefix}-{name}" if not name.startswith(prefix.lower()) else f"{namespace}/{name}"
        size = (model_sizes or {}).get(item.name)
        try:
            result = upload_model_to_hub(item, repo_id, model_size=size, token=token, private=private, task=task,
                                         endpoint=endpoint, datasets=datasets)
            summary.succeeded.append({"checkpoint": str(item), "repo_id": repo_id, "url": result.url,
                                      "commit": result.commit_oid or ""})
        except (HubError, ValueError, FileNotFoundError, TypeError, OSError) as err:
            summary.failed.append({"checkpoint": str(item), "repo_id": repo_id, "error": redact(str(err), token)})
            log.warning("upload of %s failed: %s", item, redact(str(err), token))
    return summary


__all__ = [
    "BatchUploadSummary",
    "HubError",
    "PushResult",
    "batch_upload_models",
    "create_model_card",
    "push_to_hub",
    "resolve_token",
    "upload_model_to_hub",
]
