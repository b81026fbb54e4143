"""``hubtrain explain FOLDER IMAGE...``: Grad-CAM and integrated-gradients overlays for a classifier's prediction."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from hubtrain.cli.args import non_negative_int, positive_int

DESCRIPTION = ("Explain a classifier's prediction: Grad-CAM on the backbone's last feature map and integrated "
               "gradients on the pixels (captum), drawn over the image as the model saw it. Needs: pip install "
               "'hubtrain[explain]'.")
EPILOG = """examples:
  hubtrain explain hubtrain-quickstart digit.png                 # explanations/digit.gradcam.png, ...integrated_gradients.png
  hubtrain explain hubtrain-quickstart a.png b.png --output-dir why --target 3
  hubtrain explain hubtrain-quickstart digit.png --methods gradcam"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = DESCRIPTION
    parser.epilog = EPILOG
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("model", help="an image classifier folder (or a cached Hub repo id)")
    parser.add_argument("images", nargs="+", help="image files")
    parser.add_argument("--output-dir", default="explanations", help="where the overlay PNGs go")
    parser.add_argument("--methods", nargs="+", choices=("gradcam", "integrated_gradients"),
                        default=["gradcam", "integrated_gradients"])
    parser.add_argument("--target", type=non_negative_int, default=None, help="class index to explain (default: the prediction)")
    parser.add_argument("--steps", type=positive_int, default=32, help="integrated gradients: path steps")


def run(args: argparse.Namespace) -> int:
    from hubtrain.explain import explain_image, require_captum
    from hubtrain.inference import load_for_prediction, read_image

    require_captum()
    model = load_for_prediction(args.model)
    for i, path in enumerate(args.images):
        image = read_image(path) if Path(path).is_file() else None
        if image is None:
            raise FileNotFoundError(f"image not found: {path}")
        result = explain_image(model, image, args.output_dir, methods=args.methods, target=args.target,
                               steps=args.steps, stem=f"{Path(path).stem}" if len(args.images) == 1 else f"{i:03d}-{Path(path).stem}")
        print(json.dumps({"input": path, **result}))
    return 0
