"""Recall and long-context benchmark: ResNet-BK vs GPT-2 (SDPA) vs Mamba (transformers, mambapy path), side by side.

Every model goes through the same suite (``hubtrain.evaluation.recall``) with the same loop, schedule, data and
budget, at matched non-embedding parameters (GPT-2's MLP width and Mamba's depth are set to match ResNet-BK's
count; the table lists them):

* MQAR (Zoology): accuracy at the answers over a grid of sequence lengths x key-value pairs x widths;
* selective copying and induction heads (Mamba's paper), trained at 256 tokens, tested up to 64k: extrapolation;
* passkey retrieval, trained at 1k tokens, tested at 1k-32k for every depth.

Each model gets its own learning rate from a small sweep the script runs first (reported). GPT-2 past its
``n_positions`` is "n/a", never 0. Recurrent state per layer is read off one real decoding step.

    python benchmarks/recall.py            # about an hour on 2 cores: d_model 64, lengths 32/64, 4 and 8 pairs
    python benchmarks/recall.py --models resnet_bk resnet_bk_ss resnet_bk_recall resnet_bk_hold gpt2 mamba  # + softplus
    python benchmarks/recall.py --full     # the whole grid of the issue (widths 64/128, lengths 64-512, 4-64 pairs)
    python benchmarks/recall.py --quick    # a few minutes: the whole path at toy sizes
    python benchmarks/recall.py --targets  # the issue's targets for resnet_bk_hold: long tasks at 3,000-6,000 steps

The long tasks can be trained on both spacings at once, the same for every model (``--copy-log-window``,
``--induction-log-gap``, ``--passkey-log-gap``: a share of the training rows with the data, trigger or key at a
log-uniform distance from the question); they are always scored on the tasks' own rows.

Writes ``benchmarks/results/recall.{md,json}`` and ``recall_mqar.png``, ``recall_extrapolation.png``,
``recall_passkey.png``. Results are saved as each run finishes; ``--reuse`` picks a stopped run up where it was,
or adds grid points, models or long runs trained otherwise (their keys name how) to a finished one, running only
the new ones::

    mkdir -p benchmarks/results/recall_p16 && cp benchmarks/results/recall.json benchmarks/results/recall_p16/ && \
        python benchmarks/recall.py --models resnet_bk resnet_bk_ss resnet_bk_recall resnet_bk_hold gpt2 mamba \
        --seq-lens 32 64 128 --pairs 4 8 16 --reuse --out benchmarks/results/recall_p16
    mkdir -p benchmarks/results/recall_targets && cp benchmarks/results/recall_p16/recall.json \
        benchmarks/results/recall_targets/ && python benchmarks/recall.py --targets --seq-lens 32 64 128 --pairs 4 8 16 --reuse
"""
from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
MODELS = ("resnet_bk", "resnet_bk_ss", "resnet_bk_recall", "resnet_bk_hold", "resnet_bk_lead", "gpt2", "mamba")
LABELS = {"resnet_bk": "ResNet-BK", "resnet_bk_ss": "ResNet-BK + decayed term (4 heads)",
          "resnet_bk_recall": "ResNet-BK + a decay per value, conv 4",
          "resnet_bk_hold": "the same, relu decay (can hold)", "resnet_bk_lead": "ResNet-BK lead, K=8",
          "gpt2": "GPT-2 (sdpa)", "mamba": "Mamba (mambapy)"}
