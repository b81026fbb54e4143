"""Training images/s: hubtrain (ImageClassifier + AutoTrainer) vs a plain PyTorch loop vs AutoTimm, one run.

Same timm model (resnet18, 10 classes), same batch size, same optimiser (AdamW), same data, measured the same way:
wall time between the end of warm-up step ``--warmup`` and the end of the last step, data loading included.
hubtrain runs twice: with its defaults (timm backbones train in channels-last memory order, about 10% faster per
step on CPU) and with ``channels_last=False``, the plain loop's layout, which isolates the framework's own overhead.
Two data sources:

- ``tensors``: a ``TensorDataset`` of random 64 px images already in memory (pure training-loop overhead);
- ``folder``: PNG files in ``train/<class>/`` folders, decoded and transformed every step (timm's eval-style
  transform for all three, built once from resnet18's data config; AutoTimm uses its own data module).

Every run is a fresh interpreter, so no runner inherits another's heap (on CPU the allocator's state alone moves
a training step by 20% or more), and runs are interleaved (plain, hubtrain, autotimm, plain, ...) with the median of
``--repeats`` reported, so a busy machine slows all three alike. AutoTimm runs in its own interpreter
(``--autotimm-python``), normally a venv made with ``python -m venv --system-site-packages <dir> &&
<dir>/bin/pip install autotimm`` so it shares this torch/timm and cannot change the main environment.

    python benchmarks/vision_throughput.py --autotimm-python /tmp/autotimm-venv/bin/python

Writes ``benchmarks/results/vision_throughput.{md,json,png}``.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"


# ------------------------------------------------------------------------------------------------------------
# data


def make_folder(root: Path, n: int, size: int, classes: int = 10) -> Path:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for i in range(n):
        folder = root / "train" / f"class_{i % classes}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(folder / f"{i:05d}.png")
    # a small val split so every data module is happy; it is never run (limit_val_batches=0)
    for c in range(classes):
        folder = root / "val" / f"class_{c}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(folder / "0.png")
    return root


def tensor_loader(n: int, size: int, batch_size: int):
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    g = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.randn(n, 3, size, size, generator=g), torch.randint(0, 10, (n,), generator=g))
    return DataLoader(data, batch_size=batch_size, shuffle=True, generator=g, drop_last=True)


def folder_transform(size: int):
    import timm
    from timm.data import create_transform, resolve_data_config

    config = resolve_data_config({"input_size": (3, size, size)}, model=timm.create_model("resnet18", pretrained=False))
    return create_transform(**{**config, "crop_pct": 1.0}, is_training=False)


def folder_loader(root: Path, size: int, batch_size: int):
    import torch
    from torch.utils.data import DataLoader
    from torchvision.datasets import ImageFolder

    g = torch.Generator().manual_seed(0)
    data = ImageFolder(str(root / "train"), transform=folder_transform(size))
    return DataLoader(data, batch_size=batch_size, shuffle=True, generator=g, drop_last=True)


# ------------------------------------------------------------------------------------------------------------
# runners: each returns images/s (wall clock and median step)


def _rate(stamps: list[float], warmup: int, batch_size: int) -> dict[str, float]:
    """Wall-clock images/s after warm-up, and images/s of the median step (robust to the machine's stalls)."""
    if len(stamps) <= warmup + 1:
        raise ValueError(f"only {len(stamps)} steps ran; need more than warmup={warmup} + 1 (add --images)")
    steps = [b - a for a, b in zip(stamps[warmup:], stamps[warmup + 1:])]
    return {"rate": (len(stamps) - 1 - warmup) * batch_size / (stamps[-1] - stamps[warmup]),
            "step_rate": batch_size / statistics.median(steps)}


def run_plain(loader: Any, warmup: int, batch_size: int, lr: float) -> dict[str, float]:
    import timm
    import torch
    import torch.nn.functional as F

    torch.manual_seed(0)
    model = timm.create_model("resnet18", pretrained=False, num_classes=10).train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    stamps = []
    for x, y in loader:
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        stamps.append(time.perf_counter())
    return _rate(stamps, warmup, batch_size)


class _Stamps:
    """A Lightning callback (built for whichever Lightning package the runner uses) that times each step."""

    @staticmethod
    def make(callback_base: type) -> Any:
        class Stamps(callback_base):  # type: ignore[misc, valid-type]
            def __init__(self) -> None:
                self.stamps: list[float] = []

            def on_train_batch_end(self, *args: Any, **kwargs: Any) -> None:
                self.stamps.append(time.perf_counter())

        return Stamps()


def _quiet_trainer_kwargs() -> dict[str, Any]:
    return dict(
        max_epochs=1,
        accelerator="cpu",
        devices=1,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        logger=False,
    )


def run_hubtrain(source: str, loader_or_root: Any, warmup: int, batch_size: int, lr: float, size: int,
                 channels_last: bool | None = None) -> dict[str, float]:
    import pytorch_lightning as pl
    import torch

    from hubtrain import AutoTrainer, ImageClassifier, ImageDataModule

    torch.manual_seed(0)
    model = ImageClassifier(backbone="resnet18", num_classes=10, pretrained=False, lr=lr, scheduler=None, weight_decay=0.0,
                            channels_last=channels_last)
    stamps = _Stamps.make(pl.Callback)
    with tempfile.TemporaryDirectory() as tmp:
        trainer = AutoTrainer(callbacks=[stamps], default_root_dir=tmp, plot_curves=False, **_quiet_trainer_kwargs())
        if source == "tensors":
            trainer.fit(model, train_dataloaders=loader_or_root)
        else:
            # the same eval-style transform as the other two, through hubtrain's own data module
            transform = folder_transform(size)
            data = ImageDataModule(data_dir=loader_or_root, batch_size=batch_size, train_transforms=transform,
                                   eval_transforms=transform, image_size=size)
            trainer.fit(model, datamodule=data)
    return _rate(stamps.stamps, warmup, batch_size)


AUTOTIMM_RUNNER = r'''
import json, statistics, sys, time, torch, tempfile
args = json.loads(sys.argv[1])
import autotimm
from autotimm import ImageClassifier, AutoTrainer, ImageDataModule
try:
    import pytorch_lightning as pl
except ImportError:
    import lightning.pytorch as pl

class Stamps(pl.Callback):
    def __init__(self):
        self.stamps = []
    def on_train_batch_end(self, *a, **k):
        self.stamps.append(time.perf_counter())

from autotimm import BackboneConfig
# data first, then the model: the same order of allocations as the plain loop and hubtrain runs
if args["source"] == "tensors":
    g = torch.Generator().manual_seed(0)
    from torch.utils.data import DataLoader, TensorDataset
    n, s, b = args["images"], args["size"], args["batch_size"]
    data = TensorDataset(torch.randn(n, 3, s, s, generator=g), torch.randint(0, 10, (n,), generator=g))
    fit_data = dict(train_dataloaders=DataLoader(data, batch_size=b, shuffle=True, generator=g, drop_last=True))
else:
    import timm
    from timm.data import create_transform, resolve_data_config
    cfg = resolve_data_config({"input_size": (3, args["size"], args["size"])}, model=timm.create_model("resnet18", pretrained=False))
    tf = create_transform(**{**cfg, "crop_pct": 1.0}, is_training=False)  # the same transform as the others
    fit_data = dict(datamodule=ImageDataModule(data_dir=args["root"], image_size=args["size"], batch_size=args["batch_size"],
                                               num_workers=0, train_transforms=tf, eval_transforms=tf, pin_memory=False))
torch.manual_seed(0)
# Eager, like the other two (AutoTimm compiles by default, which on CPU costs far more than it saves).
model = ImageClassifier(backbone=BackboneConfig(model_name="resnet18", pretrained=False), num_classes=10,
                        lr=args["lr"], scheduler=None, weight_decay=0.0, compile_model=False)
stamps = Stamps()
kw = dict(max_epochs=1, accelerator="cpu", devices=1, limit_val_batches=0, num_sanity_val_steps=0,
          enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False, logger=False)
with tempfile.TemporaryDirectory() as tmp:
    trainer = AutoTrainer(callbacks=[stamps], default_root_dir=tmp, **kw)
    trainer.fit(model, **fit_data)
s, w, b = stamps.stamps, args["warmup"], args["batch_size"]
median = statistics.median(t1 - t0 for t0, t1 in zip(s[w:], s[w + 1:]))
print("RESULT", json.dumps({"rate": (len(s) - 1 - w) * b / (s[-1] - s[w]), "step_rate": b / median,
                            "version": getattr(autotimm, "__version__", "?")}))
'''


def _payload(source: str, root: Path | None, args: argparse.Namespace) -> dict[str, Any]:
    return {"source": source, "root": str(root) if root else None, "images": args.images, "size": args.size,
            "batch_size": args.batch_size, "warmup": args.warmup, "lr": args.lr}


def _run_subprocess(cmd: list[str], what: str) -> dict[str, Any]:
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"{what} runner failed (exit {proc.returncode}): {proc.stderr.strip()[-1500:]}")
    return json.loads(lines[-1][len("RESULT "):])


