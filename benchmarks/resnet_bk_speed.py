"""Speed benchmark: ResNet-BK vs GPT-2 vs Mamba at equal width and depth, on CPU.

What it measures, side by side in one run (issue 3, item 5):

* forward+backward tokens/s of a causal LM (loss on every position, gradients for every parameter, no optimiser
  step) for sequence lengths 512 .. 16384;
* peak memory of each of those runs: every configuration runs in a fresh subprocess, so its ``ru_maxrss`` is its
  own; we report the peak and the growth over the resident size just before the first step (the "training memory");
* forward+backward tokens/s at the short lengths people train small models at (N = 64 and 256, batch 16);
* decode tokens/s with the cache at batch 1, 8 and 32 and contexts 128 / 2k / 8k, for ResNet-BK eager,
  ResNet-BK compiled (``torch.compile`` of its flat decode step, static shapes), ResNet-BK ONNX (the exported
  decode step in onnxruntime), GPT-2 with its KV cache and Mamba (transformers, mambapy path) with its cache. Each
  context is prefilled once at batch 1 with real tokens and the state repeated to the batch
  (``batch_repeat_interleave``), so batch 32 at 8k costs one 8k prefill, not 32;
* the arithmetic limit of each configuration: its multiply-adds (counted by ``torch.utils.flop_counter`` on the
  real step) divided by this machine's matmul throughput, measured in the same run. The tables show how far each
  number is from it.

The models: ``ResNetBKForCausalLM`` (hubtrain), ``GPT2LMHeadModel`` (transformers, SDPA attention) and Mamba: for
training, the ``mambapy`` package (pure PyTorch with a parallel scan; transformers' own Mamba PyTorch path is far
slower on CPU); for decoding, transformers' ``MambaForCausalLM`` with ``use_mambapy=True`` and its own cache. A
configuration whose predicted run time exceeds ``--budget`` seconds is skipped, and the table says so.

    python benchmarks/resnet_bk_speed.py                # the full run (about 20 minutes on 2 cores)
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
    flops = count_flops(step) if args.batch * args.n <= 8192 else None  # one more step: only where steps are cheap
    return {"model": args.model, "n": args.n, "batch": args.batch, "params": n_params, "warmup_s": warm,
            "steps": len(times), "step_s": median, "tokens_per_s": args.batch * args.n / median,
            "peak_rss_mib": peak_kib / 1024, "base_rss_mib": base_kib / 1024,
            "train_mem_mib": (peak_kib - base_kib) / 1024, "flops_per_step": flops}


DECODERS = ("resnet_bk", "resnet_bk_compiled", "resnet_bk_onnx", "gpt2", "mamba")
DECODE_LABELS = {"resnet_bk": "ResNet-BK eager", "resnet_bk_compiled": "ResNet-BK compiled",
                 "resnet_bk_onnx": "ResNet-BK ONNX", "gpt2": "GPT-2 (sdpa, KV cache)",
                 "mamba": "Mamba (transformers, mambapy)"}


def matmul_gflops(threads: int) -> float:
    """This machine's float32 matmul throughput at ``threads`` threads, GFLOP/s (best of a few 1024^3 products)."""
    import torch

    torch.set_num_threads(threads)
    a, b = torch.randn(1024, 1024), torch.randn(1024, 1024)
    a @ b
    best = min(_timed(lambda: a @ b) for _ in range(8))
    return 2 * 1024**3 / best / 1e9


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def count_flops(fn) -> int:
    """Floating-point operations of the matmuls, convolutions and attention that ``fn()`` runs (2 per multiply-add).

    torch's counter knows the CUDA attention kernels; the CPU one (``_scaled_dot_product_flash_attention_for_cpu``)
    gets the same formula here (all query-key pairs, as for the CUDA kernels, causal or not).
    """
    import torch
    from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop_count, sdpa_flop_count

    def forward(query, key, value, *args, out_shape=None, **kwargs) -> int:
        return sdpa_flop_count(query, key, value)

    def backward(grad_out, query, key, value, *args, out_shape=None, **kwargs) -> int:
        return sdpa_backward_flop_count(grad_out, query, key, value)

    aten = torch.ops.aten
    mapping = {aten._scaled_dot_product_flash_attention_for_cpu: forward,
               aten._scaled_dot_product_flash_attention_for_cpu_backward: backward}
    with FlopCounterMode(display=False, custom_mapping=mapping) as counter:
        fn()
    return int(counter.get_total_flops())


