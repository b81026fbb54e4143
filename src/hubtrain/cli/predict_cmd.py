"""``hubtrain predict FOLDER INPUT...``: batch predictions from a saved folder, as JSON Lines or CSV.

(``hubtrain predict --config x.yaml`` is Lightning's predict subcommand; ``main`` routes by the first argument.)
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from hubtrain.cli.args import non_negative_float, positive_int, probability

DESCRIPTION = ("Predict with a saved folder: image files, folders or globs for a classifier, segmentor or detector; "
               "text prompts for a language model. One JSON record (or CSV row) per input; an unreadable input gets "
               "an 'error' field and the run goes on.")
EPILOG = """examples:
  hubtrain predict hubtrain-quickstart digits/*.png                       # top-5 labels with scores, JSON Lines
  hubtrain predict hubtrain-quickstart photos/ --output preds.csv         # a folder, CSV out
  hubtrain predict my-segmentor "scans/**/*.jpg" --output-dir masks        # mask PNGs + per-class pixel share
  hubtrain predict my-detector street.jpg --annotate --output-dir boxes    # boxes, and the image with them drawn
  hubtrain predict hubtrain-quickstart-lm "def main(" "import " --max-new-tokens 40

Lightning's predict subcommand is still there: `hubtrain predict --config config.yaml` (any first argument that
starts with '-' other than -h/--help goes to LightningCLI).
Exit status: 0 when every input was predicted, 1 when some inputs could not be read (their records say why)."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = DESCRIPTION
    parser.epilog = EPILOG
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("model", help="a folder written by save_pretrained / quickstart (or a cached Hub repo id)")
    parser.add_argument("inputs", nargs="*", help="image files, folders, globs; or text prompts for a language model")
    parser.add_argument("--prompts-file", help="a text file with one prompt per line (language models)")
    parser.add_argument("--output", "-o", help="write here (.jsonl or .csv); default: JSON Lines on stdout")
    parser.add_argument("--format", choices=("jsonl", "csv"), help="output format (default: from --output's suffix)")
    parser.add_argument("--output-dir", help="where mask PNGs and annotated images go (default: <output>-files/ or predictions/)")
    parser.add_argument("--batch-size", type=positive_int, default=8)
    parser.add_argument("--top-k", type=positive_int, default=5, help="classifiers: how many labels per image")
    parser.add_argument("--annotate", action="store_true", help="detectors: also write each image with its boxes drawn")
    parser.add_argument("--max-new-tokens", type=positive_int, default=64, help="language models")
    parser.add_argument("--temperature", type=non_negative_float, default=0.0, help="language models; 0 = greedy")
    parser.add_argument("--top-p", type=probability, default=None, help="language models, when sampling")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    parser.add_argument("--trust-remote-code", action="store_true", help="allow modeling code shipped in the folder")


def run(args: argparse.Namespace) -> int:
    import torch
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from hubtrain.inference import expand_images, is_text_model, load_for_prediction, predict, write_records

    fmt = args.format or ("csv" if args.output and Path(args.output).suffix.lower() == ".csv" else "jsonl")
    model = load_for_prediction(args.model, trust_remote_code=args.trust_remote_code)
    text = is_text_model(model)
    if text:
        inputs = list(args.inputs)
        if args.prompts_file:
            inputs += Path(args.prompts_file).read_text(encoding="utf-8").splitlines()
    else:
        if args.prompts_file:
            raise ValueError(f"--prompts-file is for language models; {args.model} holds a {type(model).__name__}")
        inputs = expand_images(args.inputs)
    if not inputs:
        raise ValueError("no inputs: give image files, folders or globs (or prompts for a language model)")
    if args.seed is not None:
        torch.manual_seed(args.seed)
    output_dir = args.output_dir or (str(Path(args.output).with_suffix("")) + "-files" if args.output else "predictions")
    stderr = Console(stderr=True)
    columns = (TextColumn("[bold]predict"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with torch.no_grad(), Progress(*columns, console=stderr, disable=args.no_progress, transient=True) as bar:
        job = bar.add_task("predict", total=len(inputs))
        records = predict(model, inputs, batch_size=args.batch_size, top_k=args.top_k, output_dir=output_dir,
                          annotate=args.annotate, progress=lambda n: bar.advance(job, n),
                          **({"max_new_tokens": args.max_new_tokens, "temperature": args.temperature,
                              "top_p": args.top_p} if text else {}))
        counts = write_records(_report_errors(records, stderr), args.output, fmt)
    where = f" to {args.output}" if args.output else ""
    print(f"hubtrain predict: {counts['ok']} predicted, {counts['errors']} unreadable{where}", file=sys.stderr)
    return 1 if counts["errors"] else 0


def _report_errors(records, console):
    for record in records:
        if "error" in record:
            console.print(f"hubtrain predict: {record['input']}: {record['error']}", markup=False, highlight=False, soft_wrap=True)
        yield record


def main(argv: list[str] | None = None) -> int:
    from hubtrain.cli import main as hubtrain_main

    return hubtrain_main(["predict", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