# ResNet-BK with its options that measurably learn MQAR (docs/resnet_bk.md section 7), as functions of d_model:
# the semiseparable term tril(Q K^T) V beside the Green's function with 4 decay heads (the recommended language-
# modelling shape, section 7.7); the same term with 2 d values, each with its own decay set by the token (Mamba's
# per-channel form, section 7.9), its queries, keys and values from a short causal convolution (Mamba's conv1d,
# section 7.10), experts of 7 d / 32 (cut to Mamba's parameters by `under`); the same with relu decays, which hold
# a sum exactly through tokens that do not write (section 7.12); and the keyed resolvent of a band-edge chain with
# a lead (the Green's function itself recalling, section 7.1)
def per_value(d: int) -> dict[str, Any]:
    return {"use_semiseparable": True, "low_rank": 16, "semiseparable_value_dim": 2 * d,
            "semiseparable_decay_heads": 2 * d, "semiseparable_conv_width": 4, "ffn_dim": 7 * d // 32}


VARIANTS = {
    "resnet_bk_ss": lambda d: {"use_semiseparable": True, "low_rank": 16, "semiseparable_decay_heads": 4},
    "resnet_bk_recall": per_value,
    "resnet_bk_hold": lambda d: per_value(d) | {"semiseparable_decay_activation": "relu"},
    "resnet_bk_lead": lambda d: {"chain": "lead", "key_dim": 8},
}
# variants that must not exceed Mamba's non-embedding parameters (the MQAR target is at equal parameters)
UNDER_MAMBA = ("resnet_bk_recall", "resnet_bk_hold")
# the per-value shape with softplus decays (resnet_bk_recall) is left to --models: relu is above it on the MQAR grid
# (section 7.13), and the defaults must fit about an hour on 2 cores
DEFAULT_MODELS = ["resnet_bk", "resnet_bk_ss", "resnet_bk_hold", "gpt2", "mamba"]


# --------------------------------------------------------------------------------------------------------- models


def non_embedding(config: Any) -> int:
    from transformers import AutoModelForCausalLM

    import hubtrain.models  # noqa: F401  (registers ResNet-BK)

    hubtrain.models.register_all()
    import torch

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    return model.num_parameters(exclude_embeddings=True)


def configs(name: str, *, vocab: int, d: int, layers: int, max_len: int, resnet_bk: dict) -> Any:
    """The model's config at width ``d``; GPT-2 and Mamba sized to ResNet-BK's non-embedding parameters."""
    from transformers import GPT2Config, MambaConfig

    from hubtrain.models.resnet_bk import ResNetBKConfig

    shape = dict(vocab_size=vocab, d_model=d, n_layers=layers, num_channels=max(1, d // 16), channel_dim=16,
                 num_experts=2, ffn_dim=2 * d, n_seq=max_len)
    rbk = ResNetBKConfig(**{**shape, **resnet_bk})
    if name == "resnet_bk":
        return rbk
    if name in VARIANTS:
        config = ResNetBKConfig(**{**shape, **resnet_bk, **VARIANTS[name](d)})
        if name not in UNDER_MAMBA:
            return config
        mamba = configs("mamba", vocab=vocab, d=d, layers=layers, max_len=max_len, resnet_bk=resnet_bk)
        return under(config, non_embedding(mamba))
    target = non_embedding(rbk)
    if name == "gpt2":
        base = dict(vocab_size=vocab, n_embd=d, n_layer=layers, n_head=max(1, d // 32), n_positions=max_len,
                    resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=0, eos_token_id=0)
        # attention costs 4 d^2 per layer, the MLP 2 d n_inner: choose n_inner to land on the target
        n_inner = max(d, round((target / layers - 4 * d * d - 9 * d) / (2 * d + 1)))
        return GPT2Config(**base, n_inner=n_inner)
    if name == "mamba":
        per_layer = non_embedding(MambaConfig(vocab_size=vocab, hidden_size=d, num_hidden_layers=1, state_size=16,
                                              use_mambapy=True))
        n = max(1, round(target / per_layer))
        return MambaConfig(vocab_size=vocab, hidden_size=d, num_hidden_layers=n, state_size=16, use_mambapy=True)
    raise ValueError(f"unknown model {name!r}; choose from {MODELS}")


def under(config: Any, budget: int) -> Any:
    """``config`` with at most ``budget`` non-embedding parameters: as it is if it fits; else with the fewest
    channels removed for which experts filling the rest are at least d_model / 8 wide. Mamba's size comes in whole
    layers, so a ratio chosen at one width (experts of 7 d / 32 land just under Mamba at width 64) does not hold at
    the next (8% over at width 128)."""
    if non_embedding(config) <= budget:
        return config
    d = config.d_model
    shape = lambda channels, ffn: config.__class__(**{**config.to_dict(), "num_channels": channels, "ffn_dim": ffn})
    for channels in range(config.num_channels - 1, 0, -1):
        one, two = (non_embedding(shape(channels, f)) for f in (1, 2))
        ffn = 1 + (budget - one) // (two - one)  # parameters grow linearly with the experts' width
        if ffn >= d // 8:
            return shape(channels, ffn)
    raise ValueError(f"no ResNet-BK shape at d_model {d} fits {budget:,} non-embedding parameters")


# --------------------------------------------------------------------------------------------------------- runs


class Store:
    """Results keyed by run, written to JSON after every run (so a long run can stop and go on with --reuse)."""

    def __init__(self, path: Path, reuse: bool) -> None:
        self.path = path
        self.data: dict[str, Any] = json.loads(path.read_text()) if reuse and path.is_file() else {}
        self.data.setdefault("runs", {})

    def get(self, key: str) -> Any:
        return self.data["runs"].get(key)

    def put(self, key: str, value: Any) -> None:
        self.data["runs"][key] = value
        tmp = self.path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self.data, indent=1, default=str))
        os.replace(tmp, self.path)


# settings that the long runs' keys spell out (long_key), so that runs made under others are kept beside them
LONG_TRAINING = ("extrap_steps", "passkey_steps", "long_batch", "passkey_batch", "copy_steps", "copy_batch",
                 "copy_log_window", "induction_log_gap", "passkey_log_gap", "min_examples", "passkey_examples", "targets")


def same_runs(old: dict[str, Any], new: dict[str, Any]) -> bool:
    """Whether runs made under ``old`` settings are the runs ``new`` would make: every setting equal but the grid's
    axes and the models, which may grow (runs are keyed by their grid point and model; the sweep and long runs use
    the first pairs and width, and GPT-2 and Mamba are sized to plain ResNet-BK, whatever the other models), and
    the long runs' training, which their keys name (a setting missing from ``old`` had its default then)."""
    axes = ("seq_lens", "pairs", "widths", "models", "long_models", *LONG_TRAINING)
    return ({k: v for k, v in old.items() if k not in axes} == {k: v for k, v in new.items() if k not in axes}
            and all(old[k][0] == new[k][0] for k in ("pairs", "widths")))


def long_training(args: argparse.Namespace, task: str) -> dict[str, Any]:
    """How a long task is trained and scored: steps, batch, the training distribution's share and held-out rows."""
    if task == "passkey":
        return dict(steps=args.passkey_steps, batch=args.passkey_batch or max(4, args.long_batch // 4),
                    share=("log_gap", args.passkey_log_gap), examples=args.passkey_examples or max(8, args.examples // 8))
    copy = task == "selective_copying"
    share = ("log_window", args.copy_log_window) if copy else ("log_gap", args.induction_log_gap)
    steps = args.copy_steps if copy and args.copy_steps else args.extrap_steps
    batch = args.copy_batch if copy and args.copy_batch else args.long_batch
    return dict(steps=steps, batch=batch, share=share, examples=args.examples)


def long_key(args: argparse.Namespace, task: str, model: str) -> str:
    """``task/model/STEPSxBATCH[-SHARE]-evalN``: runs trained or scored otherwise are other runs."""
    t = long_training(args, task)
    name, share = t["share"]
    rows = f"{t['examples']}" + (f"-{args.min_examples}" if task != "passkey" else "")
    return f"{task}/{model}/{t['steps']}x{t['batch']}" + (f"-{name}{share:g}" if share else "") + f"-eval{rows}"


def run_all(store: Store, specs: dict[str, dict[str, Any]], jobs: int) -> int:
    """Run every spec not already in the store, ``jobs`` worker processes at a time (each with its own torch
    threads), saving each result as it finishes; returns how many ran."""
    todo = {key: spec for key, spec in specs.items() if store.get(key) is None}
    # longest first, so that the last runs to finish are short ones (Mamba's CPU scan costs ~6x the others)
    cost = lambda spec: (6 if spec["model"] == "mamba" else 1) * spec["train_len"] * spec["steps"] * spec["batch"]
    todo = dict(sorted(todo.items(), key=lambda kv: -cost(kv[1])))
    if not todo:
        return 0
    t_start = time.perf_counter()

    def done(i: int, key: str, result: dict[str, Any]) -> None:
        store.put(key, result)
        brief = {k: v for k, v in result.items() if not isinstance(v, (dict, list))}
        elapsed = time.perf_counter() - t_start
        print(f"  [{i}/{len(todo)}, {elapsed / 60:.1f} min] {key}: {json.dumps(brief)}", flush=True)

    if jobs <= 1:
        for i, (key, spec) in enumerate(todo.items(), 1):
            done(i, key, work(spec))
        return len(todo)
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = {pool.submit(work, spec): key for key, spec in todo.items()}
        for i, future in enumerate(as_completed(futures), 1):
            done(i, futures[future], future.result())
    return len(todo)


def work(spec: dict[str, Any]) -> dict[str, Any]:
    """One run, from a plain description (so that it can go to another process)."""
    import torch

    from hubtrain.evaluation.recall import TASKS

    torch.set_num_threads(spec["threads"])
    t0 = time.perf_counter()
    config = configs(spec["model"], vocab=spec["vocab"], d=spec["d"], layers=spec["layers"], max_len=spec["max_len"],
                     resnet_bk=spec["resnet_bk"])
    task = TASKS[spec["task"]](**spec["task_args"])
    if spec["task"] == "passkey":
        result = passkey_runs(config, task, spec)
    else:
        result = train_and_score(config, task, spec["train_len"], spec["test_lens"], steps=spec["steps"],
                                 batch=spec["batch"], lr=spec["lr"], seed=spec["seed"], examples=spec["examples"],
                                 min_examples=spec.get("min_examples", 8), name=spec["model"])
    result["seconds"] = round(time.perf_counter() - t0, 1)
    return result


def passkey_runs(config: Any, task: Any, spec: dict[str, Any]) -> dict[str, Any]:
    """One model trained at random depths, scored at every depth and length."""
    from hubtrain.evaluation.recall import Passkey, evaluate, train

    lm = train(config, task, spec["train_len"], steps=spec["steps"], batch_size=spec["batch"], lr=spec["lr"],
               seed=spec["seed"])
    limit = getattr(lm.model.config, "n_positions", None)
    return {"by_depth": {str(depth): {str(n): (None if limit and n > limit else evaluate(
        lm.model, Passkey(depth=depth), n, examples=spec["examples"], batch_size=4,
        seed=spec["seed"] + 20_000)["exact"]) for n in spec["test_lens"]} for depth in spec["depths"]}}


def train_and_score(config: Any, task: Any, train_len: int, test_lens: list[int], *, steps: int, batch: int, lr: float,
                    seed: int, examples: int, min_examples: int, name: str) -> dict[str, Any]:
    import torch

    from hubtrain.evaluation.recall import evaluate, state_bytes_per_layer, train

    lm = train(config, task, train_len, steps=steps, batch_size=batch, lr=lr, seed=seed)
    model = lm.model.eval()
    limit = getattr(config, "n_positions", None)
    scores = {}
    for n in test_lens:
        if limit is not None and n > limit:
            scores[str(n)] = None  # GPT-2 has no position past its table: not applicable, not zero
            continue
        count = max(min(min_examples, examples), min(examples, examples * 1024 // n))
        scores[str(n)] = evaluate(model, task, n, examples=count, batch_size=batch, seed=seed + 10_000)["accuracy"]
    del model
    torch.cuda.empty_cache() if torch.cuda.is_available() else None
    return {"model": name, "scores": scores, "chance": task.chance, "lr": lr,
            "non_embedding": lm.model.num_parameters(exclude_embeddings=True),
            "state_bytes_per_layer": state_bytes_per_layer(lm.model)}


# --------------------------------------------------------------------------------------------------------- report


def fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.3f}"


def extrap_header(first: str, lens: list[int], far_len: int) -> list[str]:
    """The head of an extrapolation table: one column per test length, then the ratio and chance."""
    return [f"| {first} | " + " | ".join(str(n) for n in lens) + f" | ratio {far_len} / {lens[0]} | chance |",
            "|---|" + "---:|" * (len(lens) + 2)]


def extrap_row(label: str, r: dict[str, Any], lens: list[int], far_len: int) -> str:
    """One extrapolation run's table row: accuracy at each test length, and the ratio the issue's target is about."""
    s = r["scores"]
    base, far = s.get(str(lens[0])), s.get(str(far_len))
    # a ratio of two chance-level accuracies is noise, not length generalisation
    ratio = "n/a" if not base or far is None else "n/a (at chance)" if base < 2 * r["chance"] else f"{far / base:.3f}"
    return f"| {label} | " + " | ".join(fmt(s.get(str(n))) for n in lens) + f" | {ratio} | {r['chance']:.4f} |"


def settings_of(args: argparse.Namespace) -> dict[str, Any]:
    """The settings that make the runs (what the store checks on --reuse and the report prints): every argument but
    where results go and whether to reuse or only redraw them."""
    return {k: v for k, v in vars(args).items() if k not in ("out", "reuse", "report_only")}


def report(store: Store, args: argparse.Namespace, out: Path) -> str:
    runs = store.data["runs"]

    def trained(task: str) -> str:
        t = long_training(args, task)
        name, share = t["share"]
        return f"{t['steps']} steps of batch {t['batch']}" + (f", {name} {share:g}" if share else "")

    commands = store.data.get("commands") or [store.data.get("command", "python benchmarks/recall.py")]
    lines = ["# Recall and long-context benchmark", "", "Made by " + ", then ".join(f"`{c}`" for c in commands)
             + (" (each call reusing the runs of those before it)" if len(commands) > 1 else "")
             + f". Settings of this report: {settings_of(args)}", ""]
    lr = store.data.get("lr", {})
    if lr:
        lines += ["## Learning rates (sweep on MQAR, best final accuracy)", "", "| model | " + " | ".join(
            f"lr {x:g}" for x in args.lrs) + " | chosen |", "|---|" + "---:|" * (len(args.lrs) + 1)]
        for m in args.models:
            row = [fmt(runs.get(f"sweep/{m}/{x:g}", {}).get("scores", {}).get(str(args.sweep_len))) for x in args.lrs]
            lines.append(f"| {LABELS[m]} | " + " | ".join(row) + f" | {lr.get(m, 'n/a')} |")
        lines.append("")
    lines += ["## MQAR accuracy at the answers", ""]
    for d in args.widths:
        lines += [f"### d_model {d}", "", "| seq len | pairs | " + " | ".join(LABELS[m] for m in args.models) + " | chance |",
                  "|---:|---:|" + "---:|" * (len(args.models) + 1)]
        for n in args.seq_lens:
            for pairs in args.pairs:
                if 4 * pairs > n:
                    continue
                cells = [runs.get(f"mqar/{m}/d{d}/n{n}/p{pairs}") for m in args.models]
                if not any(cells):
                    continue
                chance = next((c["chance"] for c in cells if c), None)
                lines.append(f"| {n} | {pairs} | " + " | ".join(fmt(c["scores"][str(n)]) if c else "-" for c in cells)
                             + f" | {chance:.4f} |")
        lines.append("")
    # size and state at each width, from any MQAR run of the model at that width (they share the config's shape)
    lines += ["## Size and state", "", "| model | " + " | ".join(
        f"non-embedding parameters (d_model {d}) | recurrent state per layer (d_model {d})" for d in args.widths)
        + " |", "|---|" + "---:|---:|" * len(args.widths)]
    for m in args.models:
        cells = []
        for d in args.widths:
            r = next((r for n in args.seq_lens for pairs in args.pairs
                      if (r := runs.get(f"mqar/{m}/d{d}/n{n}/p{pairs}"))), None)
            state = r and r["state_bytes_per_layer"]
            cells += [f"{r['non_embedding']:,}" if r else "-",
                      "-" if r is None else f"{state:,} bytes" if state else "grows with the context (KV cache)"]
        if any(c != "-" for c in cells):
            lines.append(f"| {LABELS[m]} | " + " | ".join(cells) + " |")
    lines.append("")
    # the target: accuracy at 64x the training length against the training length
    far_len = 64 * args.extrap_lens[0] if 64 * args.extrap_lens[0] in args.extrap_lens else args.extrap_lens[-1]
    for task in ("selective_copying", "induction_heads"):
        lines += [f"## {task.replace('_', ' ')}: trained at {args.extrap_train_len} ({trained(task)}), accuracy by test "
                  "length", "", *extrap_header("model", args.extrap_lens, far_len)]
        for m in args.long_models:
            r = runs.get(long_key(args, task, m))
            if r:
                lines.append(extrap_row(LABELS[m], r, args.extrap_lens, far_len))
        lines.append("")
    # runs of the same models trained or scored otherwise (an earlier budget), kept so that none is hidden
    others = []
    for key, r in sorted(runs.items()):
        parts = key.split("/")  # task/model/budget; passkey's depths have a fourth part
        if (len(parts) == 3 and parts[0] in ("selective_copying", "induction_heads") and parts[1] in args.long_models
                and key != long_key(args, parts[0], parts[1])):
            others.append(extrap_row(f"`{key}`", r, args.extrap_lens, far_len))
    if others:
        lines += ["## The same models' other stored runs (trained or scored otherwise; not this run)", "",
                  *extrap_header("task / model / STEPSxBATCH-share-evalROWS", args.extrap_lens, far_len), *others, ""]
    lines += [f"## Passkey: trained at {args.passkey_train_len} ({trained('passkey')}), exact 5-digit accuracy by length "
              "and depth", ""]
    for m in args.long_models:
        rows = [(depth, runs.get(f"{long_key(args, 'passkey', m)}/depth{depth}")) for depth in args.depths]
        if not any(r for _, r in rows):
            continue
        lines += [f"### {LABELS[m]}", "", "| depth | " + " | ".join(str(n) for n in args.passkey_lens) + " |",
                  "|---:|" + "---:|" * len(args.passkey_lens)]
        for depth, r in rows:
            if r:
                lines.append(f"| {depth} | " + " | ".join(fmt(r["scores"].get(str(n))) for n in args.passkey_lens) + " |")
        lines.append("")
    text = "\n".join(lines) + "\n"
    (out / "recall.md").write_text(text)
    return text


def plots(store: Store, args: argparse.Namespace, out: Path) -> None:
    from matplotlib.figure import Figure

    runs = store.data["runs"]
    fig = Figure(figsize=(4.2 * len(args.pairs), 3.4 * len(args.widths)))
    axes = fig.subplots(len(args.widths), len(args.pairs), squeeze=False)
    for row, d in enumerate(args.widths):
        for col, pairs in enumerate(args.pairs):
            ax = axes[row][col]
            drawn = False
            for m in args.models:
                pts = [(n, runs[k]["scores"][str(n)]) for n in args.seq_lens
                       if (k := f"mqar/{m}/d{d}/n{n}/p{pairs}") in runs and runs[k]["scores"][str(n)] is not None]
                if pts:
                    ax.plot(*zip(*pts), marker="o", label=LABELS[m])
                    drawn = True
            if not drawn:  # say so, rather than leave a blank panel to be read as zero
                ax.text(0.5, 0.5, "not run", transform=ax.transAxes, ha="center", va="center", color="gray")
            ax.set(title=f"d={d}, {pairs} pairs", xscale="log", xlabel="sequence length", ylim=(-0.02, 1.02))
            ax.set_xticks(args.seq_lens, [str(n) for n in args.seq_lens])
            ax.set_xlim(min(args.seq_lens) / 1.15, max(args.seq_lens) * 1.15)  # the same axis on a panel with one point
            ax.set_xticks([], minor=True)
            ax.axhline(2 / args.vocab, color="gray", ls=":", lw=1, label="chance")
            ax.grid(alpha=0.3)
            if col == 0:
                ax.set_ylabel("MQAR accuracy")
    # one legend under the panels, where it hides no curve
    fig.legend(*axes[0][0].get_legend_handles_labels(), loc="lower center", ncol=3, fontsize=7, frameon=False)
    fig.tight_layout(rect=(0, 0.14 / len(args.widths), 1, 1))
    fig.savefig(out / "recall_mqar.png", dpi=90)

    fig = Figure(figsize=(9, 3.4))
    for ax, task in zip(fig.subplots(1, 2), ("selective_copying", "induction_heads")):
        for m in args.long_models:
            r = runs.get(long_key(args, task, m))
            if r:
                pts = [(n, r["scores"][str(n)]) for n in args.extrap_lens if r["scores"].get(str(n)) is not None]
                ax.plot(*zip(*pts), marker="o", label=LABELS[m])
        ax.axvline(args.extrap_train_len, color="gray", ls=":", lw=1)
        ax.set(title=task.replace("_", " "), xscale="log", xlabel="test length", ylabel="accuracy", ylim=(-0.02, 1.02))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "recall_extrapolation.png", dpi=90)

    fig = Figure(figsize=(4.2 * len(args.long_models), 3.4))
    for ax, m in zip(fig.subplots(1, len(args.long_models), squeeze=False)[0], args.long_models):
        for depth in args.depths:
            r = runs.get(f"{long_key(args, 'passkey', m)}/depth{depth}")
            if r:
                pts = [(n, r["scores"][str(n)]) for n in args.passkey_lens if r["scores"].get(str(n)) is not None]
                if pts:
                    ax.plot(*zip(*pts), marker="o", label=f"depth {depth}")
        ax.set(title=LABELS[m], xscale="log", xlabel="length", ylabel="passkey exact", ylim=(-0.02, 1.02))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "recall_passkey.png", dpi=90)


# --------------------------------------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=DEFAULT_MODELS, choices=MODELS,
                   help="resnet_bk_lead (about 5x slower, at chance at this budget) is left out unless named")
    p.add_argument("--vocab", type=int, default=128, help="MQAR vocabulary (keys from the first half, values the second)")
    p.add_argument("--long-models", nargs="+", default=["resnet_bk", "resnet_bk_ss", "resnet_bk_recall", "resnet_bk_hold", "gpt2"],
                   choices=MODELS,
                   help="models of the extrapolation and passkey runs (Mamba's CPU scan makes them hours; --full adds it)")
    p.add_argument("--widths", type=int, nargs="+", default=[64])
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--seq-lens", type=int, nargs="+", default=[32, 64])
    p.add_argument("--pairs", type=int, nargs="+", default=[4, 8])
    p.add_argument("--steps", type=int, default=600,
                   help="optimizer steps per MQAR run (at 150 of batch 32 every model but GPT-2 stays at chance)")
    p.add_argument("--batch", type=int, default=64, help="MQAR batch size")
    p.add_argument("--long-batch", type=int, default=32,
                   help="batch size of the extrapolation runs (passkey: a quarter of it, its rows are 4x longer)")
    p.add_argument("--lrs", type=float, nargs="+", default=[3e-3, 1e-2], help="the per-model learning-rate sweep")
    p.add_argument("--sweep-len", type=int, default=64)
    p.add_argument("--extrap-train-len", type=int, default=256)
    p.add_argument("--extrap-lens", type=int, nargs="+", default=[256, 1024, 4096, 16384, 65536])
    p.add_argument("--extrap-steps", type=int, default=200)
    p.add_argument("--passkey-train-len", type=int, default=1024)
    p.add_argument("--passkey-lens", type=int, nargs="+", default=[1024, 2048, 4096, 8192, 16384, 32768])
    p.add_argument("--depths", type=float, nargs="+", default=[0.0, 0.25, 0.5, 0.75, 1.0])
    p.add_argument("--passkey-steps", type=int, default=200)
    p.add_argument("--passkey-batch", type=int, help="passkey batch size (default: a quarter of --long-batch, at least 4)")
    p.add_argument("--copy-steps", type=int, help="selective copying's optimizer steps (default: --extrap-steps)")
    p.add_argument("--copy-batch", type=int, help="selective copying's batch size (default: --long-batch)")
    p.add_argument("--copy-log-window", type=float, default=0.0, metavar="SHARE",
                   help="train selective copying with this share of rows packed into a log-uniform window "
                        "(SelectiveCopying.log_window); scored on the task's own uniform rows")
    p.add_argument("--induction-log-gap", type=float, default=0.0, metavar="SHARE",
                   help="train induction heads with this share of first triggers at a log-uniform distance from the "
                        "question (InductionHeads.log_gap); scored on uniform rows")
    p.add_argument("--passkey-log-gap", type=float, default=0.0, metavar="SHARE",
                   help="train passkey with this share of keys at a log-uniform distance from the question "
                        "(Passkey.log_gap); scored at fixed depths")
    p.add_argument("--min-examples", type=int, default=8,
                   help="held-out rows at the longest extrapolation lengths (--examples is cut as the rows grow)")
    p.add_argument("--passkey-examples", type=int, help="held-out rows per passkey depth and length (default --examples / 8)")
    p.add_argument("--examples", type=int, default=256, help="held-out examples per score (fewer at long lengths)")
    p.add_argument("--resnet-bk", default="{}", help="ResNetBKConfig fields as JSON, e.g. '{\"key_dim\": 4}'")
    p.add_argument("--threads", type=int, default=1, help="torch threads per run (1: robust when the machine is shared)")
    p.add_argument("--jobs", type=int, default=os.cpu_count() or 1,
                   help="runs in parallel, each in its own process (default: one per CPU core)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="toy sizes: the whole path in a few minutes")
    p.add_argument("--targets", action="store_true",
                   help="the recall issue's targets for the recommended shape (resnet_bk_hold) on one run: the long tasks "
                        "trained 3,000 steps (batch 8, passkey 4; selective copying 6,000 of batch 8) on both spacings "
                        "(--copy-log-window 0.5, --induction-log-gap 0.5, --passkey-log-gap 0.25), scored on 128-256 rows "
                        "(passkey 64); about 1.5 hours on 2 cores beside the MQAR runs it reuses; results in "
                        "results/recall_targets")
    p.add_argument("--full", action="store_true",
                   help="the issue's whole grid (widths 64 and 128, lengths 64-512, 4-64 pairs, Mamba everywhere, "
                        "longer training): many hours on a 2-core CPU, for a machine with more cores (--jobs)")
    p.add_argument("--reuse", action="store_true",
                   help="keep the finished runs of an earlier call with these settings (or these settings with more "
                        "lengths, pairs, widths or models: only the new runs run)")
    p.add_argument("--report-only", action="store_true",
                   help="redraw the report and plots from the runs stored in --out, running none (those missing are left out)")
    p.add_argument("--out", type=Path, help=f"where results go (default {RESULTS}, or recall_targets in it with --targets)")
    args = p.parse_args(argv)
    for knob in ("copy_log_window", "induction_log_gap", "passkey_log_gap"):
        if not 0.0 <= getattr(args, knob) <= 1.0:
            p.error(f"--{knob.replace('_', '-')} {getattr(args, knob)} is outside [0, 1]: give a share of the training rows")
    if args.targets:
        args.long_models, args.extrap_steps, args.long_batch, args.passkey_steps = ["resnet_bk_hold"], 3000, 8, 3000
        args.passkey_batch, args.copy_steps, args.copy_batch = 4, 6000, 8
        args.copy_log_window, args.induction_log_gap, args.passkey_log_gap = 0.5, 0.5, 0.25
        args.min_examples, args.passkey_examples = 128, 64
    args.out = args.out or (RESULTS / "recall_targets" if args.targets else RESULTS)
    if "mamba" in args.models and importlib.util.find_spec("mambapy") is None:  # else a silent ~12x slower scan
        p.error("Mamba runs need mambapy, or transformers falls back to its sequential scan: pip install 'hubtrain[bench]'")
    if args.full:
        args.widths, args.seq_lens, args.pairs = [64, 128], [64, 128, 256, 512], [4, 8, 16, 32, 64]
        args.lrs, args.sweep_len, args.extrap_steps, args.passkey_steps = [1e-3, 3e-3, 1e-2], 128, 600, 300
        args.long_models = list(MODELS)
    if args.quick:
        args.widths, args.seq_lens, args.pairs, args.steps, args.batch = [32], [32, 64], [4, 8], 40, 32
        args.lrs, args.sweep_len = [3e-3, 1e-2], 32
        args.extrap_train_len, args.extrap_lens, args.extrap_steps = 64, [64, 256, 1024, 4096], 60
        args.copy_steps = None  # selective copying at the toy budget too
        args.passkey_train_len, args.passkey_lens, args.depths, args.passkey_steps = 128, [128, 512], [0.0, 0.5, 1.0], 40
        args.examples = 64
    args.long_models = [m for m in args.long_models if m in args.models]  # each needs its swept learning rate

    from hubtrain.evaluation.recall import MQAR, InductionHeads, Passkey, SelectiveCopying

    args.out.mkdir(parents=True, exist_ok=True)
    store = Store(args.out / "recall.json", args.reuse or args.report_only)
    resnet_bk = json.loads(args.resnet_bk)
    settings = settings_of(args)
    if args.report_only and not store.data["runs"]:
        raise SystemExit(f"--report-only: no stored runs in {args.out / 'recall.json'}; run the benchmark first")
    runner = (lambda store, specs, jobs: 0) if args.report_only else run_all  # report-only: what is stored, nothing runs
    if store.data.get("settings") is not None and not same_runs(store.data["settings"], settings):
        raise SystemExit("--reuse: recall.json was made with other settings (beyond more grid points); drop --reuse "
                         "to start afresh")
    if not args.report_only:  # the calls that made the stored runs, in order (a grid may be filled in several calls)
        store.data["settings"] = settings
        command = " ".join(["python benchmarks/recall.py", *(sys.argv[1:] if argv is None else argv)])
        commands = store.data.setdefault("commands", [store.data["command"]] if "command" in store.data else [])
        if command not in commands:
            commands.append(command)
    print(f"recall benchmark: models {args.models}, widths {args.widths}; results in {args.out}", flush=True)

    def spec(m: str, d: int, max_len: int, task: Any, **kw: Any) -> dict[str, Any]:
        task_args = {f.name: getattr(task, f.name) for f in dataclasses.fields(task) if f.init}
        return dict(model=m, vocab=args.vocab, d=d, layers=args.layers, max_len=max_len, resnet_bk=resnet_bk,
                    task=task.name, task_args=task_args, batch=args.batch, seed=args.seed, examples=args.examples,
                    threads=args.threads, **kw)

    # 1. each model's learning rate: a sweep on one MQAR point
    sweep_task = MQAR(vocab=args.vocab, num_pairs=args.pairs[0])
    print(f"1/4 learning-rate sweep ({len(args.models) * len(args.lrs)} runs)", flush=True)
    sweep = {f"sweep/{m}/{lr:g}": spec(m, args.widths[0], args.sweep_len, sweep_task, train_len=args.sweep_len,
                                       test_lens=[args.sweep_len], steps=args.steps, lr=lr)
             for m in args.models for lr in args.lrs}
    ran = runner(store, sweep, args.jobs)
    chosen = {}
    for m in [m for m in args.models if store.get(f"sweep/{m}/{args.lrs[0]:g}")]:
        scores = {lr: store.get(f"sweep/{m}/{lr:g}")["scores"][str(args.sweep_len)] for lr in args.lrs}
        chosen[m] = max(scores, key=lambda lr: (scores[lr], -abs(math.log(lr / 3e-3))))
    store.data["lr"] = chosen
    # 2. MQAR grid
    grid = {}
    for d in args.widths:
        for n in args.seq_lens:
            for pairs in args.pairs:
                if 4 * pairs > n:
                    continue
                task = MQAR(vocab=args.vocab, num_pairs=pairs)
                for m in args.models:
                    grid[f"mqar/{m}/d{d}/n{n}/p{pairs}"] = spec(m, d, n, task, train_len=n, test_lens=[n],
                                                                steps=args.steps, lr=chosen.get(m))
    # the grid point the sweep ran at the chosen rate is the same run (same spec and seed): take it, not rerun it
    for key, run in grid.items():
        same = next((k for k, s in sweep.items() if s == run), None)
        if store.get(key) is None and same is not None and store.get(same) is not None:
            store.put(key, store.get(same))
    print(f"2/4 MQAR grid ({sum(store.get(k) is None for k in grid)} of {len(grid)} runs left)", flush=True)
    ran += runner(store, grid, args.jobs)
    # 3. extrapolation: trained at one length, tested far beyond it; 4. passkey
    d = args.widths[0]
    rest = {}
    for task in (SelectiveCopying(log_window=args.copy_log_window), InductionHeads(log_gap=args.induction_log_gap)):
        t = long_training(args, task.name)
        for m in args.long_models:
            rest[long_key(args, task.name, m)] = spec(
                m, d, args.extrap_train_len, task, train_len=args.extrap_train_len, test_lens=args.extrap_lens,
                steps=t["steps"], lr=chosen.get(m)) | {"batch": t["batch"], "min_examples": args.min_examples}
    t = long_training(args, "passkey")
    for m in args.long_models:
        rest[long_key(args, "passkey", m)] = spec(
            m, d, args.passkey_train_len, Passkey(log_gap=args.passkey_log_gap), train_len=args.passkey_train_len,
            test_lens=args.passkey_lens, depths=args.depths, steps=t["steps"], lr=chosen.get(m)) | {
            "batch": t["batch"], "examples": t["examples"]}
    print(f"3-4/4 extrapolation and passkey ({sum(store.get(k) is None for k in rest)} of {len(rest)} runs left)",
          flush=True)
    ran += runner(store, rest, args.jobs)
    for m in args.long_models:
        key = long_key(args, "passkey", m)
        for depth in args.depths if store.get(key) else []:
            store.data["runs"][f"{key}/depth{depth}"] = {"scores": store.get(key)["by_depth"][str(depth)]}
    if not args.report_only and (ran or store.get("done") is None):  # a report redrawn from stored runs keeps the date they were finished
        store.put("done", {"at": time.strftime("%Y-%m-%d %H:%M")})
    print(report(store, args, args.out))
    plots(store, args, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
