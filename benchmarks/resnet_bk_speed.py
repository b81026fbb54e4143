"""Speed benchmark: ResNet-BK vs GPT-2 vs Mamba at equal width and depth, on CPU.

What it measures, side by side in one run (issue 3, item 5):

* forward+backward tokens/s of a causal LM (loss on every position, gradients for every parameter, no optimiser
  step) for sequence lengths 512 .. 16384;
* peak memory of each of those runs: every configuration runs in a fresh subprocess, so its ``ru_maxrss`` is its
  own; we report the peak and the growth over the resident size just before the first step (the "training memory");
* decode latency per token with the cache at context 128 and 8192 (ResNet-BK: its O(1) recurrent state;
  GPT-2: its KV cache).

The models: ``ResNetBKForCausalLM`` (hubtrain), ``GPT2LMHeadModel`` (transformers, SDPA attention) and Mamba from
the ``mambapy`` package (pure PyTorch with a parallel scan; transformers' own Mamba PyTorch path is far slower on
CPU). A configuration whose predicted run time exceeds ``--budget`` seconds is skipped, and the table says so.

    python benchmarks/resnet_bk_speed.py                # the full run (several minutes on 2 cores)
    python benchmarks/resnet_bk_speed.py --quick        # a smoke run

Outputs ``benchmarks/results/resnet_bk_speed.{md,png,json}`` and prints the table with the target verdicts.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
MODELS = ("resnet_bk", "gpt2", "mamba")
LABELS = {"resnet_bk": "ResNet-BK", "gpt2": "GPT-2 (sdpa)", "mamba": "Mamba (mambapy)"}


# --------------------------------------------------------------------------------------------------------------
# Worker: one configuration, in its own process
# --------------------------------------------------------------------------------------------------------------
def _rss_kib() -> int:
    """Current resident set size in KiB (Linux)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024


