"""What INT8 costs and saves: float ONNX vs onnxruntime INT8 (dynamic and static) for the quickstart classifier and
the quickstart language model, measured side by side in one run.

    python benchmarks/quantization.py --threads 2                 # trains both quickstarts first (their defaults)
    python benchmarks/quantization.py --classifier hubtrain-quickstart --lm hubtrain-quickstart-lm   # reuse folders
    python benchmarks/quantization.py --quick                     # tiny models, a smoke test

Quality: the digits classifier's accuracy on its validation split and its top-1 agreement with the float model;
ResNet-BK's perplexity on held-out text (the validation split of its corpus) and its next-token agreement. Cost:
file size and median latency at batch 1 and 8 (onnxruntime, same thread count for every graph). Static INT8 is
calibrated on batches of the training split of each task's own data module. ResNet-BK quantises its projections
(MatMul / Gemm) and keeps its scan in float; the "every op" row asks onnxruntime to quantise everything it can, to
find out whether the rest quantises too. Writes benchmarks/results/quantization.{md,json,png}.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

RESULTS = Path(__file__).resolve().parent / "results"


def median_ms(session, feeds, iters: int) -> float:
    from hubtrain.export.onnx_export import run_onnx

    for _ in range(3):
        run_onnx(session, feeds)
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        run_onnx(session, feeds)
        times.append((time.perf_counter() - start) * 1e3)
    return float(np.median(times))


def classifier_rows(folder: Path, tmp: Path, threads: int, iters: int) -> list[dict]:
    from hubtrain.artifacts import load
    from hubtrain.data.image import ImageDataModule
    from hubtrain.export import export_to_onnx
    from hubtrain.export.onnx_export import ort_session, run_onnx
    from hubtrain.export.quantize import compare_int8, onnx_bytes, quantize_onnx
    from hubtrain.export.spec import build_spec

    model = load(folder)
    size = model.preprocessing["input_size"]
    data = ImageDataModule(dataset_name="digits", image_size=size[-1], batch_size=64, seed=0)
    data.setup("fit")
    val = [(images, labels) for images, labels in data.val_dataloader()]
    spec = build_spec(model)
    graphs = {"float": export_to_onnx(model, tmp / "clf.float.onnx")}
    graphs["int8 dynamic"] = tmp / "clf.dynamic.onnx"
    quantize_onnx(graphs["float"], graphs["int8 dynamic"], spec, mode="dynamic")
    graphs["int8 static"] = tmp / "clf.static.onnx"
    quantize_onnx(graphs["float"], graphs["int8 static"], spec, mode="static", calibration=data)
    rows = []
    for name, path in graphs.items():
        session = ort_session(path, num_threads=threads)
        right = total = 0
        for images, labels in val:
            right += int((run_onnx(session, (images,))[0].argmax(-1) == labels.numpy()).sum())
            total += len(labels)
        agree = compare_int8(graphs["float"], path, [(images,) for images, _ in val], mode=name)
        rows.append({"model": f"digits classifier ({model.backbone.backbone_spec['model_name']}, {size[-1]} px)",
                     "graph": name, "quality": "val accuracy", "value": right / total, "agreement": agree.agreement,
                     "rows": total, "bytes": onnx_bytes(path),
                     **{f"b{b}_ms": median_ms(session, (torch.randn(b, *size),), iters) for b in (1, 8)}})
        print(f"classifier {name}: accuracy {right / total:.4f}, agreement {agree.agreement:.4f}", file=sys.stderr)
    return rows


def lm_rows(folder: Path, tmp: Path, threads: int, iters: int, blocks: int, seq: int) -> list[dict]:
    from hubtrain.artifacts import load
    from hubtrain.export import export_to_onnx
    from hubtrain.export.onnx_export import onnx_op_types, ort_session, run_onnx
    from hubtrain.export.quantize import compare_int8, onnx_bytes, quantize_onnx
    from hubtrain.export.spec import build_spec

    task = load(folder)
    block = int(task.model.config.n_seq) if hasattr(task.model.config, "n_seq") else 128
    data = _text_data(folder, block)
    held_out = []
    for batch in data.val_dataloader():
        held_out.append(batch["input_ids"])
        if sum(len(b) for b in held_out) >= blocks:
            break
    held_out = torch.cat(held_out)[:blocks]
    spec = build_spec(task)
    graphs = {"float": export_to_onnx(task, tmp / "lm.float.onnx")}
    variants = {"int8 dynamic (projections)": ("dynamic", None), "int8 static (projections)": ("static", None),
                "int8 dynamic (every op)": ("dynamic", ["MatMul", "Gemm", "Conv", "Gather", "Attention", "LSTM", "Mul", "Add"])}
    reports = {}
    for name, (mode, ops) in variants.items():
        graphs[name] = tmp / f"lm.{len(graphs)}.onnx"
        try:
            reports[name] = quantize_onnx(graphs["float"], graphs[name], spec, mode=mode, op_types=ops,
                                          calibration=data if mode == "static" else None, min_agreement=0.0)
        except Exception as err:  # finding out is the point: a variant that fails is reported, not hidden
            print(f"lm {name}: failed: {err}", file=sys.stderr)
            graphs.pop(name)
            reports[name] = str(err).splitlines()[0][:200]
    rows = []
    float_ops = onnx_op_types(graphs["float"])
    for name, path in graphs.items():
        session = ort_session(path, num_threads=threads)
        nll = count = 0.0
        for start in range(0, len(held_out), 8):
            ids = held_out[start:start + 8]
            logits = torch.from_numpy(run_onnx(session, (ids,))[0]).double()
            nll += float(torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), ids[:, 1:].flatten(), reduction="sum"))
            count += ids[:, 1:].numel()
        agree = compare_int8(graphs["float"], path, [(held_out[i:i + 8],) for i in range(0, len(held_out), 8)], mode=name)
        new_ops = sorted(onnx_op_types(path) - float_ops)
        rows.append({"model": f"ResNet-BK ({sum(p.numel() for p in task.model.parameters()) / 1e6:.2f}M params, "
                              f"{block} tokens)", "graph": name, "quality": "held-out perplexity",
                     "value": math.exp(nll / count), "agreement": agree.agreement, "rows": int(count),
                     "bytes": onnx_bytes(path), "int8_ops": new_ops,
                     **{f"b{b}_ms": median_ms(session, (held_out[:1].repeat(b, 1)[:, :seq],), max(3, iters // 2)) for b in (1, 8)}})
        print(f"lm {name}: perplexity {rows[-1]['value']:.3f}, agreement {agree.agreement:.4f}, new ops {new_ops}", file=sys.stderr)
    for name, report in reports.items():
        if isinstance(report, str):
            rows.append({"model": rows[0]["model"], "graph": name, "quality": "failed", "error": report})
    return rows


def _text_data(folder: Path, block: int):
    """The quickstart LM's corpus split as it was trained (same seed), tokenised with the folder's own tokenizer."""
    from hubtrain.data.text import TextDataModule

    data = TextDataModule(block_size=block, batch_size=8, seed=0, tokenizer=str(folder))
    data.setup("fit")
    return data


def table(rows: list[dict]) -> str:
    lines = ["| model | graph | quality | value | change | top-1 agreement | size (MB) | smaller | batch 1 (ms) | batch 8 (ms) |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    base = {}
    for r in rows:
        if r["quality"] == "failed":
            lines.append(f"| {r['model']} | {r['graph']} | failed: {r['error']} | | | | | | | |")
            continue
        ref = base.setdefault(r["model"], r)
        if "accuracy" in r["quality"]:
            change = f"{100 * (r['value'] - ref['value']):+.2f} pt"
        else:
            change = f"{100 * (r['value'] / ref['value'] - 1):+.2f}%"
        lines.append(f"| {r['model']} | {r['graph']} | {r['quality']} | {r['value']:.4f} | {change} | {r['agreement']:.2%} | "
                     f"{r['bytes'] / 1e6:.2f} | {ref['bytes'] / r['bytes']:.2f}x | {r['b1_ms']:.2f} | {r['b8_ms']:.2f} |")
    return "\n".join(lines)


def plot(rows: list[dict], path: Path) -> None:
    from matplotlib.figure import Figure

    rows = [r for r in rows if r["quality"] != "failed"]
    models = list(dict.fromkeys(r["model"] for r in rows))
    fig = Figure(figsize=(12, 3.6 * len(models)))
    axes = fig.subplots(len(models), 3, squeeze=False)
    for line, model in zip(axes, models):
        sub = [r for r in rows if r["model"] == model]
        names = [r["graph"].replace(" (", "\n(") for r in sub]
        for ax, key, label in zip(line, ("value", "bytes", "b8_ms"), (sub[0]["quality"], "file size (MB)", "batch 8 latency (ms)")):
            values = [r[key] / (1e6 if key == "bytes" else 1) for r in sub]
            ax.bar(range(len(sub)), values, color=["#888"] + ["#d62"] * (len(sub) - 1))
            ax.set_xticks(range(len(sub)), names, fontsize=7)
            ax.set_title(f"{model}\n{label}", fontsize=8)
            ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--iters", type=int, default=30)
    parser.add_argument("--classifier", help="a quickstart classifier folder (default: train one with `hubtrain quickstart`'s defaults)")
    parser.add_argument("--lm", help="a quickstart LM folder (default: train one with `hubtrain quickstart lm`'s defaults)")
    parser.add_argument("--blocks", type=int, default=64, help="held-out blocks for the perplexity")
    parser.add_argument("--quick", action="store_true", help="tiny models and few iterations (smoke test)")
    parser.add_argument("--out", default=str(RESULTS / "quantization"), help="output path without extension")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    started = time.time()
    loads = [os.getloadavg()[0]]
    with tempfile.TemporaryDirectory(prefix="hubtrain-quant-bench-") as tmp:
        tmp = Path(tmp)
        classifier = Path(args.classifier) if args.classifier else None
        if classifier is None:
            from hubtrain.cli.quickstart import run_quickstart

            kwargs = {"backbone": "test_resnet", "max_epochs": 2} if args.quick else {}
            classifier = Path(run_quickstart(output_dir=str(tmp / "quickstart"), root_dir=str(tmp / "runs"),
                                             enable_progress_bar=False, **kwargs)["output_dir"])
        lm = Path(args.lm) if args.lm else None
        if lm is None:
            from hubtrain.cli.quickstart_lm import run_quickstart_lm

            lm = Path(run_quickstart_lm(output_dir=tmp / "quickstart-lm", root_dir=tmp / "runs", fast=args.quick,
                                        enable_progress_bar=False)["output_dir"])
        loads.append(os.getloadavg()[0])
        iters = 5 if args.quick else args.iters
        rows = classifier_rows(classifier, tmp, args.threads, iters)
        loads.append(os.getloadavg()[0])
        rows += lm_rows(lm, tmp, args.threads, iters, 16 if args.quick else args.blocks, 128)
        loads.append(os.getloadavg()[0])
    command = "python benchmarks/quantization.py " + " ".join(argv if argv is not None else sys.argv[1:])
    header = (f"Measured with `{command.strip()}` on {platform.machine()} ({os.cpu_count()} cores; 1-minute load average "
              f"{min(loads):.1f}-{max(loads):.1f} while it ran: other jobs shared the machine, so compare rows within this "
              f"table), onnxruntime with {args.threads} threads for every graph, median of {args.iters} runs "
              f"(ResNet-BK: {max(3, args.iters // 2)}), in {time.time() - started:.0f} s. change: accuracy in points, "
              "perplexity in percent, against the float graph; smaller: float size / this size.\n")
    text = header + "\n" + table(rows) + "\n"
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    from hubtrain.utils import write_text_atomic

    write_text_atomic(out.with_suffix(".md"), text)
    write_text_atomic(out.with_suffix(".json"), json.dumps({"command": command, "rows": rows}, indent=2, default=str) + "\n")
    plot(rows, out.with_suffix(".png"))
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
