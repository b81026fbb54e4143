"""The one room for artefacts: the folder a task saves to and loads from, the card that describes it, and the
metrics and training curves of the run that made it.

Every task saves through :func:`save_task` and every path a user points hubtrain at (a task folder, a
transformers or timm folder, a Lightning checkpoint, a weights file, a Hub repo id) loads through :func:`load`.
Tasks declare what is theirs as class data, timm-style (see ``BaseTask``): ``hub_layout``, ``pipeline_tag``,
``usage_call``, ``export_tolerance``, ``export_check_argmax``; nothing here tests class names.

Folder layouts:

- ``"hubtrain"``: ``model.safetensors`` (the task's whole state), ``config.json`` (``hubtrain_task``, the init
  arguments, labels, preprocessing, backbone spec), ``README.md``;
- ``"transformers"``: the language model's own ``save_pretrained`` folder (``config.json`` with ``model_type``,
  safetensors weights, remote-code files where the model ships them) and its tokenizer, plus ``README.md``.

Both get ``training_curves.png`` and a metrics table in the card when the run that trained them is known.
Folders are written to a sibling temporary folder and swapped in, so a reader sees the old folder or the new one.
Loading treats every file as data: safetensors or ``torch.load(weights_only=True)``, no pickled code, and no
remote code unless the caller passes ``trust_remote_code=True``.
"""
from __future__ import annotations

import contextlib
import csv
import json
import math
import os
import re
import shutil
import struct
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from hubtrain.utils import atomic_dir, atomic_path, write_text_atomic

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"
CARD_NAME = "README.md"
LAYOUT_KEY = "hubtrain_weights_format"  # "timm" / "transformers": the weights use that library's keys
CURVES_NAME = "training_curves.png"
METRICS_NAME = "metrics.csv"
PICKLED_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
CHECKPOINT_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth", ".bin")
BUFFER_SUFFIXES = ("running_mean", "running_var", "num_batches_tracked")  # BatchNorm state, not parameters
SPLITS = {"train": "train", "val": "validation", "test": "test"}  # logged stage -> the dataset split it ran on
TASK_NAMES = {
    "image-classification": "Image Classification",
    "image-segmentation": "Semantic Segmentation",
    "object-detection": "Object Detection",
    "text-generation": "Text Generation",
}


# ---------------------------------------------------------------------------------------------------- run metrics


@dataclass
class RunMetrics:
    """What a Lightning ``metrics.csv`` recorded: one dict per logged row (with ``step`` and ``epoch``)."""

    rows: list[dict[str, float]] = field(default_factory=list)

    def final(self) -> dict[str, float]:
        """The last logged value of every validation / test metric."""
        out: dict[str, float] = {}
        for row in self.rows:
            out.update({k: v for k, v in row.items() if k.split("/")[0] in ("val", "test")})
        return out

    def per_epoch(self) -> list[dict[str, float]]:
        """One row per epoch with the last value of each metric in it (the card's table)."""
        merged: dict[int, dict[str, float]] = {}
        for row in self.rows:
            if "epoch" in row:
                merged.setdefault(int(row["epoch"]), {}).update({k: v for k, v in row.items() if k != "step"})
        return [merged[e] for e in sorted(merged)]

    def curves(self) -> dict[str, dict[str, dict[float, float]]]:
        """``{metric: {stage: {step: value}}}`` for :func:`plot_curves` ("train/loss" -> metric "loss", stage "train")."""
        panels: dict[str, dict[str, dict[float, float]]] = defaultdict(lambda: defaultdict(dict))
        for row in self.rows:
            for key, value in row.items():
                if key in ("epoch", "step") or "step" not in row:
                    continue
                stage, metric = split_metric(key)
                panels[metric][stage][row["step"]] = value
        return {m: dict(s) for m, s in panels.items()}


def split_metric(key: str) -> tuple[str, str]:
    """``"val/accuracy"`` -> ``("val", "accuracy")``; ``"train_loss_epoch"`` -> ``("train", "loss")``."""
    for prefix in ("train/", "val/", "test/", "train_", "val_", "test_"):
        if key.startswith(prefix):
            return prefix[:-1], key[len(prefix):].removesuffix("_epoch").removesuffix("_step")
    return "", key.removesuffix("_epoch")


def read_metrics(path: str | os.PathLike) -> RunMetrics:
    """A Lightning ``metrics.csv`` (or the first one under a run folder); empty when there is none."""
    path = Path(path)
    if path.is_dir():
        found = [path / "metrics.csv"] if (path / "metrics.csv").is_file() else sorted(path.rglob("metrics.csv"))
        if not found:
            return RunMetrics()
        path = found[0]
    elif not path.is_file():
        raise FileNotFoundError(f"metrics CSV not found: {path}")
    rows = []
    with open(path, newline="", encoding="utf-8") as f:
        for raw in csv.DictReader(f):
            row = {}
            for key, value in raw.items():
                if key and value not in (None, ""):
                    with contextlib.suppress(ValueError):
                        row[key] = float(value)
            if row:
                rows.append(row)
    return RunMetrics(rows)


