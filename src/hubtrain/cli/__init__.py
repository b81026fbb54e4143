"""The ``hubtrain`` command: a thin layer that parses, calls the library, and prints where things went.

    hubtrain quickstart            train a small CNN on the built-in digits, write a run dir and a Hub-ready folder
    hubtrain quickstart lm         train a small ResNet-BK language model on the Python standard library sources
    hubtrain fit --config x.yaml   LightningCLI with AutoTrainer (also: validate, test, predict)
    hubtrain export ...            ONNX / TorchScript / TensorRT export with verified numerics
    hubtrain push ...              upload a trained folder or checkpoints to the Hugging Face Hub
    hubtrain generate ...          stream text from a causal LM folder
    hubtrain predict FOLDER IN...  batch predictions (images or prompts) as JSON Lines / CSV
    hubtrain serve FOLDER          a live Gradio demo page on 127.0.0.1
    hubtrain explain FOLDER IMAGE  Grad-CAM and integrated-gradients overlays for a classifier
"""
from __future__ import annotations

import argparse
import importlib
import sys
from typing import Sequence

from hubtrain.cli.args import Parser
from hubtrain.errors import RunInterrupted

LIGHTNING_SUBCOMMANDS = ("fit", "validate", "test", "predict")

# subcommand -> (module, one-line help); each module has add_arguments(parser) and run(args) -> int
TOOL_SUBCOMMANDS = {
    "export": ("hubtrain.cli.export_cmd", "export a model to ONNX / TorchScript / TensorRT and verify it"),
    "push": ("hubtrain.cli.push_cmd", "upload a model folder or checkpoints to the Hugging Face Hub"),
    "generate": ("hubtrain.cli.generate_cmd", "generate text from a causal LM folder, streaming tokens"),
    "predict": ("hubtrain.cli.predict_cmd", "predict with a saved folder: images or prompts in, JSON Lines / CSV out "
                "(`predict --config x.yaml` is Lightning's)"),
    "serve": ("hubtrain.cli.serve_cmd", "a live demo page for a saved folder (Gradio), on 127.0.0.1"),
    "explain": ("hubtrain.cli.explain_cmd", "Grad-CAM and integrated-gradients overlays for a classifier's prediction"),
}

EPILOG = """examples:
  hubtrain quickstart                      # digits classifier: run dir + Hub-ready folder in about a minute
  hubtrain quickstart lm                   # ResNet-BK on the Python stdlib sources
  hubtrain fit --config examples/configs/digits.yaml
  hubtrain fit --config examples/configs/digits.yaml --trainer.max_epochs 3
  hubtrain export hubtrain-quickstart --format onnx
  hubtrain push hubtrain-quickstart --repo-id you/digits-resnet
  hubtrain generate hubtrain-quickstart-lm --prompt "def main("
  hubtrain predict hubtrain-quickstart digits/*.png --output preds.jsonl
  hubtrain serve hubtrain-quickstart                       # needs: pip install 'hubtrain[serve]'
  hubtrain explain hubtrain-quickstart digit.png           # needs: pip install 'hubtrain[explain]'
"""


def run_lightning_cli(argv: Sequence[str]) -> int:
    """``hubtrain fit|validate|test|predict``: Lightning's own CLI, with AutoTrainer as the trainer.

    Parse errors (a bad flag, a missing config file, a value of the wrong type) are raised, not printed with a usage
    block, so ``main`` reports them on one line like every other command.
    """
    import pytorch_lightning as pl
    from pytorch_lightning.cli import LightningCLI

    # Importing the task and data modules registers them as subclasses, so YAML can say `class_path: ImageClassifier`.
    import hubtrain.data  # noqa: F401
    import hubtrain.tasks  # noqa: F401
    from hubtrain.training import AutoTrainer

    LightningCLI(
        model_class=pl.LightningModule,
        datamodule_class=pl.LightningDataModule,
        trainer_class=AutoTrainer,
        subclass_mode_model=True,
        subclass_mode_data=True,
        auto_configure_optimizers=False,  # tasks own their optimisers
        save_config_kwargs={"overwrite": True},
        parser_kwargs={"exit_on_error": False},
        args=None if list(argv) == sys.argv[1:] else list(argv),  # the command line itself, or a caller's list
    )
    return 0


