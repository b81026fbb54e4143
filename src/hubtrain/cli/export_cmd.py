"""``hubtrain export``: ONNX (+ optimised, + ResNet-BK decode step), TorchScript and TensorRT, each verified."""
from __future__ import annotations

import argparse
import sys

from hubtrain.cli.args import Parser, positive_float, positive_int

DESCRIPTION = ("Export a model (save_pretrained folder or checkpoint) for deployment. Every artefact is verified "
               "against PyTorch at shapes the export never saw; a failed check leaves no output and exits 1.")
EPILOG = """examples:
  hubtrain export hubtrain-quickstart --format onnx                 # image classifier -> hubtrain-quickstart-export/
  hubtrain export hubtrain-quickstart-lm -o rbk-export --benchmark  # ResNet-BK: model.onnx + decode_step.onnx
  hubtrain export checkpoints/resnet_bk_1m.pt --model-size 1M --format onnx torchscript
  hubtrain export my-model --format tensorrt --fp16                 # needs a CUDA GPU and hubtrain[tensorrt]

Writes model.onnx, model.<level>.onnx, model.torchscript.pt, model.engine (as requested) and report.json."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = DESCRIPTION
    parser.epilog = EPILOG
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("model", help="save_pretrained folder or checkpoint (.safetensors, .ckpt, .pt)")
    parser.add_argument("-o", "--output-dir", default=None, help="output folder (default: <model>-export)")
    parser.add_argument("--format", nargs="+", default=["onnx"], choices=["onnx", "torchscript", "tensorrt", "all"],
                        help="what to produce (onnx is always made: the others start from it)")
    parser.add_argument("--optimize", default="extended", choices=["none", "basic", "extended", "all"],
                        help="onnxruntime graph optimisation level saved alongside model.onnx")
    parser.add_argument("--tolerance", type=positive_float, default=None, help="max error relative to the outputs' scale, max(1, max |output|) (default 1e-5 vision, 1e-4 LMs)")
    parser.add_argument("--fp16", action="store_true", help="TensorRT: allow half precision")
    parser.add_argument("--int8", action="store_true", help="TensorRT: INT8 (needs calibration data or Q/DQ nodes)")
    parser.add_argument("--quantize", choices=["int8"], default=None,
                        help="also write model.int8.onnx (onnxruntime dynamic INT8), checked by argmax agreement")
    parser.add_argument("--max-batch-size", type=positive_int, default=8)
    parser.add_argument("--max-seq-len", type=positive_int, default=512)
    parser.add_argument("--benchmark", action="store_true", help="measure eager vs onnxruntime (vs TensorRT) latency")
    parser.add_argument("--batch-sizes", type=positive_int, nargs="+", default=[1, 8])
    parser.add_argument("--seq-lens", type=positive_int, nargs="+", default=None, help="language models: lengths to benchmark")
    parser.add_argument("--threads", type=positive_int, default=None, help="intra-op threads for both PyTorch and onnxruntime")
    parser.add_argument("--model-size", default=None, help="ResNet-BK preset of a checkpoint file")
    parser.add_argument("--task", default=None, help="hubtrain task class of a Lightning checkpoint")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from hubtrain.export import ExportError, export_model_for_deployment, markdown_table
    from hubtrain.artifacts import load

    formats = {"onnx", "torchscript", "tensorrt"} if "all" in args.format else set(args.format)
    wanted = ["onnx"] + (["onnx-optimized"] if args.optimize != "none" else [])
    wanted += (["onnx-int8"] if args.quantize == "int8" else []) + [f for f in ("torchscript", "tensorrt") if f in formats]
    output = Path(args.output_dir) if args.output_dir else Path(f"{Path(args.model).name.removesuffix(Path(args.model).suffix)}-export")
    try:
        model = load(args.model, model_size=args.model_size, task=args.task)
        if "tensorrt" in formats:
            from hubtrain.export import tensorrt_unavailable_reason

            reason = tensorrt_unavailable_reason()
            if reason:
                raise RuntimeError(reason)
        report = export_model_for_deployment(
            model, output, formats=wanted, optimize_level=args.optimize if args.optimize != "none" else "extended",
            tolerance=args.tolerance, fp16=args.fp16, int8=args.int8, max_batch_size=args.max_batch_size,
            max_seq_len=args.max_seq_len, benchmark=args.benchmark, batch_sizes=args.batch_sizes, seq_lens=args.seq_lens,
            num_threads=args.threads,
        )
    except (ExportError, ValueError, FileNotFoundError, TypeError, RuntimeError, OSError) as err:
        print(f"hubtrain export: error: {str(err).splitlines()[0] if str(err) else type(err).__name__}", file=sys.stderr)
        return 1
    for name, info in report["artifacts"].items():
        if "skipped" in info:
            print(f"{name:15s} skipped: {info['skipped']}")
            continue
        check = info.get("verification") or {}
        allowed = check.get("allowed_error", check.get("tolerance")) if check else None
        err = f"  max abs error {check['max_abs_error']:.2e} (allowed {allowed:.1e})" if allowed is not None else ""
        if "agreement" in check:
            err = f"  argmax agreement {check['agreement']:.1%} with float, {check['size_ratio']:.2f}x smaller"
        print(f"{name:15s} {output / info['file']}  {info['size_mb']:.2f} MB{err}")
    if "benchmark" in report:
        print()
        print(markdown_table(report["benchmark"]["rows"]))
    print(f"\nreport: {output / 'report.json'}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = Parser(prog="hubtrain export")
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