def plot_curves(panels: dict[str, dict[str, dict[float, float]]], path: str | os.PathLike, *, x_label: str = "step",
                title: str = "") -> Path | None:
    """One panel per metric (loss first), one line per stage (train, val, ...); PNG written atomically.

    ``panels`` is ``{metric: {stage: {x: value}}}``; returns None when there is nothing to draw.
    """
    names = sorted((n for n in panels if any(panels[n].values())), key=lambda n: (n != "loss", n))
    if not names:
        return None
    # A bare Figure renders with Agg and leaves pyplot's global backend alone (notebooks keep theirs).
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    cols = min(3, len(names))
    rows = math.ceil(len(names) / cols)
    fig = Figure(figsize=(4.5 * cols, 3.4 * rows))
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax, name in zip(axes.flat, names):
        for stage, series in sorted(panels[name].items()):
            xs = sorted(series)
            ax.plot(xs, [series[x] for x in xs], marker="o" if len(xs) < 40 else None, lw=1, label=stage or name)
        ax.set(title=name, xlabel=x_label)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    for ax in list(axes.flat)[len(names):]:
        ax.axis("off")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100, metadata={"Software": None})
    return path


# ---------------------------------------------------------------------------------------------------- describing a folder


@dataclass
class FolderInfo:
    """What a saved folder holds, read from its files: what the card, the loader and the exporters need."""

    kind: str  # "task" | "causal-lm" | "transformers" | "timm"
    class_name: str
    config: dict[str, Any]
    total_params: int
    non_embedding_params: int | None
    pipeline_tag: str | None
    library_name: str
    backbone_library: str | None = None  # where the backbone came from: "timm" | "transformers"
    base_model: str | None = None  # a Hub repo id the weights started from
    remote_code: bool = False
    has_tokenizer: bool = False
    usage_call: str = "model(images)"
    library_format: str | None = None  # "timm" / "transformers": a task folder that library's loader reads too

    @property
    def model_type(self) -> str | None:
        return self.config.get("model_type")


def read_config(folder: Path) -> dict[str, Any]:
    path = folder / CONFIG_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{folder} has no {CONFIG_NAME}; give a folder written by save_pretrained")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON ({err.msg} at line {err.lineno}); the folder is corrupt") from None


def _parameter_counts(folder: Path, vocab: int | None) -> tuple[int, int | None]:
    """Parameters counted from the weights themselves (tied tensors are stored once); embeddings for LMs."""
    from safetensors import SafetensorError, safe_open

    total, embed = 0, 0
    for file in sorted(folder.glob("*.safetensors")):
        try:
            with safe_open(str(file), framework="pt") as f:
                for key in f.keys():
                    if key.endswith(BUFFER_SUFFIXES):
                        continue
                    shape = f.get_slice(key).get_shape()
                    n = math.prod(shape) if shape else 1
                    total += n
                    if vocab and shape and shape[0] == vocab and any(s in key for s in ("embed", "lm_head", "wte")):
                        embed += n
        except (SafetensorError, OSError) as err:
            raise ValueError(f"cannot read {file}: {err} (corrupt or truncated safetensors file); re-save the model") from None
    return total, (total - embed if vocab else None)


def _backbone_origin(spec: dict[str, Any] | None) -> tuple[str | None, str | None]:
    """(library, Hub repo id) of a saved backbone spec."""
    if not spec:
        return None, None
    library = "transformers" if spec.get("kind") == "transformers" or str(spec.get("model_name", "")).startswith("hf:") else "timm"
    source = str(spec.get("source") or spec.get("model_name") or "")
    repo = source.removeprefix("hf-hub:").removeprefix("hf:").split("@")[0]
    return library, (repo if re.fullmatch(r"[\w.-]+/[\w.-]+", repo) else None)


def describe(folder: str | os.PathLike) -> FolderInfo:
    """Read a saved folder: hubtrain task, transformers model (causal LM or not) or timm model."""
    folder = Path(folder)
    config = read_config(folder)
    vocab = config.get("vocab_size") if isinstance(config.get("vocab_size"), int) else None
    total, non_embedding = _parameter_counts(folder, vocab)
    has_tokenizer = (folder / "tokenizer.json").is_file() or (folder / "tokenizer_config.json").is_file()
    if "hubtrain_task" in config:
        from hubtrain.tasks import task_class

        cls = task_class(config["hubtrain_task"])
        library, base_model = _backbone_origin(config.get("backbone"))
        return FolderInfo("task", cls.__name__, config, total, None, cls.pipeline_tag, "hubtrain",
                          backbone_library=library, base_model=base_model, usage_call=cls.usage_call,
                          library_format=config.get(LAYOUT_KEY))
    if "model_type" in config:
        architectures = config.get("architectures") or []
        is_lm = any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in architectures)
        name_or_path = str(config.get("_name_or_path") or "")
        return FolderInfo("causal-lm" if is_lm else "transformers", architectures[0] if architectures else config["model_type"],
                          config, total, non_embedding if is_lm else None, "text-generation" if is_lm else None,
                          "transformers", backbone_library="transformers",
                          base_model=name_or_path if re.fullmatch(r"[\w.-]+/[\w.-]+", name_or_path) else None,
                          remote_code="auto_map" in config, has_tokenizer=has_tokenizer)
    if "architecture" in config:  # timm's save_for_hf layout
        return FolderInfo("timm", config["architecture"], config, total, None, "image-classification", "timm",
                          backbone_library="timm")
    raise ValueError(f"{folder / CONFIG_NAME} is neither a hubtrain task, a transformers nor a timm config")


