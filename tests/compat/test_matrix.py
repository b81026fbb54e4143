"""The seed's compatibility matrix, proven: every AutoTrainer feature with every Hugging Face approach.

One test per (feature, approach) cell; each asserts the feature took effect (a step count, a file that loads, a
metric in a log), not merely that nothing crashed. ``scripts/make_compat_table.py`` turns the results of this file
into ``docs/compatibility.md``. Test names are ``test_<feature>[<approach>]``; the table reads them back.
"""
from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback, EarlyStopping, LearningRateMonitor, ModelCheckpoint

from hubtrain import AutoTrainer, ImageClassifier, ImageDataModule, LoggerConfig, LoggerManager, TunerConfig

from .conftest import APPROACHES, AUTO_MEAN, AUTO_STD, NUM_CLASSES, SeedViTClassifier

pytestmark = pytest.mark.parametrize("approach", APPROACHES)


def head_of(model: pl.LightningModule) -> torch.nn.Module:
    return model.classifier if isinstance(model, SeedViTClassifier) else model.head[-1]


@torch.no_grad()
def accuracy(model: pl.LightningModule, loader) -> float:
    """Accuracy computed here, independently of anything the model logged."""
    model.eval()
    hits = total = 0
    for x, y in loader:
        hits += int((model(x).argmax(-1) == y).sum())
        total += len(y)
    return hits / total


class StepCounter(Callback):
    def __init__(self) -> None:
        self.batches = 0
        self.optimizer_steps = 0

    def on_train_batch_end(self, *args) -> None:
        self.batches += 1

    def on_before_optimizer_step(self, *args) -> None:
        self.optimizer_steps += 1


def test_basic_training(approach, build, loaders, trainer_kwargs):
    model = build(approach)
    trainer = AutoTrainer(max_epochs=3, **trainer_kwargs)
    before = accuracy(model, loaders("val"))
    model.train()
    trainer.fit(model, loaders("train"), loaders("val"))
    after = accuracy(model, loaders("val"))
    assert trainer.current_epoch == 3
    assert after >= 0.75, f"val accuracy {after:.2f} after training (was {before:.2f}); chance is {1 / NUM_CLASSES:.2f}"


def test_checkpointing(approach, build, loaders, trainer_kwargs, hf_cache):
    model = build(approach)
    trainer = AutoTrainer(max_epochs=1, limit_train_batches=2, **trainer_kwargs)
    trainer.fit(model, loaders("train"), loaders("val"))
    ckpt = Path(trainer.checkpoint_callback.best_model_path)
    assert ckpt.is_file() and ckpt.parent.parent == trainer.run_dir
    score = float(trainer.checkpoint_callback.best_model_score)
    assert f"{score:.4f}" in ckpt.name, f"checkpoint name {ckpt.name} lacks the real metric value {score:.4f}"

    # Rebuild with no way to download anything: offline, and the Hub cache the weights first came from deleted.
    hf_cache.set_offline(True)
    shutil.rmtree(hf_cache.hub_dir)
    restored = type(model).load_from_checkpoint(ckpt, map_location="cpu").eval()
    x, _ = next(iter(loaders("test")))
    with torch.no_grad():
        torch.testing.assert_close(restored(x), model.eval()(x), rtol=0, atol=0)


def test_early_stopping(approach, build, loaders, trainer_kwargs):
    model = build(approach)
    # No epoch can improve val/loss by 10: training must stop after patience (1) + 1 epochs, not at max_epochs.
    stop = EarlyStopping(monitor="val/loss", mode="min", patience=1, min_delta=10.0)
    trainer = AutoTrainer(max_epochs=10, callbacks=[stop], limit_train_batches=1, limit_val_batches=1, **trainer_kwargs)
    trainer.fit(model, loaders("train"), loaders("val"))
    assert stop.stopped_epoch == 1
    assert trainer.current_epoch == 2 < trainer.max_epochs