def run_autotimm(python: str, source: str, root: Path | None, args: argparse.Namespace) -> tuple[dict[str, float], str]:
    out = _run_subprocess([python, "-c", AUTOTIMM_RUNNER, json.dumps(_payload(source, root, args))], "AutoTimm")
    return {"rate": out["rate"], "step_rate": out["step_rate"]}, out["version"]


def run_in_fresh_interpreter(runner: str, source: str, root: Path | None, args: argparse.Namespace,
                             **options: Any) -> dict[str, float]:
    """One run of the plain loop or hubtrain in a new Python process (see the module doc for why)."""
    payload = {**_payload(source, root, args), "runner": runner, **options}
    return _run_subprocess([sys.executable, __file__, "--worker", json.dumps(payload)], runner)


def worker(payload: dict[str, Any]) -> None:
    source, size, b, w, lr = payload["source"], payload["size"], payload["batch_size"], payload["warmup"], payload["lr"]
    root = Path(payload["root"]) if payload["root"] else None
    if payload["runner"] == "plain":
        loader = tensor_loader(payload["images"], size, b) if source == "tensors" else folder_loader(root, size, b)
        rate = run_plain(loader, w, b, lr)
    else:
        data = tensor_loader(payload["images"], size, b) if source == "tensors" else root
        rate = run_hubtrain(source, data, w, b, lr, size, channels_last=payload.get("channels_last"))
    print("RESULT", json.dumps(rate))