def build_model(name: str, *, width: int, layers: int, vocab: int, max_len: int, resnet_bk_overrides: dict):
    import torch

    if name == "resnet_bk":
        from hubtrain.models.resnet_bk import ResNetBKConfig, ResNetBKForCausalLM

        config = ResNetBKConfig(vocab_size=vocab, d_model=width, n_layers=layers, n_seq=min(max_len, 2048),
                                dropout_p=0.0, **resnet_bk_overrides)
        return ResNetBKForCausalLM(config)
    if name == "gpt2":
        from transformers import GPT2Config, GPT2LMHeadModel

        config = GPT2Config(vocab_size=vocab, n_embd=width, n_layer=layers, n_head=max(1, width // 64),
                            n_positions=max_len, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
        model = GPT2LMHeadModel._from_config(config, attn_implementation="sdpa")
        assert model.config._attn_implementation == "sdpa"
        return model
    if name == "mamba":
        return MambaLM(width=width, layers=layers, vocab=vocab)
    raise ValueError(f"unknown model {name!r}; choose from {', '.join(MODELS)}")


def MambaLM(*, width: int, layers: int, vocab: int):
    """mambapy's language model (embedding, Mamba blocks, RMSNorm, head), as in ``mambapy.lm.LM``.

    ``mambapy.lm`` also imports its Mamba-2 module, which needs the CUDA-only ``mamba_ssm``; the Mamba-1 parts it
    wraps are pure PyTorch, so we compose them the same way here.
    """
    import torch.nn as nn
    from mambapy.mamba import Mamba, MambaConfig, RMSNorm

    config = MambaConfig(d_model=width, n_layers=layers, pscan=True)

    class LM(nn.Module):
        def __init__(self):
            super().__init__()
            self.embedding = nn.Embedding(vocab, width)
            self.mamba = Mamba(config)
            self.norm_f = RMSNorm(width, config.rms_norm_eps)
            self.lm_head = nn.Linear(width, vocab, bias=False)

        def forward(self, tokens):
            return self.lm_head(self.norm_f(self.mamba(self.embedding(tokens))))

    return LM()


def _logits(model, name: str, ids):
    return model(ids) if name == "mamba" else model(input_ids=ids).logits


def worker_train(args) -> dict:
    import torch
    import torch.nn.functional as F

    torch.manual_seed(0)
    model = build_model(args.model, width=args.width, layers=args.layers, vocab=args.vocab, max_len=args.n,
                        resnet_bk_overrides=json.loads(args.resnet_bk_overrides))
    model.train()
    ids = torch.randint(0, args.vocab, (args.batch, args.n))
    n_params = sum(p.numel() for p in model.parameters())

    def step() -> float:
        t0 = time.perf_counter()
        logits = _logits(model, args.model, ids)
        loss = F.cross_entropy(logits[:, :-1].reshape(-1, logits.size(-1)), ids[:, 1:].reshape(-1))
        loss.backward()
        model.zero_grad(set_to_none=True)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"{args.model} produced a non-finite loss at N={args.n}")
        return time.perf_counter() - t0

    base_kib = _rss_kib()
    warm = step()  # first step pays for allocations and one-off kernel selection
    times = []
    # Time at least one step; more while short, so small N are not dominated by noise.
    while not times or (sum(times) < args.min_time and len(times) < 50 and warm < args.min_time):
        times.append(step())
    times.sort()
    median = times[len(times) // 2]
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"model": args.model, "n": args.n, "batch": args.batch, "params": n_params, "warmup_s": warm,
            "steps": len(times), "step_s": median, "tokens_per_s": args.batch * args.n / median,
            "peak_rss_mib": peak_kib / 1024, "base_rss_mib": base_kib / 1024,
            "train_mem_mib": (peak_kib - base_kib) / 1024}


def worker_decode(args) -> dict:
    """Per-token decode latency at every context in ``args.contexts``, measured in one process, interleaved.

    One cache per context is prefilled first; then the timed single-token steps alternate between the contexts, so
    a change in the machine's load hits every context alike and the latency ratio stays meaningful.
    """
    import torch

    from hubtrain.compat import cache_kwarg, output_cache

    contexts = [int(c) for c in args.contexts.split(",")]
    torch.manual_seed(0)
    model = build_model(args.model, width=args.width, layers=args.layers, vocab=args.vocab,
                        max_len=max(contexts) + args.decode_steps + 8,
                        resnet_bk_overrides=json.loads(args.resnet_bk_overrides))
    model.eval()
    state, times, prefill = {}, {c: [] for c in contexts}, {}
    with torch.inference_mode():
        for c in contexts:
            ids = torch.randint(0, args.vocab, (1, c))
            t0 = time.perf_counter()
            out = model(input_ids=ids, use_cache=True)
            prefill[c] = time.perf_counter() - t0
            state[c] = (output_cache(out), out.logits[:, -1:].argmax(-1))
        for _ in range(args.decode_steps):
            for c in contexts:
                past, token = state[c]
                t0 = time.perf_counter()
                out = model(input_ids=token, use_cache=True, **{cache_kwarg(): past})
                state[c] = (output_cache(out), out.logits[:, -1:].argmax(-1))
                times[c].append(time.perf_counter() - t0)
    result = {}
    for c in contexts:
        ts = sorted(times[c][2:])  # the first steps warm the one-token kernels
        result[c] = {"model": args.model, "context": c, "prefill_s": prefill[c], "steps": len(ts),
                     "ms_per_token": 1e3 * ts[len(ts) // 2]}
    return result


# --------------------------------------------------------------------------------------------------------------
# Driver
# --------------------------------------------------------------------------------------------------------------
def run_worker(mode: str, model: str, n: int, args, timeout: float) -> dict:
    cmd = [sys.executable, __file__, "--worker", mode, "--model", model, "--n", str(n), "--width", str(args.width),
           "--layers", str(args.layers), "--batch", str(args.batch), "--vocab", str(args.vocab),
           "--threads", str(args.threads), "--min-time", str(args.min_time),
           "--decode-steps", str(args.decode_steps), "--contexts", args.contexts,
           "--resnet-bk-overrides", args.resnet_bk_overrides]
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
    src = str(ROOT / "src")
    env["PYTHONPATH"] = src + os.pathsep + env.get("PYTHONPATH", "")
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return {"skipped": f"timed out after {timeout:.0f} s"}
    if proc.returncode != 0:
        lines = [line for line in proc.stderr.strip().splitlines() if line.strip()]
        return {"error": lines[-1] if lines else f"exit code {proc.returncode}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def fit_exponent(ns: list[int], ys: list[float]) -> float | None:
    """Least-squares slope of log y against log N: y ~ N^slope."""
    if len(ns) < 2:
        return None
    lx, ly = [math.log(n) for n in ns], [math.log(y) for y in ys]
    mx, my = sum(lx) / len(lx), sum(ly) / len(ly)
    return sum((a - mx) * (b - my) for a, b in zip(lx, ly)) / sum((a - mx) ** 2 for a in lx)


def predict_seconds(points: list[tuple[int, float]], n: int) -> float | None:
    """Extrapolate the step time at ``n`` from the last two measured lengths (never assuming better than linear)."""
    if not points:
        return None
    if len(points) == 1:
        (n0, t0), slope = points[0], 2.0
    else:
        (n1, t1), (n0, t0) = points[-2], points[-1]
        slope = min(2.0, max(1.0, math.log(t0 / t1) / math.log(n0 / n1)))  # noisy timings: stay within 1..2
    return t0 * (n / n0) ** slope


def _fmt(x: float | None, spec: str = ".0f") -> str:
    return "-" if x is None else format(x, spec)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="smoke run: N = 256, 512; contexts 32, 128; 6 decode steps")
    p.add_argument("--models", default=",".join(MODELS), help="comma-separated subset of " + ", ".join(MODELS))
    p.add_argument("--lengths", default="512,1024,2048,4096,8192,16384", help="sequence lengths N")
    p.add_argument("--contexts", default="128,8192", help="decode context lengths")
    p.add_argument("--width", type=int, default=256)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--vocab", type=int, default=256, help="vocabulary size (byte-level by default, so the output "
                   "layer does not hide the mixers' costs)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--min-time", type=float, default=3.0, help="seconds of timed steps per configuration")
    p.add_argument("--budget", type=float, default=150.0, help="skip a configuration predicted to take longer")
    p.add_argument("--decode-steps", type=int, default=34)
    p.add_argument("--resnet-bk-overrides", default="{}", help="JSON of extra ResNetBKConfig fields")
    p.add_argument("--keep-others", action="store_true", help="re-measure only --models and take the other models' "
                   "rows from the previous run's JSON at --out (same width, depth, batch, vocabulary and threads)")
    p.add_argument("--out", type=Path, default=RESULTS / "resnet_bk_speed")
    p.add_argument("--worker", choices=("train", "decode"), help=argparse.SUPPRESS)
    p.add_argument("--model", help=argparse.SUPPRESS)
    p.add_argument("--n", type=int, help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    if args.worker:
        import torch

        torch.set_num_threads(args.threads)
        result = worker_train(args) if args.worker == "train" else worker_decode(args)
        print(json.dumps(result))
        return 0

    if args.quick:
        args.lengths, args.contexts, args.decode_steps, args.min_time = "256,512", "32,128", 6, 0.5
        if args.out == RESULTS / "resnet_bk_speed":
            args.out = RESULTS / "resnet_bk_speed_quick"
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    for m in models:
        if m not in MODELS:
            p.error(f"unknown model {m!r} in --models; choose from {', '.join(MODELS)}")
    lengths = sorted(int(x) for x in args.lengths.split(","))
    contexts = sorted(int(x) for x in args.contexts.split(","))

    from rich.progress import Progress

    args.load_before = os.getloadavg()[0]
    train: dict[str, dict[int, dict]] = {m: {} for m in models}
    decode: dict[str, dict[int, dict]] = {m: {} for m in models if m != "mamba"}
    jobs = len(models) * len(lengths) + len(decode)
    with Progress() as progress:
        task = progress.add_task("benchmark", total=jobs)
        for m in models:
            points: list[tuple[int, float]] = []
            for n in lengths:
                progress.update(task, description=f"{LABELS[m]} N={n} fwd+bwd")
                guess = predict_seconds(points, n)
                if guess is not None and 2 * guess > args.budget:  # warm-up step + one timed step
                    train[m][n] = {"skipped": f"predicted {2 * guess:.0f} s > budget {args.budget:.0f} s"}
                else:
                    train[m][n] = r = run_worker("train", m, n, args, timeout=2 * args.budget + 60)
                    if "step_s" in r:
                        points.append((n, r["step_s"]))
                progress.advance(task)
            if m in decode:
                progress.update(task, description=f"{LABELS[m]} decode at contexts {args.contexts}")
                r = run_worker("decode", m, 0, args, timeout=2 * args.budget + 60)
                decode[m] = {c: r.get(str(c), r) if "error" not in r and "skipped" not in r else r
                             for c in contexts}
                progress.advance(task)

    args.load_after = os.getloadavg()[0]
    args.finished_at = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    args.kept_from = None
    if args.keep_others:
        models = merge_previous(args, models, lengths, contexts, train, decode)
    report = make_report(args, models, lengths, contexts, train, decode)
    print(report["markdown"])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    from hubtrain.utils import write_text_atomic

    write_text_atomic(args.out.with_suffix(".md"), report["markdown"])
    write_text_atomic(args.out.with_suffix(".json"), json.dumps(
        {"args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
         "train": train, "decode": decode, "verdicts": report["verdicts"]}, indent=2))
    plot(args, models, lengths, train, args.out.with_suffix(".png"))
    print(f"wrote {args.out.with_suffix('.md')}, .json and .png")
    return 0


def merge_previous(args, models, lengths, contexts, train, decode) -> list[str]:
    """Fill in the models not re-measured now from the previous run's JSON (refusing a different set-up)."""
    path = args.out.with_suffix(".json")
    if not path.is_file():
        raise FileNotFoundError(f"--keep-others needs a previous run's results at {path}; run without it first")
    old = json.loads(path.read_text())
    for key in ("width", "layers", "batch", "vocab", "threads"):
        if old["args"][key] != getattr(args, key):
            raise ValueError(f"--keep-others: the previous run used {key}={old['args'][key]!r}, this one "
                             f"{getattr(args, key)!r}; re-run all models instead")
    for m in MODELS:
        if m in models or m not in old["train"]:
            continue
        train[m] = {int(n): r for n, r in old["train"][m].items() if int(n) in lengths}
        if m in old["decode"]:
            decode[m] = {int(c): r for c, r in old["decode"][m].items() if int(c) in contexts}
    when = old["args"].get("finished_at") or time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(path.stat().st_mtime))
    kept = ", ".join(LABELS[m] for m in MODELS if m in train and m not in models)
    args.kept_from = f"the rows of {kept} are kept from the run finished {when}"
    return [m for m in MODELS if m in train]


def make_report(args, models, lengths, contexts, train, decode) -> dict:
    def cell(r: dict, key: str, spec: str = ".0f") -> str:
        if "skipped" in r:
            return f"skipped ({r['skipped']})"
        if "error" in r:
            return f"error: {r['error'][:80]}"
        return format(r[key], spec)

    command = "python benchmarks/resnet_bk_speed.py " + " ".join(sys.argv[1:])
    lines = [f"Command: `{command.strip()}`", "",
             f"CPU, {args.threads} threads, width {args.width}, {args.layers} layers, batch {args.batch}, "
             f"vocabulary {args.vocab}, float32; torch {_version('torch')}, transformers {_version('transformers')}, "
             f"mambapy {_version('mambapy')}. Load average of the machine: {args.load_before:.1f} at the start, "
             f"{args.load_after:.1f} at the end (on {os.cpu_count()} cores). Finished {args.finished_at}"
             + (f"; {args.kept_from}." if args.kept_from else "."), "",
             "### Forward+backward tokens/s (higher is better)", "",
             "| N | " + " | ".join(LABELS[m] for m in models) + " |", "|---:|" + "---:|" * len(models)]
    for n in lengths:
        lines.append(f"| {n} | " + " | ".join(cell(train[m][n], "tokens_per_s") for m in models) + " |")
    lines += ["", "### Peak memory of the training step, MiB (growth over the RSS before the first step; "
              "peak RSS in brackets)", "", "| N | " + " | ".join(LABELS[m] for m in models) + " |",
              "|---:|" + "---:|" * len(models)]
    for n in lengths:
        row = []
        for m in models:
            r = train[m][n]
            row.append(cell(r, "train_mem_mib") + ("" if "train_mem_mib" not in r else f" ({r['peak_rss_mib']:.0f})"))
        lines.append(f"| {n} | " + " | ".join(row) + " |")

    lines += ["", "### Fitted growth exponents over N >= 1024 (time per step ~ N^a, training memory ~ N^b)", "",
              "| model | a (time) | b (memory) |", "|---|---:|---:|"]
    exps = {}
    for m in models:
        ok = [(n, r) for n, r in train[m].items() if "step_s" in r and n >= 1024]
        a = fit_exponent([n for n, _ in ok], [r["step_s"] for _, r in ok])
        b = fit_exponent([n for n, _ in ok], [max(r["train_mem_mib"], 1e-3) for _, r in ok])
        exps[m] = (a, b, [n for n, _ in ok])
        lines.append(f"| {LABELS[m]} | {_fmt(a, '.2f')} | {_fmt(b, '.2f')} |")

    if decode:
        lines += ["", "### Decode latency per token with the cache, ms (batch 1)", "",
                  "| context | " + " | ".join(LABELS[m] for m in decode) + " |", "|---:|" + "---:|" * len(decode)]
        for c in contexts:
            lines.append(f"| {c} | " + " | ".join(cell(decode[m][c], "ms_per_token", ".2f") for m in decode) + " |")

    verdicts = targets(train, decode, exps, contexts) if "resnet_bk" in models else []
    if verdicts:
        lines += ["", "### Targets (issue 3)", "", "| target | measured | verdict |", "|---|---|---|"]
        lines += [f"| {t} | {v} | {'PASS' if ok else 'MISS'} |" for t, v, ok in verdicts]
    return {"markdown": "\n".join(lines) + "\n", "verdicts": [list(v) for v in verdicts]}


def targets(train, decode, exps, contexts) -> list[tuple[str, str, bool]]:
    out = []
    rb = train["resnet_bk"].get(4096, {})
    for peer, factor in (("mamba", 3.0), ("gpt2", 2.0)):
        other = train.get(peer, {}).get(4096, {})
        if "tokens_per_s" in rb and "tokens_per_s" in other:
            ratio = rb["tokens_per_s"] / other["tokens_per_s"]
            out.append((f"N=4096 fwd+bwd >= {factor:g}x {LABELS[peer]}", f"{ratio:.2f}x", ratio >= factor))
    a, b, ns = exps["resnet_bk"]
    if a is not None:
        span = f"N={min(ns)}..{max(ns)}"
        out.append(("time grows at most N^1.15 from 1024 to 16384", f"N^{a:.2f} ({span})", a <= 1.15 and max(ns) >= 16384))
    if b is not None:
        out.append(("peak training memory linear in N", f"N^{b:.2f} ({span})", b <= 1.1))
    d = decode.get("resnet_bk", {})
    if len(contexts) >= 2 and all("ms_per_token" in d.get(c, {}) for c in (contexts[0], contexts[-1])):
        ratio = d[contexts[-1]]["ms_per_token"] / d[contexts[0]]["ms_per_token"]
        out.append((f"decode latency at {contexts[-1]} within 1.2x of {contexts[0]}", f"{ratio:.2f}x", ratio <= 1.2))
    return out


def _version(pkg: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(pkg)
    except PackageNotFoundError:
        return "not installed"


def plot(args, models, lengths, train, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    from hubtrain.utils import atomic_path

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    for m in models:
        ok = [(n, r) for n, r in sorted(train[m].items()) if "tokens_per_s" in r]
        if not ok:
            continue
        ns = [n for n, _ in ok]
        ax1.plot(ns, [r["tokens_per_s"] for _, r in ok], "o-", label=LABELS[m])
        ax2.plot(ns, [r["train_mem_mib"] for _, r in ok], "o-", label=LABELS[m])
    ax1.set(xscale="log", yscale="log", xlabel="sequence length N", ylabel="tokens/s (forward+backward)",
            title=f"Training throughput, width {args.width}, {args.layers} layers")
    ax2.set(xscale="log", yscale="log", xlabel="sequence length N", ylabel="MiB",
            title="Peak training memory (growth over baseline RSS)")
    for ax in (ax1, ax2):
        ax.set_xticks(lengths, [str(n) for n in lengths])
        ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
