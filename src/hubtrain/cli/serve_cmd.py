"""``hubtrain serve FOLDER``: a live Gradio demo page for a saved folder, on 127.0.0.1 unless told otherwise."""
from __future__ import annotations

import argparse

from hubtrain.cli.args import positive_int

DESCRIPTION = ("A live demo page for a saved folder (Gradio): upload an image to see a classifier's top-5, a "
               "segmentor's mask or a detector's boxes; a language model streams text. Needs: pip install "
               "'hubtrain[serve]'.")
EPILOG = """examples:
  hubtrain serve hubtrain-quickstart                     # prints the URL, e.g. http://127.0.0.1:7860
  hubtrain serve hubtrain-quickstart-lm --port 8000
  hubtrain serve hubtrain-quickstart --export-space my-space   # app.py + requirements.txt (+ the model) for a Space

The page binds to 127.0.0.1. --host 0.0.0.0 opens it to your network; --share asks Gradio for a public link and is
never turned on by anything else."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = DESCRIPTION
    parser.epilog = EPILOG
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("model", help="a folder written by save_pretrained / quickstart (or a cached Hub repo id)")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    parser.add_argument("--port", type=positive_int, default=None, help="port (default: Gradio's, 7860 or the next free)")
    parser.add_argument("--share", action="store_true", help="also make a public gradio.live link (off by default)")
    parser.add_argument("--title", default=None, help="page title (default: the folder name)")
    parser.add_argument("--export-space", metavar="DIR", help="write a Space (app.py, requirements.txt, model/) to DIR and exit")
    parser.add_argument("--model-id", help="with --export-space: the Hub repo the Space loads instead of a copied folder")
    parser.add_argument("--trust-remote-code", action="store_true", help="allow modeling code shipped in the folder")


def run(args: argparse.Namespace) -> int:
    from hubtrain.serve import build_demo, export_space, launch, require_gradio

    if args.export_space:
        out = export_space(args.model, args.export_space, model_id=args.model_id)
        print(f"hubtrain serve: Space written to {out} (app.py, requirements.txt); push it with "
              f"`hf upload <you>/<space> {out} --repo-type space`")
        return 0
    require_gradio()
    demo = build_demo(args.model, title=args.title, trust_remote_code=args.trust_remote_code)
    launch(demo, host=args.host, port=args.port, share=args.share)
    return 0