# ------------------------------------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=640, help="training images per run")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--warmup", type=int, default=3, help="steps excluded from the timing")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--sources", default="tensors,folder")
    parser.add_argument("--autotimm-python", default=None, help="interpreter with autotimm installed (see module doc)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--render", type=Path, help="only re-render the table and plot from a results JSON")
    parser.add_argument("--worker", help=argparse.SUPPRESS)  # internal: one run, in a fresh interpreter
    args = parser.parse_args()
    if args.worker is not None:
        worker(json.loads(args.worker))
        return 0
    if args.render is not None:
        render(json.loads(args.render.read_text()), args.out)
        return 0

    import torch

    from hubtrain.utils import write_text_atomic

    autotimm_python = args.autotimm_python
    autotimm_note = ""
    if autotimm_python is None:
        probe = subprocess.run([sys.executable, "-c", "import autotimm"], capture_output=True)
        if probe.returncode == 0:
            autotimm_python = sys.executable
        else:
            autotimm_note = "AutoTimm not measured: no --autotimm-python given and autotimm is not importable here."
            print(autotimm_note)

    results: dict[str, dict[str, list[float]]] = {}
    step_results: dict[str, dict[str, list[float]]] = {}
    autotimm_version = None
    with tempfile.TemporaryDirectory() as tmp:
        root = make_folder(Path(tmp) / "images", args.images, args.size) if "folder" in args.sources else None
        for source in args.sources.split(","):
            runners: dict[str, Any] = {
                "plain PyTorch loop": lambda: run_in_fresh_interpreter("plain", source, root, args),
                "hubtrain": lambda: run_in_fresh_interpreter("hubtrain", source, root, args),
                # the plain loop's memory layout: isolates the framework's own overhead
                "hubtrain, channels_last=False": lambda: run_in_fresh_interpreter("hubtrain", source, root, args,
                                                                                  channels_last=False),
            }
            if autotimm_python:
                def autotimm() -> dict[str, float]:
                    nonlocal autotimm_version
                    rate, autotimm_version = run_autotimm(autotimm_python, source, root, args)
                    return rate
                runners["AutoTimm"] = autotimm
            rates: dict[str, list[float]] = {name: [] for name in runners}
            step_rates: dict[str, list[float]] = {name: [] for name in runners}
            names = list(runners)
            for rep in range(args.repeats):
                # rotate the order every repeat, so no runner always goes first (or after the same neighbour)
                for name in names[rep % len(names):] + names[: rep % len(names)]:
                    out = runners[name]()
                    rates[name].append(out["rate"])
                    step_rates[name].append(out["step_rate"])
                print(f"[{source} {rep + 1}/{args.repeats}] " + ", ".join(f"{k}: {v[-1]:.1f}" for k, v in rates.items()), flush=True)
            results[source] = {k: v for k, v in rates.items() if v}
            step_results[source] = {k: v for k, v in step_rates.items() if v}

    header = (
        f"resnet18 (timm), {args.size} px, batch {args.batch_size}, AdamW, {args.images} images per run, "
        f"CPU with {torch.get_num_threads()} threads, median of {args.repeats} interleaved runs, each in a fresh interpreter"
    )
    command = "python benchmarks/vision_throughput.py " + " ".join(sys.argv[1:])
    record = {"setup": header, "runs": results, "median_step_runs": step_results, "command": command, "autotimm_version": autotimm_version,
              "note": autotimm_note}
    args.out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(args.out / "vision_throughput.json", json.dumps(record, indent=2))
    render(record, args.out)
    return 0