# ---------------------------------------------------------------------------------------------------- the card


def usage_snippet(info: FolderInfo, repo_id: str) -> str:
    """A snippet that runs for this model as published (tests execute it against a downloaded copy)."""
    if info.kind == "task":
        size = (info.config.get("preprocessing") or {}).get("input_size") or [3, 224, 224]
        return "\n".join([
            "import torch",
            f"from hubtrain import {info.class_name}",
            "",
            f'model = {info.class_name}.from_pretrained("{repo_id}").eval()',
            f"images = torch.randn(1, {size[0]}, {size[1]}, {size[2]})  # normalised like the training data",
            "with torch.no_grad():",
            f"    outputs = {info.usage_call}",
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


def library_snippets(info: FolderInfo, repo_id: str) -> list[tuple[str, str]]:
    """(heading, code or sentence) for loading a folder without hubtrain, and with hubtrain where the main
    snippet is the library's: what the card's Usage section adds after its first snippet."""
    out: list[tuple[str, str]] = []
    if info.library_format == "timm":
        out.append(("With timm (no hubtrain needed)", "\n".join([
            "import timm, torch", "from PIL import Image", "",
            f'model = timm.create_model("hf-hub:{repo_id}", pretrained=True).eval()',
            "transform = timm.data.create_transform(**timm.data.resolve_data_config({}, model=model))",
            "labels = model.pretrained_cfg['label_names']",
            "with torch.no_grad():",
            '    probs = model(transform(Image.open("image.png").convert("RGB")).unsqueeze(0)).softmax(-1)',
            "print(labels[int(probs.argmax())])"])))
    if info.library_format in ("timm", "transformers"):
        out.append(("With transformers (no hubtrain needed)", "\n".join([
            "from transformers import pipeline", "",
            f'classifier = pipeline("image-classification", model="{repo_id}")',
            'print(classifier("image.png", top_k=5))'])))
    if info.kind == "task" and info.library_format is None:
        out.append(("Without hubtrain", f"No timm or transformers class reproduces this `{info.class_name}` "
                    f"(a {info.backbone_library or 'hubtrain'} backbone with hubtrain's own head), so it loads with "
                    "hubtrain only (`pip install hubtrain`), as above."))
    if info.kind == "causal-lm":
        remote = ", trust_remote_code=True" if info.remote_code else ""
        if info.has_tokenizer:
            out.append(("With the transformers pipeline", "\n".join([
                "from transformers import pipeline", "",
                f'generator = pipeline("text-generation", model="{repo_id}"{remote})',
                'print(generator("def fibonacci(n):", max_new_tokens=20, do_sample=False)[0]["generated_text"])'])))
        out.append(("With hubtrain", "\n".join([
            "import hubtrain", "", f'task = hubtrain.load("{repo_id}")  # a CausalLMTask: model + tokenizer',
            "# or on the command line:", f'#   hubtrain generate {repo_id.split("/")[-1]} --prompt "def main("',
            f'#   hubtrain serve {repo_id.split("/")[-1]}'])))
    return out


def model_card(
    folder: str | os.PathLike,
    repo_id: str,
    *,
    metrics: dict[str, float] | None = None,
    run: RunMetrics | None = None,
    datasets: Sequence[str] | None = None,
    dataset_name: str | None = None,
    license: str = "apache-2.0",
    tags: Sequence[str] | None = None,
    model_size: str | None = None,
    description: str | None = None,
    hyperparameters: dict[str, Any] | None = None,
    curves: bool = False,
) -> Any:
    """The ``README.md`` model card (a ``huggingface_hub.ModelCard``) of a saved folder: the one card builder.

    YAML metadata: ``library_name``, ``license``, ``tags`` (hubtrain, the backbone's library, the model type),
    ``datasets``, ``pipeline_tag``, ``base_model`` and the final metrics in the model-index format. Body: parameter
    counts measured from the weights, a usage snippet that runs for this kind of model, the results, the per-epoch
    metrics of ``run``, the hyper-parameters, and the curves image when ``curves`` (already in the folder).
    """
    from huggingface_hub import EvalResult, ModelCard, ModelCardData

    info = describe(folder)
    final = dict(metrics) if metrics else (run.final() if run else {})
    pipeline = info.pipeline_tag
    dataset_label = dataset_name or (datasets[0] if datasets else "custom")
    eval_results = [
        EvalResult(task_type=pipeline or "other", task_name=TASK_NAMES.get(pipeline or "", pipeline or "custom"),
                   dataset_type=dataset_label, dataset_name=dataset_label,
                   dataset_split=SPLITS.get(split_metric(key)[0]), metric_type=split_metric(key)[1],
                   metric_name=key, metric_value=round(float(value), 6))
        for key, value in sorted(final.items())
    ]
    all_tags = ["hubtrain", *([info.backbone_library] if info.backbone_library else []),
                *([info.model_type.replace("_", "-")] if info.model_type else []), *(tags or [])]
    data = ModelCardData(
        library_name=info.library_format or info.library_name, license=license, tags=list(dict.fromkeys(all_tags)),
        datasets=list(datasets) if datasets else None, pipeline_tag=pipeline, model_name=repo_id,
        base_model=info.base_model, eval_results=eval_results or None,
    )
    lines = [f"# {repo_id.split('/')[-1]}", ""]
    lines.append(description or f"A `{info.class_name}` ({info.kind}) trained and published with hubtrain.")
    lines += ["", "## Model", "", "| | |", "|---|---|", f"| class | `{info.class_name}` |",
              f"| parameters (measured from the weights) | {info.total_params:,} |"]
    if info.non_embedding_params is not None:
        lines.append(f"| non-embedding parameters | {info.non_embedding_params:,} |")
    if model_size:
        lines.append(f"| size preset | {model_size} |")
    spec = info.config.get("backbone") or {}
    if spec.get("model_name"):
        lines.append(f"| backbone | `{spec['model_name']}` ({info.backbone_library}) |")
    if info.config.get("vocab_size"):
        lines.append(f"| vocabulary | {info.config['vocab_size']:,} |")
    lines.append("| weights | safetensors |")
    lines += ["", "## Usage", "", "```python", usage_snippet(info, repo_id), "```"]
    for heading, text in library_snippets(info, repo_id):
        lines += ["", f"### {heading}", ""] + (["```python", text, "```"] if "\n" in text else [text])
    if final:
        lines += ["", "## Results", "", "| metric | value |", "|---|---|"]
        lines += [f"| {k} | {v:.4f} |" for k, v in sorted(final.items())]
    epochs = run.per_epoch() if run else []
    if epochs:
        cols = sorted({k for r in epochs for k in r if k != "epoch"})
        lines += ["", "## Training metrics", "", "| epoch | " + " | ".join(cols) + " |", "|---|" + "---|" * len(cols)]
        for r in epochs:
            lines.append(f"| {int(r['epoch'])} | " + " | ".join(f"{r[c]:.4f}" if c in r else "" for c in cols) + " |")
    if curves:
        lines += ["", f"![training curves]({CURVES_NAME})"]
    hp = hyperparameters if hyperparameters is not None else info.config.get("init_args")
    if hp:
        lines += ["", "## Hyper-parameters", "", "```json", json.dumps(hp, indent=2, sort_keys=True, default=str), "```"]
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(lines) + "\n")


def _card_inputs(readme: Path) -> dict[str, Any]:
    """What an earlier card of the folder recorded (metrics, datasets, license, tags), read with huggingface_hub's
    own parser, so a card written again for a new repo id keeps it."""
    if not readme.is_file():
        return {}
    from huggingface_hub import ModelCard

    data = ModelCard.load(readme).data
    results = data.eval_results or []
    return {k: v for k, v in {
        "metrics": {r.metric_name or r.metric_type: r.metric_value for r in results} or None,
        "datasets": data.datasets, "dataset_name": results[0].dataset_name if results else None,
        "license": data.license, "tags": data.tags, "hyperparameters": _card_hyperparameters(readme),
    }.items() if v}


def _card_hyperparameters(readme: Path) -> dict[str, Any] | None:
    """The hyper-parameters an earlier card listed (a folder in a library's own layout keeps them nowhere else)."""
    found = re.search(r"## Hyper-parameters\n\n```json\n(.*?)\n```", readme.read_text(encoding="utf-8"), re.S)
    try:
        return json.loads(found.group(1)) if found else None
    except json.JSONDecodeError:
        return None


def write_card(folder: str | os.PathLike, repo_id: str | None = None, *, metrics_csv: str | os.PathLike | None = None,
               **card: Any) -> Any:
    """Write ``README.md`` into a saved folder (and ``training_curves.png`` when the folder has the run's metrics);
    return the card.

    ``metrics_csv`` (a Lightning ``metrics.csv``) is copied into the folder as ``metrics.csv``, the run record the
    card's table and curves come from. What an earlier card recorded (metrics, datasets, license, tags) is kept
    unless ``card`` gives new values, so pushing a saved folder under its repo id loses nothing.
    """
    folder = Path(folder)
    if metrics_csv is not None:
        read_metrics(metrics_csv)  # a missing or unreadable CSV fails here, before anything is written
        with atomic_path(folder / METRICS_NAME) as tmp:
            shutil.copyfile(metrics_csv, tmp)
    run = read_metrics(folder / METRICS_NAME) if (folder / METRICS_NAME).is_file() else None
    inputs = {**_card_inputs(folder / CARD_NAME), **{k: v for k, v in card.items() if v is not None}}
    has_curves = bool(run and plot_curves(run.curves(), folder / CURVES_NAME, title=repo_id or folder.name))
    text = model_card(folder, repo_id or folder.name, run=run, curves=has_curves, **inputs)
    write_text_atomic(folder / CARD_NAME, str(text))
    return text


def create_model_card(model_or_folder: Any, repo_id: str, *, output_dir: str | os.PathLike | None = None,
                      metrics_csv: str | os.PathLike | None = None, **card: Any) -> Any:
    """The card of a model (anything with ``save_pretrained``) or a saved folder, as published under ``repo_id``.

    With ``output_dir`` the card (and ``training_curves.png``, when ``metrics_csv`` is given) is written there too.
    ``card``: ``metrics``, ``datasets``, ``dataset_name``, ``license``, ``tags``, ``model_size``, ``description``.
    """
    import tempfile

    check_repo_id(repo_id)
    with tempfile.TemporaryDirectory(prefix="hubtrain-card-") as tmp:
        stage = Path(tmp) / "model"
        stage_model(model_or_folder, stage)
        text = write_card(stage, repo_id, metrics_csv=metrics_csv, **card)
        if output_dir is not None:
            Path(output_dir).mkdir(parents=True, exist_ok=True)
            for name in (CARD_NAME, CURVES_NAME):
                if (stage / name).is_file():
                    shutil.copyfile(stage / name, Path(output_dir) / name)
    return text


def check_repo_id(repo_id: str) -> None:
    if not re.fullmatch(r"[\w.-]+/[\w.-]+", repo_id or ""):
        raise ValueError(f"repo_id must look like 'namespace/name', got {repo_id!r}")


def check_folder(folder: Path) -> None:
    """A folder hubtrain may publish: a config, safetensors weights, and no pickled files."""
    if not folder.is_dir():
        raise FileNotFoundError(f"model folder not found: {folder}; pass a folder written by save_pretrained or a model")
    if not (folder / CONFIG_NAME).is_file():
        raise FileNotFoundError(f"{folder} has no {CONFIG_NAME}; is it a save_pretrained folder?")
    pickled = [p.name for p in folder.iterdir() if p.suffix in PICKLED_SUFFIXES]
    if pickled:
        raise ValueError(f"{folder} holds pickled weights {pickled}; hubtrain uploads safetensors only: re-save with "
                         "save_pretrained (or upload_model_to_hub, which converts checkpoints)")
    if not list(folder.glob("*.safetensors")):
        raise FileNotFoundError(f"{folder} has no *.safetensors weights; save the model with save_pretrained first")


def stage_model(model_or_folder: Any, stage: Path) -> Path:
    """A publishable copy of a model or a saved folder in ``stage`` (safetensors only, canonical headers)."""
    if isinstance(model_or_folder, (str, os.PathLike)):
        source = Path(model_or_folder)
        check_folder(source)
        shutil.copytree(source, stage, ignore=shutil.ignore_patterns(".*"))
    elif hasattr(model_or_folder, "hub_layout"):
        save_task(model_or_folder, stage)
    elif hasattr(model_or_folder, "save_pretrained"):
        from transformers import PreTrainedModel

        kwargs = {"safe_serialization": True} if isinstance(model_or_folder, PreTrainedModel) else {}
        model_or_folder.save_pretrained(stage, **kwargs)
    else:
        raise TypeError(f"expected a model with save_pretrained (a hubtrain task, a transformers model) or a folder, "
                        f"got {type(model_or_folder).__name__}")
    check_folder(stage)
    for weights in stage.glob("*.safetensors"):
        canonicalize_safetensors(weights)
    return stage


# ---------------------------------------------------------------------------------------------------- saving


def canonicalize_safetensors(path: Path) -> None:
    """Rewrite a safetensors header with sorted keys so that equal weights give equal bytes.

    safetensors stores ``__metadata__`` in a hash map, so a file saved twice from the same weights can differ in
    its header order, and the Hub client would upload unchanged weights again. Only the JSON header is rewritten
    (tensor offsets are relative to the data section); the data bytes are copied as they are.
    """
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


def _run_dir_of(task: Any) -> Path | None:
    trainer = getattr(task, "_trainer", None)
    run_dir = (getattr(trainer, "run_dir", None) or getattr(trainer, "log_dir", None)) if trainer is not None else None
    return Path(run_dir) if run_dir else None


def _dataset_of(task: Any) -> str | None:
    """The name of the data set the attached trainer's data module read (its ``dataset_name``), if any."""
    trainer = getattr(task, "_trainer", None)
    name = getattr(getattr(trainer, "datamodule", None), "dataset_name", None) if trainer is not None else None
    return name if isinstance(name, str) and name else None


def _metrics_csv_in(run_dir: Path | None) -> Path | None:
    if run_dir is None:
        return None
    found = [run_dir / METRICS_NAME] if (run_dir / METRICS_NAME).is_file() else sorted(run_dir.rglob(METRICS_NAME))
    return found[0] if found else None


def library_weights(task: Any) -> tuple[Any, dict[str, Any]] | None:
    """(format, state dict in the library's keys) when ``task.library_format()`` holds every weight of the task and
    the library's model, given them, computes the same outputs on a random batch; None otherwise."""
    import torch

    fmt = task.library_format()
    if fmt is None:
        return None
    own = task.state_dict()
    if set(own) != set(fmt.keys):
        return None
    state = {fmt.keys[k]: v.detach().cpu().contiguous() for k, v in own.items()}
    try:
        fmt.model.load_state_dict(state, strict=True)
    except RuntimeError:
        return None
    size = (task.hub_config().get("preprocessing") or {}).get("input_size") or [3, 224, 224]
    images = torch.randn(2, *size, generator=torch.Generator().manual_seed(0))
    was_training = task.training
    task.eval()
    fmt.model.eval()
    try:
        with torch.no_grad():
            ours = task(images.to(task.device)).float().cpu()
            theirs = fmt.model(images)
    finally:
        task.train(was_training)
    theirs = getattr(theirs, "logits", theirs).float()
    if theirs.shape != ours.shape or not torch.allclose(theirs, ours, rtol=1e-4, atol=1e-5):
        return None
    return fmt, state


def save_task(task: Any, folder: str | os.PathLike, *, metrics: dict[str, float] | None = None,
              run_dir: str | os.PathLike | None = None, **card: Any) -> Path:
    """Write a task's folder in its ``hub_layout``, with its card and, when the run is known, its metrics and curves.

    ``run_dir`` (default: the attached trainer's run directory) supplies ``metrics.csv``; ``metrics`` default to
    the trainer's last validation / test values; ``card`` goes to :func:`model_card` (``datasets``, ``license``...).
    """
    folder = Path(folder)
    run_dir = Path(run_dir) if run_dir is not None else _run_dir_of(task)
    metrics = metrics if metrics is not None else task.known_metrics()
    with atomic_dir(folder) as tmp:
        if task.hub_layout == "transformers":
            task.model.save_pretrained(tmp)
            if getattr(task, "tokenizer", None) is not None:
                task.tokenizer.save_pretrained(tmp)
        else:
            from safetensors.torch import save_file, save_model

            config = task.hub_config()
            library = library_weights(task)
            if library is not None:  # the library's own format, with hubtrain's keys beside the library's
                fmt, state = library
                config = {**fmt.config, **config, LAYOUT_KEY: fmt.library}
            text = json.dumps(config, indent=2)  # fails here, before any file, if not JSON
            if library is not None:
                save_file(state, str(tmp / WEIGHTS_NAME), metadata={"format": "pt"})
                for name, content in fmt.files.items():
                    (tmp / name).write_text(content, encoding="utf-8")
            else:
                save_model(task, str(tmp / WEIGHTS_NAME), metadata={"format": "pt"})
            (tmp / CONFIG_NAME).write_text(text + "\n", encoding="utf-8")
        for weights in tmp.glob("*.safetensors"):
            canonicalize_safetensors(weights)
        dataset = _dataset_of(task)
        if dataset and not card.get("datasets"):
            card["datasets"] = [dataset]
        card.setdefault("hyperparameters", task.init_args)
        write_card(tmp, card.pop("repo_id", None) or folder.name, metrics_csv=_metrics_csv_in(run_dir),
                   metrics=metrics or None, **card)
    return folder


# ---------------------------------------------------------------------------------------------------- loading


def _is_repo_id(text: str) -> bool:
    return bool(re.fullmatch(r"[\w.-]+/[\w.-]+(@[\w./-]+)?", text)) and not text.startswith((".", "/", "~"))


def resolve_folder(source: str | os.PathLike, *, revision: str | None = None) -> Path:
    """A local folder for ``source``: the folder itself, or the Hub repo's cached (else downloaded) snapshot."""
    path = Path(source).expanduser()
    if path.exists():
        return path
    text = str(source)
    if not _is_repo_id(text):
        raise FileNotFoundError(f"model not found: {text} is not a folder, a file or a Hub repo id 'org/name'; "
                                "check the path")
    from hubtrain.network import hub_snapshot

    repo_id, _, rev = text.partition("@")
    return hub_snapshot(repo_id, revision=revision or rev or None,
                        allow_patterns=["*.json", "*.safetensors", "*.txt", "*.model", "*.py", CARD_NAME])


def load(
    source: str | os.PathLike,
    *,
    revision: str | None = None,
    trust_remote_code: bool = False,
    model_size: str | None = None,
    task: str | None = None,
    map_location: str = "cpu",
    **overrides: Any,
) -> Any:
    """Load anything a user points hubtrain at, in eval mode; the one loader behind ``from_pretrained``, ``export``,
    ``push``, ``generate`` and ``hubconf``.

    - a task folder (``config.json`` with ``hubtrain_task``) -> that task, its weights loaded;
    - a transformers causal-LM folder -> a ``CausalLMTask`` around the model and its tokenizer; another
      transformers folder -> the ``AutoModel``; a timm folder -> the timm model;
    - a Lightning checkpoint (``.ckpt``) -> its task, rebuilt from the hyper-parameters it stores;
    - a weights file (``.safetensors``, ``.pt``) -> ``model_size`` names a preset of one of hubtrain's language
      models (``"1M"``), or ``task`` the task class of a checkpoint;
    - a Hub repo id ``"org/name"`` -> its snapshot from the local cache, else one short download (offline-safe).

    ``overrides`` replace saved task init arguments. Remote code runs only with ``trust_remote_code=True``.
    """
    path = resolve_folder(source, revision=revision)
    if path.is_file():
        return load_checkpoint(path, model_size=model_size, task=task, **overrides)
    info = describe(path)
    if info.kind == "task":
        return load_task_folder(path, info, map_location=map_location, **overrides)
    if info.kind == "causal-lm":
        from hubtrain.tasks.causal_lm import CausalLMTask

        return CausalLMTask.from_folder(path, trust_remote_code=trust_remote_code, **overrides).eval()
    if info.kind == "transformers":
        from transformers import AutoModel

        from hubtrain.models import native_model_types

        remote = trust_remote_code and info.model_type not in native_model_types()
        try:
            return AutoModel.from_pretrained(path, trust_remote_code=remote).eval()
        except OSError as err:
            raise ValueError(f"cannot load {path}: {str(err).splitlines()[0]}") from None
    import timm

    return timm.create_model(f"local-dir:{path}", pretrained=True).eval()


# What a saved folder or checkpoint may name as a class (an optimiser, a scheduler, a metric): modules of these
# packages only. A stored argument is data; importing a module it names would run that module's code.
TRUSTED_PACKAGES = ("torch", "torchmetrics", "timm", "transformers", "pytorch_lightning", "lightning", "hubtrain")
_DOTTED = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)+")


