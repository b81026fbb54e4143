"""Publish models to the Hugging Face Hub: one model, a folder of checkpoints, and the model card that goes with them.

Everything goes through ``huggingface_hub``'s own client (``create_repo`` + ``upload_folder``), so what works
against huggingface.co works against any Hub-compatible endpoint (``HF_ENDPOINT``). Rules this module keeps:

- Weights are uploaded as safetensors only; checkpoints are read with ``torch.load(weights_only=True)``.
- The token comes from the argument, ``HF_TOKEN``, or ``hf auth login`` (in that order) and never appears in a
  log line, an error message or the model card.
- Errors are one line that says what failed and where (repo, endpoint) and what to do about it.
- The model card is generated from the model itself: parameter counts are measured from the weights, the usage
  snippet is the one that runs for that kind of model, metrics and curves come from the training run.
"""
from __future__ import annotations

import contextlib
import csv
import json
import logging
import math
import os
import re
import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

from hubtrain.errors import HubtrainError
from hubtrain.network import network_errors
from hubtrain.utils import atomic_path, write_text_atomic

log = logging.getLogger(__name__)

WEIGHTS = "model.safetensors"
PICKLED_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
BUFFER_SUFFIXES = ("running_mean", "running_var", "num_batches_tracked")  # BatchNorm statistics in state dicts
TASK_PIPELINES = {
    "ImageClassifier": ("image-classification", "Image Classification"),
    "SemanticSegmentor": ("image-segmentation", "Semantic Segmentation"),
    "ObjectDetector": ("object-detection", "Object Detection"),
    "CausalLMTask": ("text-generation", "Text Generation"),
}


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


# ---------------------------------------------------------------------------------------------------- model folders


def _check_repo_id(repo_id: str) -> None:
    if not re.fullmatch(r"[\w.-]+/[\w.-]+", repo_id or ""):
        raise ValueError(f"repo_id must look like 'namespace/name', got {repo_id!r}")


def _check_folder(folder: Path) -> None:
    if not folder.is_dir():
        raise FileNotFoundError(f"model folder not found: {folder}; pass a folder written by save_pretrained or a model")
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"{folder} has no config.json; is it a save_pretrained folder?")
    weights = list(folder.glob("*.safetensors"))
    pickled = [p.name for p in folder.iterdir() if p.suffix in PICKLED_SUFFIXES]
    if pickled:
        raise ValueError(f"{folder} holds pickled weights {pickled}; hubtrain uploads safetensors only: re-save with "
                         "save_pretrained (or upload_model_to_hub, which converts checkpoints)")
    if not weights:
        raise FileNotFoundError(f"{folder} has no *.safetensors weights; save the model with save_pretrained first")


def canonicalize_safetensors(path: Path) -> None:
    """Rewrite a safetensors header with sorted keys so that equal weights give equal bytes.

    safetensors stores ``__metadata__`` in a hash map, so a file saved twice from the same weights can differ in
    its header order; the Hub client would then re-upload unchanged weights. Only the JSON header is rewritten
    (tensor offsets are relative to the data section and stay valid); the data bytes are copied as they are.
    """
    import struct

    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
        canonical = json.dumps(header, separators=(",", ":"), sort_keys=True).encode()
        canonical += b" " * (-len(canonical) % 8)  # keep the data section 8-byte aligned, as safetensors does
        f.seek(8 + n)
        with atomic_path(path) as tmp, open(tmp, "wb") as out:
            out.write(struct.pack("<Q", len(canonical)))
            out.write(canonical)
            shutil.copyfileobj(f, out, 16 << 20)


def save_for_upload(model: Any, folder: Path) -> None:
    """``model.save_pretrained(folder)`` for tasks and transformers models, safetensors enforced."""
    if not hasattr(model, "save_pretrained"):
        raise TypeError(f"push_to_hub expects a model with save_pretrained (a hubtrain task, a transformers model) or a "
                        f"folder, got {type(model).__name__}")
    try:
        from transformers import PreTrainedModel
    except ImportError:  # pragma: no cover - transformers is a dependency
        PreTrainedModel = ()  # type: ignore[assignment]
    if isinstance(model, PreTrainedModel):
        model.save_pretrained(folder, safe_serialization=True)
    else:
        model.save_pretrained(folder)
    _check_folder(folder)
    for weights in folder.glob("*.safetensors"):
        canonicalize_safetensors(weights)


# ---------------------------------------------------------------------------------------------------- model card


