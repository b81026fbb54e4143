"""Latency of eager PyTorch vs onnxruntime (plain and optimised exports), same inputs, same thread count.

    python benchmarks/export_latency.py                       # resnet18 @224 + ResNet-BK 1M, 2 threads
    python benchmarks/export_latency.py --quick               # small shapes, a smoke test in under a minute

Every export is verified against PyTorch before it is timed (vision: max abs error <= 1e-6; ResNet-BK: 1e-4 and
identical argmax). Writes benchmarks/results/export_latency.{md,json,png}.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parent / "results"


def bench_model(name: str, model, tmp: Path, *, batch_sizes, seq_lens, threads: int, iters: int, levels, example=None):
    from hubtrain.export import benchmark_speedup, export_to_onnx, optimize_onnx_model, verify_onnx_model

    t0 = time.perf_counter()
    onnx_path = export_to_onnx(model, tmp / f"{name}.onnx", example)
    check = verify_onnx_model(model, onnx_path, example_inputs=example)
    export_s = time.perf_counter() - t0
    optimized = {f"onnxruntime ({level})": optimize_onnx_model(onnx_path, tmp / f"{name}.{level}.onnx", level=level)
                 for level in levels}
    # one call: every runtime is compared with the same eager measurement, on the same inputs
    rows = [{"model": name, **r} for r in benchmark_speedup(
        model, onnx_path, batch_sizes=batch_sizes, seq_lens=seq_lens, optimized_onnx_path=optimized,
        num_threads=threads, iters=iters, example_inputs=example)]
    print(f"{name}: exported + verified in {export_s:.1f}s, max abs error {check.max_abs_error:.2e}", file=sys.stderr)
    return rows, {"max_abs_error": check.max_abs_error, "tolerance": check.tolerance, "export_s": export_s}


def plot(rows, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = sorted({r["model"] for r in rows})
    fig, axes = plt.subplots(1, len(models), figsize=(6 * len(models), 4), squeeze=False)
    for ax, model in zip(axes[0], models):
        sub = [r for r in rows if r["model"] == model]
        shapes = sorted({(r["batch_size"], r.get("seq_len") or 0) for r in sub})
        backends = list(dict.fromkeys(r["backend"] for r in sub))
        width = 0.8 / len(backends)
        for i, backend in enumerate(backends):
            vals = [next((r["median_ms"] for r in sub if r["backend"] == backend and (r["batch_size"], r.get("seq_len") or 0) == s), 0)
                    for s in shapes]
            ax.bar([j + i * width for j in range(len(shapes))], vals, width, label=backend)
        ax.set_xticks([j + 0.4 - width / 2 for j in range(len(shapes))])
        ax.set_xticklabels([f"b{b}" + (f"\nN={n}" if n else "") for b, n in shapes])
        ax.set_ylabel("median latency (ms)"), ax.set_title(model), ax.legend(fontsize=8), ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--resnet-bk-size", default="1M")
    parser.add_argument("--seq-lens", type=int, nargs="+", default=[128, 512])
    parser.add_argument("--levels", nargs="+", default=["extended", "all"])
    parser.add_argument("--quick", action="store_true", help="small shapes and few iterations (smoke test)")
    parser.add_argument("--out", default=str(RESULTS / "export_latency"), help="output path without extension")
    args = parser.parse_args(argv)
    if args.quick:
        args.image_size, args.seq_lens, args.iters, args.levels = 64, [64], 5, ["extended"]

    import timm

    from hubtrain.export import markdown_table
    from hubtrain.models.resnet_bk import create_resnet_bk_for_hf

    torch.manual_seed(0)
    vision = timm.create_model("resnet18", pretrained=False, pretrained_cfg_overlay={"input_size": (3, args.image_size, args.image_size)}).eval()
    lm = create_resnet_bk_for_hf(args.resnet_bk_size).eval()
    rows, checks = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        r, checks["resnet18"] = bench_model(f"resnet18@{args.image_size}", vision, Path(tmp), batch_sizes=(1, 8), seq_lens=None,
                                            threads=args.threads, iters=args.iters, levels=args.levels)
        rows += r
        r, checks["resnet_bk"] = bench_model(f"resnet-bk-{args.resnet_bk_size}", lm, Path(tmp), batch_sizes=(1, 8),
                                             seq_lens=args.seq_lens, threads=args.threads, iters=max(3, args.iters // 4),
                                             levels=args.levels)
        rows += r
    command = "python benchmarks/export_latency.py " + " ".join(argv if argv is not None else sys.argv[1:])
    table = markdown_table(rows, title_columns=("model",))
    load = ", ".join(f"{v:.1f}" for v in os.getloadavg())
    header = (f"Measured with `{command.strip()}` on {platform.machine()} ({os.cpu_count()} cores, load average {load} "
              "while it ran: other jobs shared the machine), "
              f"{args.threads} threads for both PyTorch {torch.__version__} and onnxruntime; median of "
              f"{args.iters} runs (ResNet-BK: {max(3, args.iters // 4)}). speedup = eager median / backend median.\n")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    from hubtrain.utils import write_text_atomic

    write_text_atomic(out.with_suffix(".md"), header + "\n" + table + "\n")
    write_text_atomic(out.with_suffix(".json"), json.dumps({"command": command, "rows": rows, "verification": checks}, indent=2) + "\n")
    plot(rows, out.with_suffix(".png"))
    print(header + "\n" + table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