def check_stored_args(args: Any, source: Any) -> None:
    """Refuse stored arguments that would run code: ``trust_remote_code`` turned on anywhere, or a dotted path into
    a module outside :data:`TRUSTED_PACKAGES` (one-line ``ValueError`` naming the file, the value and the fix)."""
    import importlib.util

    def walk(value: Any, where: str) -> None:
        if isinstance(value, dict):
            for key, item in value.items():
                if key == "trust_remote_code" and item:
                    raise ValueError(f"{source}: {where}{key}={item!r}; a saved folder or checkpoint may not turn on "
                                     "remote code (pass trust_remote_code=True yourself, in code or on the command line)")
                walk(item, f"{where}{key}.")
        elif isinstance(value, (list, tuple)):
            for i, item in enumerate(value):
                walk(item, f"{where}{i}.")
        elif isinstance(value, str) and _DOTTED.fullmatch(value):
            top = value.split(".")[0]
            if top not in TRUSTED_PACKAGES and importlib.util.find_spec(top) is not None:
                raise ValueError(f"{source}: {where.rstrip('.')}={value!r} names a class in module {top!r}; a saved folder "
                                 f"or checkpoint may only name classes from {list(TRUSTED_PACKAGES)} (importing others "
                                 "would run their code): pass the class yourself, in code")

    walk(args, "")