def render(record: dict[str, Any], out: Path) -> None:
    """Markdown tables (medians, every run, spread, target verdicts) and a PNG from a results record."""
    from hubtrain.utils import write_text_atomic

    version = record.get("autotimm_version")
    stats = {"wall clock": record["runs"]}
    if record.get("median_step_runs"):
        stats["median step"] = record["median_step_runs"]
    summaries = {stat: {source: {k: statistics.median(v) for k, v in r.items()} for source, r in runs.items()}
                 for stat, runs in stats.items()}
    md = ["# Vision training throughput", "", record["setup"] + ".", "",
          "Images/s two ways: *wall clock* is images over the time from the end of warm-up to the last step; "
          "*median step* is the batch size over the median time between steps (data loading included), which a "
          "stall of the machine cannot move. Each is the median over runs; every run is listed.", ""]
    noisy, verdicts = [], []
    for stat, summary in summaries.items():
        md += [f"### {stat}", "", "| data | runner | images/s (median) | runs | vs plain loop |", "|---|---|---|---|---|"]
        for source, rates in summary.items():
            base, peer = rates["plain PyTorch loop"], rates.get("AutoTimm")
            for runner, rate in rates.items():
                runs = stats[stat][source][runner]
                name = f"AutoTimm {version}" if runner == "AutoTimm" and version else runner
                md.append(f"| {source} | {name} | {rate:.1f} | {', '.join(f'{r:.1f}' for r in runs)} | {100 * (rate / base - 1):+.1f}% |")
                if max(runs) > 1.2 * min(runs):
                    noisy.append(f"{stat} {source}/{runner} ({min(runs):.1f}..{max(runs):.1f})")
                if runner.startswith("hubtrain"):
                    verdicts.append(f"| {stat} | {source} | {runner} >= 95% of the plain loop | {100 * rate / base:.1f}% | "
                                    f"{'PASS' if rate >= 0.95 * base else 'MISS'} |")
                    if peer is not None:
                        verdicts.append(f"| {stat} | {source} | {runner} >= AutoTimm | {rate / peer:.3f}x | "
                                        f"{'PASS' if rate >= peer else 'MISS'} |")
        md.append("")
    md += [f"Command: `{record['command'].strip()}`", "", "### Targets (issue 4)", "",
           "| statistic | data | target | measured | verdict |", "|---|---|---|---|---|", *verdicts, ""]
    if noisy:
        md += [
            f"**Noise warning**: runs of the same runner differ by more than 20% ({', '.join(noisy)}), so differences "
            "of that size between runners are not resolved by that statistic (the speed of this machine drifts). "
            "Re-run with more --repeats or --images before drawing conclusions from it.",
            "",
        ]
    if record.get("note"):
        md += [record["note"], ""]
    text = "\n".join(md)
    write_text_atomic(out / "vision_throughput.md", text)
    plot(summaries["median step" if "median step" in summaries else "wall clock"], out / "vision_throughput.png",
         record["setup"] + (" (median step)" if "median step" in summaries else ""))
    print(text)


def plot(summary: dict[str, dict[str, float]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    from hubtrain.utils import atomic_path

    fig = Figure(figsize=(7, 4))
    ax = fig.subplots()
    sources = list(summary)
    runners = list(dict.fromkeys(r for rates in summary.values() for r in rates))
    width = 0.8 / len(runners)
    for i, runner in enumerate(runners):
        values = [summary[s].get(runner, 0.0) for s in sources]
        bars = ax.bar([j + i * width for j in range(len(sources))], values, width, label=runner)
        ax.bar_label(bars, fmt="%.0f", fontsize=8)
    ax.set_xticks([j + width * (len(runners) - 1) / 2 for j in range(len(sources))], sources)
    ax.set_ylabel("training images / s")
    ax.set_title(title, fontsize=7)
    ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)


if __name__ == "__main__":
    raise SystemExit(main())
