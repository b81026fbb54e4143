"""The screenshots of `hubtrain serve` in docs/: one page per kind of task, each after a prediction.

    python scripts/serve_screenshots.py --classifier hubtrain-quickstart --lm hubtrain-quickstart-lm

The classifier and the language model are the two quickstarts' folders; the segmentor and the detector are trained
here for a few epochs on the built-in synthetic shapes (test_resnet, 64 px, under a minute each on 2 cores). Each
folder is served with `hubtrain serve` and driven in Debian's headless Chromium through Selenium, with the same
helpers as the browser test (tests/browser.py); the page's prediction is printed next to `hubtrain predict`'s.
Writes docs/serve_{classifier,segmentor,detector,language_model}.png.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from browser import chromium, classify_in_page, generate_in_page, served, wait_for  # noqa: E402

KINDS = ("classifier", "segmentor", "detector", "language_model")
QUIET = dict(enable_progress_bar=False, enable_model_summary=False, accelerator="cpu", devices=1, plot_curves=False)


def train_dense(kind: str, out: Path, runs: Path) -> Path:
    """A segmentor or detector on the synthetic shapes (the recipes of tests/tasks/test_{segmentation,detection}.py)."""
    import torch

    from hubtrain import AutoTrainer
    from hubtrain.data.detection import DetectionDataModule
    from hubtrain.data.segmentation import SegmentationDataModule
    from hubtrain.tasks.detection import ObjectDetector
    from hubtrain.tasks.segmentation import SemanticSegmentor

    torch.manual_seed(0)
    sizes = {"train": 256, "val": 64, "test": 32}
    if kind == "segmentor":
        data = SegmentationDataModule(dataset_name="synthetic_shapes", image_size=64, batch_size=16, synthetic_sizes=sizes)
        model = SemanticSegmentor("test_resnet", num_classes=data.num_classes, class_names=data.class_names,
                                  loss_type="combined", lr=3e-3, aspp_channels=32, decoder_channels=32,
                                  low_level_channels=16, pretrained=False)
        epochs = 4
    else:
        data = DetectionDataModule(dataset_name="synthetic_shapes", image_size=64, batch_size=16, synthetic_sizes=sizes)
        model = ObjectDetector("test_resnet", num_classes=data.num_classes, class_names=data.class_names,
                               fpn_channels=32, head_num_convs=2, lr=3e-3, pretrained=False,
                               score_thresh=0.3)  # the page draws what clears it: a readable picture
        epochs = 5
    trainer = AutoTrainer(max_epochs=epochs, default_root_dir=str(runs / kind), num_sanity_val_steps=0, **QUIET)
    trainer.fit(model, datamodule=data)
    return model.save_pretrained(out / kind, datasets=["synthetic_shapes"])


def shapes_image(path: Path, size: int = 256) -> Path:
    from PIL import Image

    from hubtrain.data.synthetic import make_shape_sample

    sample = next(s for s in (make_shape_sample("test", i, size, seed=0) for i in range(50)) if len(s.labels) >= 2)
    Image.fromarray(sample.image).save(path)
    return path


def digit_image(path: Path) -> Path:
    from hubtrain.data.digits import load_digits_images

    images, _ = load_digits_images()
    images[7].resize((128, 128)).save(path)
    return path


def predict(folder: Path, *inputs: str, extra: tuple[str, ...] = ()) -> list[dict]:
    from hubtrain.cli import main

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "p.jsonl"
        assert main(["predict", str(folder), *inputs, "--output", str(out), "--no-progress", *extra]) == 0
        return [json.loads(line) for line in out.read_text().splitlines()]


def image_page(driver, url: str, image: Path) -> None:
    """Upload, press Predict, wait until the overlay image is drawn."""
    from selenium.webdriver.common.by import By

    driver.get(url)
    wait_for(lambda: driver.find_elements(By.CSS_SELECTOR, "input[type=file]"))[0].send_keys(str(image))
    wait_for(lambda: driver.find_elements(By.CSS_SELECTOR, "#input-image img"))
    driver.find_element(By.ID, "predict").click()
    wait_for(lambda: driver.find_elements(By.CSS_SELECTOR, "#overlay img"))
    wait_for(lambda: driver.find_element(By.ID, "prediction").text.strip())


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--classifier", help="a classifier folder (hubtrain quickstart)")
    parser.add_argument("--lm", help="a language-model folder (hubtrain quickstart lm)")
    parser.add_argument("--only", nargs="+", choices=KINDS, default=list(KINDS), help="the pages to shoot (default all)")
    parser.add_argument("--out", default=str(ROOT / "docs"), help="where the PNGs go (default docs/)")
    args = parser.parse_args(argv)
    if "classifier" in args.only and not args.classifier or "language_model" in args.only and not args.lm:
        parser.error("--classifier and --lm are needed for their pages (or leave them out with --only)")
    out = Path(args.out)
    with tempfile.TemporaryDirectory(prefix="hubtrain-shots-") as tmp:
        tmp = Path(tmp)
        digit, shapes = digit_image(tmp / "digit.png"), shapes_image(tmp / "shapes.png")
        folders = {kind: train_dense(kind, tmp / "models", tmp / "runs") for kind in ("segmentor", "detector")
                   if kind in args.only}
        with chromium() as driver:
            if "classifier" in args.only:
                with served(args.classifier) as url:
                    shown = classify_in_page(driver, url, digit)
                    driver.save_screenshot(str(out / "serve_classifier.png"))
                print("classifier page:", shown, "\n  predict:", predict(Path(args.classifier), str(digit))[0]["labels"])
            for kind, folder in folders.items():
                with served(folder) as url:
                    image_page(driver, url, shapes)
                    driver.save_screenshot(str(out / f"serve_{kind}.png"))
                record = predict(folder, str(shapes))[0]
                print(f"{kind} page shown; predict:", record.get("class_share") or record.get("detections"))
            if "language_model" in args.only:
                with served(args.lm) as url:
                    text = generate_in_page(driver, url, "def main(", max_tokens=48)
                    driver.save_screenshot(str(out / "serve_language_model.png"))
                expected = predict(Path(args.lm), "def main(", extra=("--max-new-tokens", "48"))[0]["generated"]
                print("language model page:", repr(text), "\n  predict:", repr(expected), "same:", text == expected)
    return 0


if __name__ == "__main__":
    sys.exit(main())