@dataclass
class ModelInfo:
    kind: str  # "hubtrain-task" | "causal-lm" | "transformers" | "timm"
    class_name: str
    config: dict[str, Any]
    total_params: int
    non_embedding_params: int | None
    pipeline_tag: str | None
    library_name: str
    remote_code: bool = False
    has_tokenizer: bool = False


def _safetensors_counts(folder: Path, vocab: int | None) -> tuple[int, int | None]:
    """Parameters counted from the weights themselves (tied tensors are stored once); embeddings for LMs."""
    from safetensors import safe_open

    total, embed = 0, 0
    for file in sorted(folder.glob("*.safetensors")):
        with safe_open(str(file), framework="pt") as f:
            for key in f.keys():
                if key.endswith(BUFFER_SUFFIXES):  # saved state, not parameters
                    continue
                shape = f.get_slice(key).get_shape()
                n = math.prod(shape) if shape else 1
                total += n
                if vocab and shape and shape[0] == vocab and ("embed" in key or "lm_head" in key or "wte" in key):
                    embed += n
    return total, (total - embed if vocab else None)


def describe_folder(folder: Path) -> ModelInfo:
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    vocab = config.get("vocab_size") if isinstance(config.get("vocab_size"), int) else None
    architectures = config.get("architectures") or []
    total, non_embedding = _safetensors_counts(folder, vocab)
    has_tokenizer = (folder / "tokenizer.json").is_file() or (folder / "tokenizer_config.json").is_file()
    if "hubtrain_task" in config:
        task = config["hubtrain_task"]
        pipeline = TASK_PIPELINES.get(task, (None, None))[0]
        return ModelInfo("hubtrain-task", task, config, total, None, pipeline, "hubtrain")
    if "model_type" in config:
        is_lm = any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in architectures)
        return ModelInfo("causal-lm" if is_lm else "transformers", architectures[0] if architectures else config["model_type"],
                         config, total, non_embedding if is_lm else None, "text-generation" if is_lm else None,
                         "transformers", remote_code="auto_map" in config, has_tokenizer=has_tokenizer)
    if "architecture" in config:  # timm's save_for_hf layout
        return ModelInfo("timm", config["architecture"], config, total, None, "image-classification", "timm")
    raise ValueError(f"{folder / 'config.json'} is neither a hubtrain task, a transformers nor a timm config")


def _usage(info: ModelInfo, repo_id: str) -> str:
    """A snippet that runs for this model as published (tests execute it against a downloaded copy)."""
    if info.kind == "hubtrain-task":
        size = (info.config.get("preprocessing") or {}).get("input_size") or [3, 224, 224]
        call = "model.predict(images)" if info.class_name == "ObjectDetector" else "model(images)"
        return "\n".join([
            "import torch",
            f"from hubtrain import {info.class_name}",
            "",
            f'model = {info.class_name}.from_pretrained("{repo_id}").eval()',
            f"images = torch.randn(1, {size[0]}, {size[1]}, {size[2]})  # normalised like the training data",
            "with torch.no_grad():",
            f"    outputs = {call}",
        ])
    if info.kind == "causal-lm":
        remote = ", trust_remote_code=True" if info.remote_code else ""
        lines = ["import torch", "from transformers import AutoModelForCausalLM" + (", AutoTokenizer" if info.has_tokenizer else ""), "",
                 f'model = AutoModelForCausalLM.from_pretrained("{repo_id}"{remote}).eval()']
        if info.has_tokenizer:
            lines += [f'tokenizer = AutoTokenizer.from_pretrained("{repo_id}")',
                      'inputs = tokenizer("def fibonacci(n):", return_tensors="pt")',
                      "output = model.generate(**inputs, max_new_tokens=20, do_sample=False)",
                      "print(tokenizer.decode(output[0]))"]
        else:
            vocab = info.config.get("vocab_size", 256)
            lines += [f"input_ids = torch.randint(0, {vocab}, (1, 8))",
                      "output = model.generate(input_ids, attention_mask=torch.ones_like(input_ids), max_new_tokens=20, do_sample=False)",
                      "print(output[0].tolist())"]
        return "\n".join(lines)
    if info.kind == "timm":
        return "\n".join(["import timm, torch", "", f'model = timm.create_model("hf-hub:{repo_id}", pretrained=True).eval()',
                          "config = timm.data.resolve_data_config({}, model=model)",
                          "with torch.no_grad():", "    logits = model(torch.randn(1, *config['input_size']))"])
    remote = ", trust_remote_code=True" if info.remote_code else ""
    return "\n".join(["from transformers import AutoModel", "", f'model = AutoModel.from_pretrained("{repo_id}"{remote})'])