def is_tool_predict(argv: Sequence[str]) -> bool:
    """``hubtrain predict FOLDER INPUT...`` (and ``predict --help``) is hubtrain's batch predictor; ``hubtrain predict
    --config x.yaml`` (any other first argument starting with '-') and a bare ``hubtrain predict`` are Lightning's."""
    return len(argv) > 1 and argv[0] == "predict" and (not argv[1].startswith("-") or argv[1] in ("-h", "--help"))


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="hubtrain",
        description="Train and ship Hugging Face models from one API.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    from hubtrain import __version__

    parser.add_argument("--version", action="version", version=f"hubtrain {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    quick = sub.add_parser(
        "quickstart",
        help="train on built-in data: a digits classifier, or `quickstart lm` for a language model",
        description="The main job: train on built-in data, write a run directory and a Hub-ready folder.",
        epilog="examples:\n  hubtrain quickstart\n  hubtrain quickstart --max-epochs 5 --output-dir my-digits\n"
        "  hubtrain quickstart lm\n",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    from hubtrain.cli import quickstart

    quickstart.add_arguments(quick)
    quick_sub = quick.add_subparsers(dest="quickstart_kind", metavar="KIND")
    lm = quick_sub.add_parser(
        "lm",
        help="train a small ResNet-BK language model on the Python standard library sources",
        description="Train a small ResNet-BK on the Python standard library sources; write a Hub-ready folder.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    importlib.import_module("hubtrain.cli.quickstart_lm").add_arguments(lm)

    for name in LIGHTNING_SUBCOMMANDS:
        if name not in TOOL_SUBCOMMANDS:
            sub.add_parser(name, help=f"Lightning's `{name}` with AutoTrainer (see `hubtrain {name} --help`)", add_help=False)
    for name, (module, help_text) in TOOL_SUBCOMMANDS.items():
        tool = sub.add_parser(name, help=help_text, formatter_class=argparse.RawDescriptionHelpFormatter)
        importlib.import_module(module).add_arguments(tool)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = argv[0] if argv else "hubtrain"
    try:
        if argv and argv[0] in LIGHTNING_SUBCOMMANDS and not is_tool_predict(argv):
            return run_lightning_cli(argv)
        parser = build_parser()
        args = parser.parse_args(argv)
        command = args.command or command
        if args.command == "quickstart":
            if getattr(args, "quickstart_kind", None) == "lm":
                return importlib.import_module("hubtrain.cli.quickstart_lm").run(args)
            from hubtrain.cli import quickstart

            return quickstart.run(args)
        if args.command in TOOL_SUBCOMMANDS:
            return importlib.import_module(TOOL_SUBCOMMANDS[args.command][0]).run(args)
    except RunInterrupted as err:
        print(f"hubtrain {command}: {err}", file=sys.stderr)
        return err.exit_code
    except Exception as err:
        # Bad input ends in one line that says what and where, and a non-zero exit; anything else is a bug to report.
        if not _is_user_error(err):
            raise
        message = _first_line(err)
        config = argv[argv.index("--config") + 1] if "--config" in argv[:-1] else None
        if config and config not in message:  # a YAML error names a line, not the file: say which file
            message += f" (in {config})"
        print(f"hubtrain {command}: error: {message}", file=sys.stderr)
        return 2
    parser.print_help()
    return 0


def _is_user_error(err: BaseException) -> bool:
    """Errors that mean bad input (a value, a path, a file, a flag), as opposed to a bug in hubtrain."""
    user = (ValueError, OSError, ImportError, TypeError, KeyError, argparse.ArgumentError)
    if isinstance(err, user):
        return True
    return type(err).__module__.startswith(("jsonargparse", "safetensors", "yaml"))


def _first_line(err: BaseException) -> str:
    """The error in one line. jsonargparse lists what failed for each type a value could have had ("- batch_size=0:
    must be >= 1."): those lines are the message, not its preamble."""
    text = str(err).strip()
    if isinstance(err, KeyError) and len(err.args) == 1:
        text = f"missing key {err.args[0]!r}"
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    problems = [line[2:] for line in lines if line.startswith("- ") and "<class 'NoneType'>" not in line]
    if not problems:
        return " ".join(lines[:2])[:500] or type(err).__name__
    key = next((line.rstrip(":") for line in lines if line.startswith("Parser key")), None)
    given = next((line for line in lines if line.startswith("Given value:") and len(line) < 100), None)
    return "; ".join(x for x in (key, *problems[:2], given) if x)[:500]


if __name__ == "__main__":
    sys.exit(main())