def decode_model(name: str, args, max_len: int):
    """The eager model behind a decode row (the compiled and ONNX rows wrap ResNet-BK)."""
    overrides = json.loads(args.resnet_bk_overrides)
    if name == "mamba":
        from transformers import MambaConfig, MambaForCausalLM

        config = MambaConfig(vocab_size=args.vocab, hidden_size=args.width, num_hidden_layers=args.layers,
                             use_mambapy=True)
        return MambaForCausalLM(config)
    base = "resnet_bk" if name.startswith("resnet_bk") else name
    return build_model(base, width=args.width, layers=args.layers, vocab=args.vocab, max_len=max_len,
                       resnet_bk_overrides=overrides)


def repeat_rows(cache, repeats: int) -> None:
    """Repeat every row of a cache ``repeats`` times, in place (transformers' ``batch_repeat_interleave``; its
    linear-attention layers, Mamba's, lack one, so their conv and recurrent states are repeated here)."""
    layers = getattr(cache, "layers", [])
    if not any(hasattr(layer, "conv_states") for layer in layers):
        cache.batch_repeat_interleave(repeats)
        return
    for layer in layers:
        for states in (layer.conv_states, layer.recurrent_states):
            for i, t in states.items():
                if t is not None:
                    states[i] = t.repeat_interleave(repeats, dim=0)


class FlatStep:
    """ResNet-BK's decode step on flat state tensors: compiled with torch.compile, or exported and run in
    onnxruntime. ``__call__(tokens (B,), state) -> (logits (B, V), state)``."""

    def __init__(self, model, kind: str, threads: int) -> None:
        import tempfile

        import torch

        from hubtrain.export.decode import DecodeStep, OnnxGenerator, export_decode_step_to_onnx

        self.kind, self.step = kind, DecodeStep(model)
        if kind == "compiled":
            self.fn = torch.compile(self.step, dynamic=False)
        else:
            self._tmp = tempfile.TemporaryDirectory()
            path, _ = export_decode_step_to_onnx(model, Path(self._tmp.name) / "decode_step.onnx")
            self.onnx = OnnxGenerator(path, num_threads=threads)

    def flatten(self, cache) -> list:
        flat = cache.to_tensors()
        return [flat[n] for n in self.step.names] if self.kind == "compiled" else [flat[n].numpy() for n in self.step.names]

    def __call__(self, tokens, state):
        import torch

        if self.kind == "compiled":
            logits, *state = self.fn(tokens[:, None], *state)
            return logits, state
        logits, state = self.onnx.step(tokens.numpy(), state)
        return torch.from_numpy(logits), state