def read_metrics_csv(path: str | os.PathLike) -> list[dict[str, float]]:
    """Lightning CSVLogger ``metrics.csv`` -> one row per epoch (last logged value of each column in that epoch)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"metrics CSV not found: {path}")
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    per_epoch: dict[int, dict[str, float]] = {}
    for row in rows:
        epoch_raw = row.get("epoch")
        if epoch_raw in (None, ""):
            continue
        epoch = int(float(epoch_raw))
        merged = per_epoch.setdefault(epoch, {"epoch": float(epoch)})
        for key, value in row.items():
            if key and value not in (None, "") and key != "epoch":
                with contextlib.suppress(ValueError):
                    merged[key] = float(value)
    return [per_epoch[e] for e in sorted(per_epoch)]


def plot_training_curves(rows: Sequence[dict[str, float]], path: str | os.PathLike, title: str = "") -> Path | None:
    """One panel per metric family (loss, accuracy, ...) against epoch; PNG written atomically."""
    metrics = sorted({k for r in rows for k in r if k not in ("epoch", "step")})
    if not rows or not metrics:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    families: dict[str, list[str]] = {}
    for key in metrics:
        families.setdefault(key.split("/")[-1].split("_")[0], []).append(key)
    fig, axes = plt.subplots(1, len(families), figsize=(4.5 * len(families), 3.4), squeeze=False)
    for ax, (family, keys) in zip(axes[0], sorted(families.items())):
        for key in keys:
            pts = [(r["epoch"], r[key]) for r in rows if key in r]
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=key)
        ax.set_xlabel("epoch"), ax.set_title(family), ax.legend(fontsize=8), ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, metadata={"Software": None})
    plt.close(fig)
    return path


def create_model_card(
    model_or_folder: Any,
    repo_id: str,
    *,
    output_dir: str | os.PathLike | None = None,
    metrics: dict[str, float] | None = None,
    metrics_csv: str | os.PathLike | None = None,
    datasets: Sequence[str] | None = None,
    dataset_name: str | None = None,
    license: str = "apache-2.0",
    tags: Sequence[str] | None = None,
    model_size: str | None = None,
    description: str | None = None,
) -> Any:
    """Build the ``README.md`` model card (a ``huggingface_hub.ModelCard``) for a model or a saved folder.

    YAML metadata: ``library_name``, ``license``, ``tags``, ``datasets``, ``pipeline_tag`` and the final metrics in
    the model-index format. Body: measured parameter counts, a usage snippet that runs for this kind of model,
    the per-epoch metrics table read from ``metrics_csv`` (a Lightning ``metrics.csv``) and, with
    ``output_dir``, ``training_curves.png`` next to the card (both written atomically).
    """
    from huggingface_hub import EvalResult, ModelCard, ModelCardData

    _check_repo_id(repo_id)
    with contextlib.ExitStack() as stack:
        if isinstance(model_or_folder, (str, os.PathLike)):
            folder = Path(model_or_folder)
            _check_folder(folder)
        else:
            folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="hubtrain-card-")))
            save_for_upload(model_or_folder, folder)
        info = describe_folder(folder)

    rows = read_metrics_csv(metrics_csv) if metrics_csv else []
    final = dict(metrics or {})
    if not final and rows:
        for key in sorted({k for r in rows for k in r}):
            if key.split("/")[0] in ("val", "test"):
                final[key] = next(r[key] for r in reversed(rows) if key in r)
    pipeline = info.pipeline_tag
    task_name = dict(TASK_PIPELINES.values()).get(pipeline or "", pipeline or "custom")
    dataset_label = dataset_name or (datasets[0] if datasets else "custom")
    eval_results = [
        EvalResult(task_type=pipeline or "other", task_name=task_name, dataset_type=dataset_label, dataset_name=dataset_label,
                   dataset_split=key.split("/")[0] if "/" in key else None, metric_type=key.split("/")[-1],
                   metric_name=key, metric_value=round(float(value), 6))
        for key, value in sorted(final.items())
    ]
    all_tags = ["hubtrain", *(["resnet-bk"] if info.config.get("model_type") == "resnet_bk" else []),
                *([info.kind] if info.kind == "timm" else []), *(tags or [])]
    data = ModelCardData(
        library_name=info.library_name, license=license, tags=list(dict.fromkeys(all_tags)),
        datasets=list(datasets) if datasets else None, pipeline_tag=pipeline, model_name=repo_id,
        eval_results=eval_results or None,
    )
    lines = [f"# {repo_id.split('/')[-1]}", ""]
    what = "ResNet-BK, a causal O(N) Green's-function language model" if "resnet-bk" in all_tags else info.kind
    lines.append(description or f"A `{info.class_name}` ({what}) published with hubtrain.")
    lines += ["", "## Model", "", "| | |", "|---|---|", f"| class | `{info.class_name}` |",
              f"| parameters (measured from the weights) | {info.total_params:,} |"]
    if info.non_embedding_params is not None:
        lines.append(f"| non-embedding parameters | {info.non_embedding_params:,} |")
    if model_size:
        lines.append(f"| size preset | {model_size} |")
    if info.config.get("vocab_size"):
        lines.append(f"| vocabulary | {info.config['vocab_size']:,} |")
    lines.append("| weights | safetensors |")
    lines += ["", "## Usage", "", "```python", _usage(info, repo_id), "```"]
    if final:
        lines += ["", "## Results", "", "| metric | value |", "|---|---|"]
        lines += [f"| {k} | {v:.4f} |" for k, v in sorted(final.items())]
    if rows:
        cols = sorted({k for r in rows for k in r if k not in ("epoch", "step")})
        lines += ["", "## Training metrics", "", "| epoch | " + " | ".join(cols) + " |", "|---|" + "---|" * len(cols)]
        for r in rows:
            lines.append(f"| {int(r['epoch'])} | " + " | ".join(f"{r[c]:.4f}" if c in r else "" for c in cols) + " |")
        if output_dir is not None:
            curve = plot_training_curves(rows, Path(output_dir) / "training_curves.png", repo_id)
            if curve is not None:
                lines += ["", "![training curves](training_curves.png)"]
    card = ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(lines) + "\n")
    if output_dir is not None:
        write_text_atomic(Path(output_dir) / "README.md", str(card))
    return card


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
    license: str = "apache-2.0",
    tags: Sequence[str] | None = None,
    model_size: str | None = None,
    description: str | None = None,
) -> PushResult:
    """Create ``repo_id`` if needed and upload the model (safetensors, config, card, curves) in one commit.

    ``model_or_folder`` is anything with ``save_pretrained`` (every hubtrain task, ResNet-BK and other
    transformers models) or a folder written by it. With ``model_card`` the README is (re)generated by
    :func:`create_model_card`; unchanged files are skipped by the client, so pushing again with new metrics
    commits only the card. Returns the repo URL and the commit.
    """
    from huggingface_hub import HfApi

    _check_repo_id(repo_id)
    token = resolve_token(token)
    endpoint = resolve_endpoint(endpoint)
    if not token:
        raise HubError(f"push to {repo_id} at {endpoint} needs a Hugging Face token: pass token=, set HF_TOKEN, "
                       "or run `hf auth login`")
    with tempfile.TemporaryDirectory(prefix="hubtrain-push-") as tmp:
        stage = Path(tmp) / "model"
        if isinstance(model_or_folder, (str, os.PathLike)):
            source = Path(model_or_folder)
            _check_folder(source)
            shutil.copytree(source, stage, ignore=shutil.ignore_patterns(".*"))
            for weights in stage.glob("*.safetensors"):
                canonicalize_safetensors(weights)  # the user's folder is left as it is; only the staged copy changes
        else:
            stage.mkdir()
            save_for_upload(model_or_folder, stage)
        if model_card:
            create_model_card(stage, repo_id, output_dir=stage, metrics=metrics, metrics_csv=metrics_csv,
                              datasets=datasets, license=license, tags=tags, model_size=model_size, description=description)
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


def _read_checkpoint(path: Path) -> dict[str, Any]:
    """``torch.load(weights_only=True)`` with errors that name the file; never runs pickled code."""
    import torch

    try:
        return torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as err:  # corrupt, truncated or pickled-code files all end here
        first = str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__
        raise ValueError(f"cannot read checkpoint {path}: {type(err).__name__}: {first} "
                         "(corrupt, or not a weights-only PyTorch checkpoint)") from None


def _state_dict_of(obj: dict[str, Any], path: Path) -> dict[str, Any]:
    import torch

    for key in ("state_dict", "model_state_dict", "model"):
        if isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise ValueError(f"checkpoint {path} holds no tensors (keys: {sorted(obj)[:8]}); expected a state dict")
    return tensors


def infer_model_size(name: str) -> str | None:
    """The ResNet-BK preset named in a file name: ``resnet_bk_1b.pt`` -> ``"1B"``."""
    from hubtrain.models.resnet_bk import RESNET_BK_PRESETS

    for size in sorted(RESNET_BK_PRESETS, key=len, reverse=True):
        if re.search(rf"(?:^|[_\-.]){re.escape(size.lower())}(?:$|[_\-.])", name.lower()):
            return size
    return None


def load_checkpoint_model(model_path: str | os.PathLike, model_size: str | None = None, task: str | None = None) -> Any:
    """Rebuild a model from a checkpoint file, safely: ``.safetensors``, or ``.ckpt`` / ``.pt`` read weights-only.

    - a ResNet-BK checkpoint (``model_size`` given, or named in the file name): the preset's architecture with the
      checkpoint's weights (and its ``config`` entry, if the checkpoint carries one);
    - a Lightning checkpoint of a hubtrain task: ``task`` names the class (or ``hyper_parameters`` say it).
    """
    import torch

    path = Path(model_path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            raw: dict[str, Any] = {"state_dict": load_file(str(path))}
        except (SafetensorError, OSError) as err:
            raise ValueError(f"cannot read checkpoint {path}: {err} (corrupt safetensors file)") from None
    elif path.suffix in (".ckpt", ".pt", ".pth", ".bin"):
        raw = _read_checkpoint(path)
        if not isinstance(raw, dict):
            raise ValueError(f"checkpoint {path} holds a {type(raw).__name__}, expected a dict of tensors")
    else:
        raise ValueError(f"unsupported checkpoint type {path.suffix!r} for {path}; use .safetensors, .ckpt or .pt")

    hparams = raw.get("hyper_parameters") if isinstance(raw.get("hyper_parameters"), dict) else {}
    task = task or hparams.get("hubtrain_task")
    if task:
        from hubtrain.tasks import task_class
        from hubtrain.tasks.base import BaseTask

        try:
            cls = task_class(task)
        except ValueError as err:
            raise ValueError(f"{path}: {err}") from None
        model = cls(**BaseTask.init_kwargs({k: v for k, v in hparams.items() if k != "hubtrain_task"}))
        model.load_state_dict(_state_dict_of(raw, path))
        return model.eval()

    model_size = model_size or infer_model_size(path.name)
    if model_size is None and not isinstance(raw.get("config"), dict):
        raise ValueError(f"cannot tell which model {path} holds: pass model_size (a ResNet-BK preset such as '1M') "
                         "or task (a hubtrain task class such as 'ImageClassifier')")
    from hubtrain.models.resnet_bk import ResNetBKConfig, ResNetBKForCausalLM, create_resnet_bk_for_hf

    state = _state_dict_of(raw, path)
    state = {k.removeprefix("model.") if k.startswith("model.model.") or k.startswith("model.lm_head") else k: v
             for k, v in state.items()}
    if isinstance(raw.get("config"), dict):
        model = ResNetBKForCausalLM(ResNetBKConfig(**raw["config"]))
    else:
        vocab = next((v.shape[0] for k, v in state.items() if k.endswith("embed_tokens.weight")), None)
        model = create_resnet_bk_for_hf(model_size, **({"vocab_size": int(vocab)} if vocab else {}))
    missing, unexpected = model.load_state_dict(state, strict=False)
    tied = {"lm_head.weight"} if getattr(model.config, "tie_word_embeddings", False) else set()
    if set(missing) - tied or unexpected:
        raise ValueError(f"checkpoint {path} does not match ResNet-BK {model_size}: missing {sorted(set(missing) - tied)[:3]}, "
                         f"unexpected {sorted(unexpected)[:3]}; check model_size")
    return model.eval().to(torch.float32)


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

    Checkpoints are converted to a safetensors ``save_pretrained`` folder first (read with
    ``weights_only=True``); the card gets the run's ``metrics.csv`` when one is found next to the checkpoint.
    """
    path = Path(model_path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    metrics_csv = metrics_csv or _metrics_csv_near(path)
    message = commit_message or f"Upload {path.name} with hubtrain"
    common = dict(private=private, token=token, commit_message=message, endpoint=endpoint, metrics_csv=metrics_csv,
                  datasets=datasets, create_pr=create_pr, model_size=model_size)
    if path.is_dir():
        return push_to_hub(path, repo_id, **common)
    model = load_checkpoint_model(path, model_size=model_size, task=task)
    common["model_size"] = model_size or infer_model_size(path.name) if task is None else model_size
    return push_to_hub(model, repo_id, **common)


def _checkpoints_in(checkpoint_dir: Path) -> list[Path]:
    items = []
    for p in sorted(checkpoint_dir.iterdir()):
        if p.name.startswith("."):
            continue
        if p.is_dir() and (p / "config.json").is_file():
            items.append(p)
        elif p.is_file() and p.suffix in (".safetensors", ".ckpt", ".pt", ".pth"):
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
    "load_checkpoint_model",
    "push_to_hub",
    "read_metrics_csv",
    "resolve_token",
    "upload_model_to_hub",
]