def test_multiple_callbacks(approach, build, loaders, trainer_kwargs, tmp_path):
    model = build(approach)
    checkpoint = ModelCheckpoint(
        dirpath=tmp_path / "ckpts", filename="best-{epoch:02d}-{val/loss:.4f}", monitor="val/loss", mode="min", save_top_k=2
    )
    stop = EarlyStopping(monitor="val/loss", mode="min", patience=5)
    lr_monitor = LearningRateMonitor(logging_interval="step")
    counter = StepCounter()
    trainer = AutoTrainer(
        max_epochs=2, callbacks=[checkpoint, stop, lr_monitor, counter], limit_train_batches=2, **trainer_kwargs
    )
    trainer.fit(model, loaders("train"), loaders("val"))

    assert counter.batches == 4  # 2 epochs x 2 batches
    saved = sorted(p.name for p in (tmp_path / "ckpts").glob("*.ckpt"))
    assert len(saved) == 2 and f"{float(checkpoint.best_model_score):.4f}" in Path(checkpoint.best_model_path).name
    assert torch.isfinite(stop.best_score)  # early stopping saw the metric every epoch
    with open(trainer.run_dir / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    lr_keys = [k for k in rows[0] if k.startswith("lr-")]
    assert lr_keys, f"LearningRateMonitor logged nothing; columns: {list(rows[0])}"
    assert sum(1 for r in rows if r[lr_keys[0]]) == 4  # one learning rate per step


def test_gradient_accumulation(approach, build, loaders, trainer_kwargs):
    model = build(approach)
    counter = StepCounter()
    trainer = AutoTrainer(
        max_epochs=1, accumulate_grad_batches=2, limit_train_batches=4, callbacks=[counter], **trainer_kwargs
    )
    trainer.fit(model, loaders("train"), loaders("val"))
    assert counter.batches == 4
    assert counter.optimizer_steps == 2 == trainer.global_step


def test_mixed_precision(approach, build, loaders, trainer_kwargs):
    model = build(approach)
    dtypes: list[torch.dtype] = []
    head_of(model).register_forward_hook(lambda m, i, out: dtypes.append(out.dtype) if m.training else None)
    trainer = AutoTrainer(max_epochs=1, precision="bf16-mixed", limit_train_batches=2, **trainer_kwargs)
    trainer.fit(model, loaders("train"), loaders("val"))
    assert dtypes and set(dtypes) == {torch.bfloat16}, f"head ran in {set(dtypes)} under bf16-mixed"
    assert all(p.dtype == torch.float32 for p in model.parameters()), "master weights must stay float32"
    assert torch.isfinite(trainer.callback_metrics["train/loss_epoch" if "train/loss_epoch" in trainer.callback_metrics else "train/loss"])


def test_validation_and_testing(approach, build, loaders, trainer_kwargs):
    model = build(approach)
    trainer = AutoTrainer(max_epochs=1, limit_train_batches=3, **trainer_kwargs)
    trainer.fit(model, loaders("train"), loaders("val"))
    (val,) = trainer.validate(model, loaders("val"))
    (test,) = trainer.test(model, loaders("test"))
    assert val["val/accuracy"] == pytest.approx(accuracy(model, loaders("val")), abs=1e-6)
    assert test["test/accuracy"] == pytest.approx(accuracy(model, loaders("test")), abs=1e-6)
    assert "val/loss" in val and "test/loss" in test


def test_image_datamodule(approach, build, image_folder, trainer_kwargs):
    model = build(approach)
    root = image_folder(classes=("a", "b", "c"), per_class={"train": 12, "val": 4}, size=16)
    if isinstance(model, ImageClassifier):
        # Preprocessing follows the backbone (for hf_auto: the repo's preprocessor_config.json).
        data = ImageDataModule(data_dir=root, image_size=32, batch_size=8, transform_config=model.backbone)
        assert data.preprocessing["mean"] == pytest.approx(model.backbone.data_config["mean"])
        if approach == "hf_auto":
            assert data.preprocessing["mean"] == pytest.approx(AUTO_MEAN)
            assert data.preprocessing["std"] == pytest.approx(AUTO_STD)
    else:
        data = ImageDataModule(data_dir=root, image_size=32, batch_size=8)
    assert data.class_names == ["a", "b", "c"]
    trainer = AutoTrainer(max_epochs=3, **trainer_kwargs)
    trainer.fit(model, datamodule=data)
    assert accuracy(model, data.val_dataloader()) >= 0.6  # chance: 0.33
    if isinstance(model, ImageClassifier):  # the checkpointed preprocessing is the data module's
        assert json.loads(json.dumps(model.preprocessing)) == json.loads(json.dumps(data.preprocessing))


def _tensorboard_scalars(folder: Path, tag: str) -> list[float]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    values = []
    for events in folder.rglob("events.out.tfevents.*"):
        acc = EventAccumulator(str(events))
        acc.Reload()
        if tag in acc.Tags()["scalars"]:
            values += [e.value for e in acc.Scalars(tag)]
    return values


def test_logger_manager(approach, build, loaders, trainer_kwargs):
    model = build(approach)
    loggers = LoggerManager([LoggerConfig(backend="csv"), LoggerConfig(backend="tensorboard")])
    trainer = AutoTrainer(max_epochs=2, logger=loggers, limit_train_batches=2, **trainer_kwargs)
    trainer.fit(model, loaders("train"), loaders("val"))

    with open(trainer.run_dir / "metrics.csv") as f:
        csv_values = [float(r["val/loss"]) for r in csv.DictReader(f) if r.get("val/loss")]
    tb_values = _tensorboard_scalars(trainer.run_dir, "val/loss")
    assert len(csv_values) == len(tb_values) == 2, (csv_values, tb_values)
    assert tb_values == pytest.approx(csv_values, rel=1e-6)


def test_tuner_config(approach, build, loaders, trainer_kwargs):
    model = build(approach, lr=3e-3)
    tuner = TunerConfig(auto_lr=True, auto_batch_size=False, lr_find_kwargs={"min_lr": 1e-5, "max_lr": 1.0, "num_training": 20})
    # Lightning's LR finder cannot run past max_epochs: one epoch of 24 batches of 2 gives it its 20 steps.
    trainer = AutoTrainer(max_epochs=1, tuner_config=tuner, **trainer_kwargs)
    trainer.fit(model, loaders("train", batch_size=2), loaders("val"))
    chosen = trainer.tuning_results
    assert chosen["previous_lr"] == 3e-3 and chosen["lr"] != 3e-3
    assert model.lr == chosen["lr"]
    # the optimiser actually trained with the tuned rate
    assert trainer.optimizers[0].param_groups[0]["initial_lr" if "initial_lr" in trainer.optimizers[0].param_groups[0] else "lr"] == pytest.approx(chosen["lr"])
    plot = trainer.run_dir / "lr_finder.png"
    assert plot.is_file() and plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