def worker_decode(args) -> dict:
    """Decode tokens/s for one model at every (context, batch) of the grid, measured in one process, interleaved.

    Each context is prefilled once at batch 1 with real tokens; its state is repeated to every batch size. Then
    the timed one-token steps go round all (context, batch) pairs in turn, so a change in the machine's load hits
    every cell alike. Also counts each cell's FLOPs per step.
    """
    import copy

    import torch

    from hubtrain.compat import cache_kwarg, output_cache

    contexts = [int(c) for c in args.contexts.split(",")]
    batches = [int(b) for b in args.decode_batches.split(",")]
    torch.manual_seed(0)
    model = decode_model(args.model, args, max(contexts) + args.decode_steps + 8).eval()
    flat = FlatStep(model, args.model.rsplit("_", 1)[1], args.threads) if args.model in ("resnet_bk_compiled", "resnet_bk_onnx") else None
    cells, times, flops, first = {}, {}, {}, {}
    with torch.inference_mode():
        for c in contexts:
            ids = torch.randint(0, args.vocab, (1, c))
            out = model(input_ids=ids, use_cache=True)
            token = out.logits[:, -1].argmax(-1)
            for b in batches:
                cache = copy.deepcopy(output_cache(out))
                repeat_rows(cache, b)
                state = flat.flatten(cache) if flat is not None else cache
                cells[c, b] = (state, token.repeat(b))
                times[c, b] = []

        def one(c: int, b: int) -> None:
            state, token = cells[c, b]
            if flat is not None:
                logits, state = flat(token, state)
            else:
                out = model(input_ids=token[:, None], use_cache=True, **{cache_kwarg(): state})
                logits, state = out.logits[:, -1], output_cache(out)
            cells[c, b] = (state, logits.argmax(-1))

        for c, b in cells:  # warm-up (compiles each shape once) and FLOP count, on a copy of the state
            saved = copy.deepcopy(cells[c, b])
            t0 = time.perf_counter()
            one(c, b)
            first[c, b] = time.perf_counter() - t0
            cells[c, b] = copy.deepcopy(saved)
            if flat is None:
                flops[c, b] = count_flops(lambda: one(c, b))
            else:  # the compiled and ONNX graphs are this eager step's graph
                state, token = cells[c, b]
                flops[c, b] = count_flops(lambda: flat.step(token[:, None], *map(torch.as_tensor, state)))
            cells[c, b] = saved
        for _ in range(args.decode_steps):
            for c, b in cells:
                t0 = time.perf_counter()
                one(c, b)
                times[c, b].append(time.perf_counter() - t0)
    result = {}
    for (c, b), ts in times.items():
        ts = sorted(ts[1:])
        median = ts[len(ts) // 2]
        result[f"{c},{b}"] = {"model": args.model, "context": c, "batch": b, "steps": len(ts), "first_step_s": first[c, b],
                              "ms_per_step": 1e3 * median, "tokens_per_s": b / median, "flops_per_step": flops[c, b]}
    return result


# --------------------------------------------------------------------------------------------------------------
# Driver
# --------------------------------------------------------------------------------------------------------------
def run_worker(mode: str, model: str, n: int, args, timeout: float, batch: int | None = None) -> dict:
    cmd = [sys.executable, __file__, "--worker", mode, "--model", model, "--n", str(n), "--width", str(args.width),
           "--layers", str(args.layers), "--batch", str(batch or args.batch), "--vocab", str(args.vocab),
           "--threads", str(args.threads), "--min-time", str(args.min_time),
           "--decode-steps", str(args.decode_steps), "--contexts", args.contexts,
           "--decode-batches", args.decode_batches, "--resnet-bk-overrides", args.resnet_bk_overrides]
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
    p.add_argument("--quick", action="store_true", help="smoke run: N = 256, 512; contexts 32, 128; batches 1, 4; "
                   "4 decode steps")
    p.add_argument("--models", default=",".join(MODELS), help="training rows: comma-separated subset of " + ", ".join(MODELS))
    p.add_argument("--decoders", default=",".join(DECODERS), help="decode rows: comma-separated subset of " + ", ".join(DECODERS))
    p.add_argument("--lengths", default="512,1024,2048,4096,8192,16384", help="sequence lengths N (batch --batch)")
    p.add_argument("--short-lengths", default="64,256", help="short sequence lengths N, at batch --short-batch")
    p.add_argument("--short-batch", type=int, default=16)
    p.add_argument("--contexts", default="128,2048,8192", help="decode context lengths")
    p.add_argument("--decode-batches", default="1,8,32", help="decode batch sizes")
    p.add_argument("--width", type=int, default=256)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--vocab", type=int, default=256, help="vocabulary size (byte-level by default, so the output "
                   "layer does not hide the mixers' costs)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--min-time", type=float, default=3.0, help="seconds of timed steps per configuration")
    p.add_argument("--budget", type=float, default=150.0, help="skip a configuration predicted to take longer")
    p.add_argument("--decode-steps", type=int, default=24, help="timed steps per (context, batch) cell")
    p.add_argument("--resnet-bk-overrides", default="{}", help="JSON of extra ResNetBKConfig fields")
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
        args.lengths, args.short_lengths, args.contexts, args.decode_batches = "256,512", "64", "32,128", "1,4"
        args.decode_steps, args.min_time = 4, 0.5
        if args.out == RESULTS / "resnet_bk_speed":
            args.out = RESULTS / "resnet_bk_speed_quick"
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    decoders = [m.strip() for m in args.decoders.split(",") if m.strip()]
    for m in models:
        if m not in MODELS:
            p.error(f"unknown model {m!r} in --models; choose from {', '.join(MODELS)}")
    for m in decoders:
        if m not in DECODERS:
            p.error(f"unknown decoder {m!r} in --decoders; choose from {', '.join(DECODERS)}")
    lengths = sorted(int(x) for x in args.lengths.split(","))
    short = sorted(int(x) for x in args.short_lengths.split(",") if x)
    contexts = sorted(int(x) for x in args.contexts.split(","))
    batches = sorted(int(x) for x in args.decode_batches.split(","))

    from rich.progress import Progress

    args.load_before = os.getloadavg()[0]
    args.matmul_gflops = matmul_gflops(args.threads)
    train: dict[str, dict[int, dict]] = {m: {} for m in models}
    train_short: dict[str, dict[int, dict]] = {m: {} for m in models}
    decode: dict[str, dict[str, dict]] = {}
    jobs = len(models) * (len(lengths) + len(short)) + len(decoders)
    with Progress() as progress:
        task = progress.add_task("benchmark", total=jobs)
        for m in models:
            for n in short:
                progress.update(task, description=f"{LABELS[m]} N={n} batch {args.short_batch} fwd+bwd")
                train_short[m][n] = run_worker("train", m, n, args, timeout=2 * args.budget + 60, batch=args.short_batch)
                progress.advance(task)
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
        for m in decoders:
            progress.update(task, description=f"{DECODE_LABELS[m]} decode, contexts {args.contexts}, batches {args.decode_batches}")
            r = run_worker("decode", m, 0, args, timeout=6 * args.budget + 300)
            decode[m] = {f"{c},{b}": r.get(f"{c},{b}", r) if "error" not in r and "skipped" not in r else r
                         for c in contexts for b in batches}
            progress.advance(task)

    args.load_after = os.getloadavg()[0]
    args.finished_at = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    report = make_report(args, models, lengths, short, contexts, batches, train, train_short, decode)
    print(report["markdown"])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    from hubtrain.utils import write_text_atomic

    write_text_atomic(args.out.with_suffix(".md"), report["markdown"])
    write_text_atomic(args.out.with_suffix(".json"), json.dumps(
        {"args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
         "train": train, "train_short": train_short, "decode": decode, "verdicts": report["verdicts"]}, indent=2))
    plot(args, models, lengths, train, decode, contexts, batches, args.out.with_suffix(".png"))
    print(f"wrote {args.out.with_suffix('.md')}, .json and .png")
    return 0


def limit_tokens_per_s(r: dict, tokens: int, gflops: float) -> float | None:
    """Tokens/s if the step's FLOPs ran at the machine's measured matmul throughput."""
    if not r.get("flops_per_step"):
        return None
    return tokens / (r["flops_per_step"] / (gflops * 1e9))


def make_report(args, models, lengths, short, contexts, batches, train, train_short, decode) -> dict:
    def cell(r: dict, key: str, spec: str = ".0f") -> str:
        if "skipped" in r:
            return f"skipped ({r['skipped']})"
        if "error" in r:
            return f"error: {r['error'][:80]}"
        return format(r[key], spec)

    def with_limit(r: dict, tokens: int) -> str:
        text = cell(r, "tokens_per_s")
        limit = limit_tokens_per_s(r, tokens, args.matmul_gflops) if "tokens_per_s" in r else None
        return text if limit is None else f"{text} ({100 * r['tokens_per_s'] / limit:.0f}% of {limit:,.0f})"

    command = "python benchmarks/resnet_bk_speed.py " + " ".join(sys.argv[1:])
    lines = [f"Command: `{command.strip()}`", "",
             f"CPU, {args.threads} threads, width {args.width}, {args.layers} layers, vocabulary {args.vocab}, float32; "
             f"torch {_version('torch')}, transformers {_version('transformers')}, mambapy {_version('mambapy')}, "
             f"onnxruntime {_version('onnxruntime')}. Measured matmul throughput: {args.matmul_gflops:.1f} GFLOP/s "
             f"(1024^3 float32 products, same threads). Load average of the machine: {args.load_before:.1f} at the "
             f"start, {args.load_after:.1f} at the end (on {os.cpu_count()} cores). Finished {args.finished_at}.", "",
             "In brackets: the share of the arithmetic limit, the tokens/s at which the step's matmul FLOPs "
             "(counted by torch.utils.flop_counter on the real step) would run at the measured matmul throughput. GPT-2's "
             "attention is counted over all query-key pairs, as torch counts it; its causal CPU kernel skips about "
             "half of them, so its share can pass 100% at long N.", ""]
    if short:
        lines += [f"### Forward+backward tokens/s at short lengths, batch {args.short_batch} (higher is better)", "",
                  "| N | " + " | ".join(LABELS[m] for m in models) + " |", "|---:|" + "---:|" * len(models)]
        for n in short:
            lines.append(f"| {n} | " + " | ".join(with_limit(train_short[m][n], args.short_batch * n) for m in models) + " |")
        lines.append("")
    lines += [f"### Forward+backward tokens/s, batch {args.batch} (higher is better)", "",
              "| N | " + " | ".join(LABELS[m] for m in models) + " |", "|---:|" + "---:|" * len(models)]
    for n in lengths:
        lines.append(f"| {n} | " + " | ".join(with_limit(train[m][n], args.batch * n) for m in models) + " |")
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
        names = list(decode)
        lines += ["", "### Decode tokens/s with the cache (higher is better; batch x context)", "",
                  "| batch | context | " + " | ".join(DECODE_LABELS[m] for m in names) + " |",
                  "|---:|---:|" + "---:|" * len(names)]
        for b in batches:
            for c in contexts:
                lines.append(f"| {b} | {c} | " + " | ".join(with_limit(decode[m][f'{c},{b}'], b) for m in names) + " |")
        lines += ["", "### Decode latency per step, ms (batch 1)", "",
                  "| context | " + " | ".join(DECODE_LABELS[m] for m in names) + " |", "|---:|" + "---:|" * len(names)]
        for c in contexts:
            lines.append(f"| {c} | " + " | ".join(cell(decode[m][f'{c},1'], "ms_per_step", ".2f") for m in names) + " |")

    verdicts = targets(train, train_short, decode, exps, contexts, batches) if "resnet_bk" in models else []
    if verdicts:
        lines += ["", "### Targets", "", "| target | measured | verdict |", "|---|---|---|"]
        lines += [f"| {t} | {v} | {'PASS' if ok else 'MISS'} |" for t, v, ok in verdicts]
    return {"markdown": "\n".join(lines) + "\n", "verdicts": [list(v) for v in verdicts]}


def targets(train, train_short, decode, exps, contexts, batches) -> list[tuple[str, str, bool]]:
    def ratio(mine: dict, other: dict, key: str = "tokens_per_s") -> float | None:
        return mine[key] / other[key] if key in mine and key in other else None

    out = []
    rb = train["resnet_bk"].get(4096, {})
    for peer, factor in (("mamba", 3.0), ("gpt2", 2.0)):
        r = ratio(rb, train.get(peer, {}).get(4096, {}))
        if r is not None:
            out.append((f"N=4096 fwd+bwd >= {factor:g}x {LABELS[peer]}", f"{r:.2f}x", r >= factor))
    for n, factor in ((256, 1.5), (64, 1.0)):
        r = ratio(train_short["resnet_bk"].get(n, {}), train_short.get("gpt2", {}).get(n, {}))
        if r is not None:
            out.append((f"N={n} fwd+bwd (batch 16) >= {factor:g}x GPT-2", f"{r:.2f}x", r >= factor))
    a, b, ns = exps["resnet_bk"]
    if a is not None:
        span = f"N={min(ns)}..{max(ns)}"
        out.append(("time grows at most N^1.15 from 1024 to 16384", f"N^{a:.2f} ({span})", a <= 1.15 and max(ns) >= 16384))
    if b is not None:
        out.append(("peak training memory linear in N", f"N^{b:.2f} ({span})", b <= 1.1))
    if "resnet_bk" in decode and "gpt2" in decode:
        best = {}  # the fastest ResNet-BK decode path per cell
        for key in decode["resnet_bk"]:
            rows = [decode[m][key] for m in ("resnet_bk", "resnet_bk_compiled", "resnet_bk_onnx") if m in decode]
            rows = [r for r in rows if "ms_per_step" in r]
            if rows:
                best[key] = min(rows, key=lambda r: r["ms_per_step"])
        gpt = decode["gpt2"]
        for c, factor in ((contexts[0], 0.5), (contexts[-1], 0.25)):
            key = f"{c},1"
            r = ratio(best.get(key, {}), gpt.get(key, {}), "ms_per_step")
            if r is not None:
                out.append((f"batch-1 decode latency at context {c} <= {factor:g}x GPT-2's "
                            f"(best ResNet-BK path: {best[key]['model']})", f"{r:.2f}x", r <= factor))
        big = max(batches)
        for c in contexts:
            key = f"{c},{big}"
            r = ratio(best.get(key, {}), gpt.get(key, {}))
            if r is not None:
                out.append((f"batch-{big} decode throughput at context {c} >= 2x GPT-2's "
                            f"(best ResNet-BK path: {best[key]['model']})", f"{r:.2f}x", r >= 2.0))
        d = decode["resnet_bk"]
        first, last = d.get(f"{contexts[0]},1", {}), d.get(f"{contexts[-1]},1", {})
        r = ratio(last, first, "ms_per_step")
        if r is not None:
            out.append((f"eager decode latency at {contexts[-1]} within 1.2x of {contexts[0]}", f"{r:.2f}x", r <= 1.2))
    return out


def _version(pkg: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(pkg)
    except PackageNotFoundError:
        return "not installed"


def plot(args, models, lengths, train, decode, contexts, batches, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    from hubtrain.utils import atomic_path

    fig, (ax1, ax2, ax3) = plt.subplots(1, 3, figsize=(16, 4.4))
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
    big = max(batches) if batches else 1
    for m, rows in decode.items():
        ok = [(c, rows[f"{c},{big}"]) for c in contexts if "tokens_per_s" in rows.get(f"{c},{big}", {})]
        if ok:
            ax3.plot([c for c, _ in ok], [r["tokens_per_s"] for _, r in ok], "o-", label=DECODE_LABELS[m])
    ax3.set(xscale="log", yscale="log", xlabel="context", ylabel="tokens/s", title=f"Decode throughput at batch {big}")
    if contexts:
        ax3.set_xticks(contexts, [str(c) for c in contexts])
        ax3.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
    for ax in (ax1, ax2, ax3):
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