def load_task_folder(folder: Path, info: FolderInfo | None = None, *, map_location: str = "cpu", strict: bool = True,
                     **overrides: Any) -> Any:
    """A hubtrain-layout task folder -> the task, weights loaded, preprocessing restored."""
    from safetensors import SafetensorError
    from safetensors.torch import load_model

    from hubtrain.tasks import task_class

    info = info or describe(folder)
    if not (folder / WEIGHTS_NAME).is_file():
        raise FileNotFoundError(f"{folder / WEIGHTS_NAME} not found; a task folder needs the weights save_pretrained wrote")
    stored = info.config.get("init_args", {})
    check_stored_args(stored, folder / CONFIG_NAME)
    model = task_class(info.config["hubtrain_task"])(**{**stored, **overrides})
    try:
        layout = info.config.get(LAYOUT_KEY)
        if layout is not None:  # the library's own keys: map them back onto the task
            from safetensors.torch import load_file

            fmt = model.library_format()
            if fmt is None or fmt.library != layout:
                raise ValueError(f"{folder / CONFIG_NAME} says its weights are in {layout}'s format, but this "
                                 f"{info.class_name} has no {layout} classifier format; the folder is corrupt")
            names = {v: k for k, v in fmt.keys.items()}
            state = {names.get(k, k): v for k, v in load_file(str(folder / WEIGHTS_NAME), device=str(map_location)).items()}
            model.load_state_dict(state, strict=strict)
        else:
            load_model(model, str(folder / WEIGHTS_NAME), strict=strict, device=str(map_location))
    except SafetensorError as err:
        raise ValueError(f"cannot read {folder / WEIGHTS_NAME}: {err} (corrupt or truncated); re-save the model") from None
    if "preprocessing" in info.config:
        model.preprocessing = info.config["preprocessing"]
    return model.eval()


