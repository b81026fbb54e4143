"""``hubtrain push``: upload a save_pretrained folder, a checkpoint, or a whole folder of checkpoints to the Hub.

The token is read from ``HF_TOKEN`` or ``hf auth login`` (``--token`` exists for the seed's command lines, but a
token on a command line is visible to other users of the machine: prefer the environment). It never appears in
the output.
"""
from __future__ import annotations

import argparse
import json
import sys

from hubtrain.cli.args import Parser

DESCRIPTION = "Upload a model folder, a checkpoint, or a folder of checkpoints to the Hugging Face Hub."
EPILOG = """examples:
  hubtrain push hubtrain-quickstart --repo-id you/digits-resnet
  hubtrain push checkpoints/resnet_bk_1m.pt --repo-id you/resnet-bk-1m --model-size 1M
  hubtrain push --model_path checkpoints/resnet_bk_1b.pt --repo_id you/resnet-bk-1b --model_size 1B
  hubtrain push --batch --checkpoint-dir checkpoints/ --repo-prefix you/resnet-bk   # one repo per checkpoint
  HF_ENDPOINT=http://127.0.0.1:8000 hubtrain push my-folder --repo-id you/test      # any Hub-compatible server

The token comes from HF_TOKEN or `hf auth login`; exit status is non-zero when any upload failed."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = DESCRIPTION
    parser.epilog = EPILOG
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("model", nargs="?", help="save_pretrained folder or checkpoint (.safetensors, .ckpt, .pt)")
    parser.add_argument("--model-path", "--model_path", dest="model_path", help="same as the positional MODEL")
    parser.add_argument("--repo-id", "--repo_id", dest="repo_id", help="target repo, namespace/name")
    parser.add_argument("--model-size", "--model_size", dest="model_size", help="ResNet-BK preset of a checkpoint (1M, 10M, 100M, 1B, 10B)")
    parser.add_argument("--task", help="hubtrain task class of a Lightning checkpoint (e.g. ImageClassifier)")
    parser.add_argument("--batch", action="store_true", help="upload every checkpoint in --checkpoint-dir")
    parser.add_argument("--checkpoint-dir", "--checkpoint_dir", dest="checkpoint_dir", help="folder of checkpoints (with --batch)")
    parser.add_argument("--repo-prefix", "--repo_prefix", dest="repo_prefix", help="namespace/prefix: repos become prefix-<name> (with --batch)")
    parser.add_argument("--private", action="store_true", help="create private repos")
    parser.add_argument("--create-pr", action="store_true", help="open a pull request instead of committing to main")
    parser.add_argument("--commit-message", default=None)
    parser.add_argument("--metrics-csv", default=None, help="Lightning metrics.csv for the card (found next to checkpoints by default)")
    parser.add_argument("--dataset", action="append", default=None, help="dataset id for the card metadata (repeatable)")
    parser.add_argument("--endpoint", default=None, help="Hub endpoint (default: HF_ENDPOINT or huggingface.co)")
    parser.add_argument("--token", default=None, help="access token (prefer HF_TOKEN: command lines are visible to others)")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")


def run(args: argparse.Namespace) -> int:
    from hubtrain.hub import HubError, batch_upload_models, push_to_hub, redact, upload_model_to_hub

    try:
        if args.batch:
            if not args.checkpoint_dir or not args.repo_prefix:
                raise ValueError("--batch needs --checkpoint-dir and --repo-prefix")
            summary = batch_upload_models(args.checkpoint_dir, args.repo_prefix, token=args.token, private=args.private,
                                          task=args.task, endpoint=args.endpoint, datasets=args.dataset)
            print(json.dumps(summary.to_dict(), indent=2) if args.json else str(summary))
            return 0 if summary.ok else 1
        model = args.model or args.model_path
        if not model or not args.repo_id:
            raise ValueError("give a model folder or checkpoint and --repo-id (or --batch with --checkpoint-dir)")
        if args.model_size or args.task or not _is_folder(model):
            result = upload_model_to_hub(model, args.repo_id, model_size=args.model_size, token=args.token,
                                         private=args.private, task=args.task, commit_message=args.commit_message,
                                         endpoint=args.endpoint, metrics_csv=args.metrics_csv, datasets=args.dataset,
                                         create_pr=args.create_pr)
        else:
            result = push_to_hub(model, args.repo_id, private=args.private, token=args.token,
                                 commit_message=args.commit_message or "Upload model with hubtrain",
                                 create_pr=args.create_pr, endpoint=args.endpoint, metrics_csv=args.metrics_csv,
                                 datasets=args.dataset)
    except (HubError, ValueError, FileNotFoundError, TypeError, OSError) as err:
        print(f"hubtrain push: error: {redact(str(err), args.token)}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(result.__dict__, indent=2))
    else:
        print(f"pushed {len(result.files)} files to {result.url}" + (f" (pull request {result.pr_url})" if result.pr_url else ""))
    return 0


def _is_folder(path: str) -> bool:
    from pathlib import Path

    return Path(path).is_dir()


def main(argv: list[str] | None = None) -> int:
    parser = Parser(prog="hubtrain push")
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
