"""``hubtrain quickstart``: the main job, end to end on data every machine has.

Trains a small timm CNN on scikit-learn's bundled handwritten digits (real images, no download), with a progress
bar, then writes the run directory (checkpoint, metrics CSV, training-curve PNG) and a Hub-ready folder
(``model.safetensors``, ``config.json``, model card) that ``ImageClassifier.from_pretrained`` loads back.
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from hubtrain.cli.args import positive_float, positive_int


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--backbone", default="resnet18", help="any timm name, hf-hub:org/name or local-dir:/path")
    parser.add_argument("--image-size", type=positive_int, default=32, help="digits are 8x8; they are upscaled to this size")
    parser.add_argument("--max-epochs", type=positive_int, default=6)
    parser.add_argument("--batch-size", type=positive_int, default=64)
    parser.add_argument("--lr", type=positive_float, default=2e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--root-dir", default="runs", help="runs go to <root-dir>/quickstart/version_k/")
    parser.add_argument("--output-dir", default="hubtrain-quickstart", help="the Hub-ready folder")


def run_quickstart(
    backbone: str = "resnet18",
    image_size: int = 32,
    max_epochs: int = 6,
    batch_size: int = 64,
    lr: float = 2e-3,
    seed: int = 0,
    root_dir: str = "runs",
    output_dir: str = "hubtrain-quickstart",
    **trainer_kwargs: Any,
) -> dict[str, Any]:
    """Train, validate, save; return where everything went and the accuracy reached."""
    import pytorch_lightning as pl

    from hubtrain import AutoTrainer, BackboneConfig, ImageClassifier, ImageDataModule

    pl.seed_everything(seed, workers=True, verbose=False)  # before the model: its initial weights come from the seed too
    data = ImageDataModule(dataset_name="digits", image_size=image_size, batch_size=batch_size, seed=seed)
    data.setup("fit")
    model = ImageClassifier(
        backbone=BackboneConfig(backbone, pretrained=False),
        num_classes=data.num_classes,
        class_names=list(data.class_names),
        lr=lr,
        optimizer="adamw",
        scheduler="cosine",
    )
    trainer = AutoTrainer(
        max_epochs=max_epochs, default_root_dir=root_dir, run_name="quickstart", seed=seed, **trainer_kwargs
    )
    trainer.fit(model, datamodule=data)
    # Validate the final weights: they are the ones written to the Hub-ready folder.
    val_metrics = trainer.validate(model, datamodule=data, verbose=False)[0]
    accuracy = float(val_metrics["val/accuracy"])
    out = Path(output_dir)
    model.save_pretrained(out)
    return {
        "val_accuracy": accuracy,
        "run_dir": str(trainer.run_dir),
        "best_checkpoint": trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else None,
        "output_dir": str(out.resolve()),
        "model": model,
    }


def run(args: argparse.Namespace) -> int:
    result = run_quickstart(
        backbone=args.backbone,
        image_size=args.image_size,
        max_epochs=args.max_epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        seed=args.seed,
        root_dir=args.root_dir,
        output_dir=args.output_dir,
    )
    from rich.console import Console

    console = Console()
    console.print(f"[bold green]validation accuracy: {result['val_accuracy']:.4f}[/]")
    # paths on one line each, never wrapped at the terminal width, so they can be copied whole
    console.print(f"run directory (checkpoints, metrics.csv, training_curves.png): {result['run_dir']}", markup=False, soft_wrap=True)
    console.print(f"best checkpoint: {result['best_checkpoint']}", markup=False, soft_wrap=True)
    console.print(f"Hub-ready folder: {result['output_dir']}", markup=False, soft_wrap=True)
    console.print(
        "load it back with: [cyan]hubtrain.ImageClassifier.from_pretrained("
        f"{result['output_dir']!r})[/]",
        soft_wrap=True,
    )
    return 0