def read_checkpoint(path: Path) -> dict[str, Any]:
    """A checkpoint file as a dict, read as data: safetensors, or ``torch.load(weights_only=True)`` (no pickled code)."""
    import torch

    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return {"state_dict": load_file(str(path))}
        except (SafetensorError, OSError) as err:
            raise ValueError(f"cannot read checkpoint {path}: {err} (corrupt safetensors file)") from None
    if path.suffix not in CHECKPOINT_SUFFIXES:
        raise ValueError(f"unsupported checkpoint type {path.suffix!r} for {path}; use .safetensors, .ckpt or .pt")
    try:
        raw = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as err:  # corrupt, truncated or pickled-code files all end here, as one line
        first = str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__
        raise ValueError(f"cannot read checkpoint {path}: {type(err).__name__}: {first} "
                         "(corrupt, or not a weights-only PyTorch checkpoint)") from None
    if not isinstance(raw, dict):
        raise ValueError(f"checkpoint {path} holds a {type(raw).__name__}, expected a dict of tensors")
    return raw


def _state_dict_of(raw: dict[str, Any], path: Path) -> dict[str, Any]:
    import torch

    for key in ("state_dict", "model_state_dict", "model"):
        if isinstance(raw.get(key), dict):
            raw = raw[key]
            break
    tensors = {k: v for k, v in raw.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise ValueError(f"checkpoint {path} holds no tensors (keys: {sorted(raw)[:8]}); expected a state dict")
    return tensors


def infer_model_size(name: str) -> str | None:
    """The preset size named in a file name (``resnet_bk_1b.pt`` -> ``"1B"``), among all of hubtrain's models."""
    from hubtrain.models import preset_sizes

    for size in sorted(preset_sizes(), key=len, reverse=True):
        if re.search(rf"(?:^|[_\-.]){re.escape(size.lower())}(?:$|[_\-.])", name.lower()):
            return size
    return None


def load_checkpoint(path: str | os.PathLike, *, model_size: str | None = None, task: str | None = None,
                    **overrides: Any) -> Any:
    """A checkpoint file -> the model it holds, in eval mode (see :func:`load`).

    A Lightning checkpoint of a task records the task's name; its hyper-parameters are checked by the task class
    (``BaseTask.from_checkpoint_args``) before anything is built, so a checkpoint cannot turn on remote code or name
    a model to download. Bare weights need ``model_size`` (a preset) or carry their model config.
    """
    from hubtrain.models import build_causal_lm, create_from_preset, preset_model

    path = Path(path)
    raw = read_checkpoint(path)
    name = task or raw.get("hubtrain_task")
    if name:
        from hubtrain.tasks import task_class

        hparams = raw.get("hyper_parameters") if isinstance(raw.get("hyper_parameters"), dict) else {}
        model = task_class(name).from_checkpoint_args(hparams, source=path, **overrides)
        model.load_state_dict(_state_dict_of(raw, path))
        return model.eval()
    state = _state_dict_of(raw, path)
    # a task's state dict nests the language model under "model."
    state = {k.removeprefix("model.") if k.startswith(("model.model.", "model.lm_head")) else k: v for k, v in state.items()}
    size = model_size or infer_model_size(path.name)
    if isinstance(raw.get("config"), dict):
        model = build_causal_lm(dict(raw["config"]))
    elif size is not None:
        vocab = next((v.shape[0] for k, v in state.items() if k.endswith("embed_tokens.weight")), None)
        model = create_from_preset(f"{preset_model(size)}:{size}", **({"vocab_size": int(vocab)} if vocab else {}))
    else:
        raise ValueError(f"cannot tell which model {path} holds: pass model_size (a preset such as '1M') or task "
                         "(a hubtrain task class such as 'ImageClassifier')")
    missing, unexpected = model.load_state_dict(state, strict=False)
    tied = {"lm_head.weight"} if getattr(model.config, "tie_word_embeddings", False) else set()
    if set(missing) - tied or unexpected:
        raise ValueError(f"checkpoint {path} does not match the {size or model.config.model_type} model: missing "
                         f"{sorted(set(missing) - tied)[:3]}, unexpected {sorted(unexpected)[:3]}; check model_size")
    return model.eval().float()


__all__ = [
    "FolderInfo",
    "RunMetrics",
    "canonicalize_safetensors",
    "check_folder",
    "check_repo_id",
    "check_stored_args",
    "create_model_card",
    "describe",
    "infer_model_size",
    "load",
    "load_checkpoint",
    "load_task_folder",
    "model_card",
    "plot_curves",
    "read_metrics",
    "save_task",
    "stage_model",
    "usage_snippet",
    "write_card",
]
