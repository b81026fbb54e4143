"""AutoTrainer: run folders, task-aware checkpoints with real values in their names, resume, accumulation, bf16."""
from __future__ import annotations

import csv
import re
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from PIL import Image

from hubtrain.training import AutoTrainer, slash_safe_filename


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def epoch_values(rows: list[dict[str, str]], key: str) -> dict[int, float]:
    return {int(r["epoch"]): float(r[key]) for r in rows if r.get(key)}


def assert_png(path: Path) -> None:
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    with Image.open(path) as im:
        im.verify()
    with Image.open(path) as im:
        assert im.size[0] > 100 and im.size[1] > 100


def test_run_dirs_default_checkpoint_curves(tmp_path, kit, data):
    pl.seed_everything(0)
    model = kit.TinyClassifier()
    trainer = AutoTrainer(max_epochs=4, default_root_dir=tmp_path, **kit.QUIET)
    trainer.fit(model, datamodule=data)

    run = tmp_path / "tinyclassifier" / "version_0"
    assert trainer.run_dir == run
    rows = read_csv(run / "metrics.csv")
    val_acc = epoch_values(rows, "val/accuracy")
    assert sorted(val_acc) == [0, 1, 2, 3]
    assert max(val_acc.values()) > 0.85, val_acc  # it learned

    # the automatic checkpoint follows model.monitor and names the real value
    best = [p for p in (run / "checkpoints").iterdir() if p.name.startswith("best-")]
    assert len(best) == 1, list((run / "checkpoints").iterdir())
    m = re.fullmatch(r"best-epoch=(\d+)-val_accuracy=(\d\.\d{4})\.ckpt", best[0].name)
    assert m, best[0].name
    epoch, value = int(m.group(1)), float(m.group(2))
    assert abs(value - val_acc[epoch]) < 1e-4
    assert abs(value - max(val_acc.values())) < 1e-4
    assert trainer.checkpoint_callback.best_model_path == str(best[0])
    assert (run / "checkpoints" / "last.ckpt").is_file()
    ckpt = torch.load(best[0], weights_only=True, map_location="cpu")
    assert ckpt["epoch"] == epoch

    assert_png(run / "training_curves.png")
    curves = trainer._curves.panels()
    assert set(curves["accuracy"]) == {"train", "val"} and set(curves["loss"]) == {"train", "val"}
    assert curves["accuracy"]["val"] == pytest.approx(val_acc, abs=1e-6)

    # a second run of the same model goes to the next version; run_name overrides the folder name
    AutoTrainer(max_epochs=1, default_root_dir=tmp_path, **kit.QUIET).fit(kit.TinyClassifier(), datamodule=data)
    assert (tmp_path / "tinyclassifier" / "version_1" / "metrics.csv").is_file()
    named = AutoTrainer(max_epochs=1, default_root_dir=tmp_path, run_name="exp", logger=False, **kit.QUIET)
    named.fit(kit.TinyClassifier(), datamodule=data)
    assert named.run_dir == tmp_path / "exp" / "version_0"
    assert not (named.run_dir / "metrics.csv").exists()  # logger=False: no loggers at all


def test_slash_safe_template_formats_real_values():
    cb = pl.callbacks.ModelCheckpoint(dirpath="x", filename="best-{epoch:02d}-{val/accuracy:.2f}")
    # Lightning's own template turns the metric name into a folder ...
    stock = cb.format_checkpoint_name({"epoch": 3, "val/accuracy": torch.tensor(0.91234)})
    assert Path(stock).parent.name == "best-epoch=03-val" and Path(stock).name == "accuracy=0.91.ckpt"
    # ... the rewritten one keeps a flat name with the real value
    cb.filename, cb.auto_insert_metric_name = slash_safe_filename(cb.filename), False
    name = cb.format_checkpoint_name({"epoch": 3, "val/accuracy": torch.tensor(0.91234)})
    assert Path(name).name == "best-epoch=03-val_accuracy=0.91.ckpt"


def test_seed_checkpoint_filename_carries_true_value(tmp_path, kit, data):
    """The seed's own ModelCheckpoint (filename "best-{epoch:02d}-{val/accuracy:.2f}") passed by the user."""
    pl.seed_everything(1)
    checkpoint = pl.callbacks.ModelCheckpoint(
        dirpath=tmp_path / "checkpoints",
        filename="best-{epoch:02d}-{val/accuracy:.2f}",
        monitor="val/accuracy",
        mode="max",
        save_top_k=3,
    )
    early_stop = pl.callbacks.EarlyStopping(monitor="val/accuracy", patience=10, mode="max")
    # a template naming a key that is never logged: Lightning would silently write 0 there, we warn
    misspelt = pl.callbacks.ModelCheckpoint(dirpath=tmp_path / "other", filename="{epoch}-{val_accuracy:.4f}")
    trainer = AutoTrainer(
        max_epochs=3, callbacks=[checkpoint, early_stop, misspelt], default_root_dir=tmp_path / "runs", **kit.QUIET
    )
    with pytest.warns(UserWarning, match="'val_accuracy' is not a logged metric, so Lightning writes 0"):
        trainer.fit(kit.TinyClassifier(), datamodule=data)

    val_acc = epoch_values(read_csv(trainer.run_dir / "metrics.csv"), "val/accuracy")
    files = sorted((tmp_path / "checkpoints").iterdir())
    assert len(files) == 3 and all(p.is_file() for p in files), files  # flat files, no "val" sub-folder
    for p in files:
        m = re.fullmatch(r"best-epoch=(\d\d)-val_accuracy=(\d\.\d\d)\.ckpt", p.name)
        assert m, p.name
        assert float(m.group(2)) == pytest.approx(val_acc[int(m.group(1))], abs=0.005 + 1e-9)
    assert max(float(re.search(r"=(\d\.\d\d)\.ckpt", p.name).group(1)) for p in files) > 0.5  # not the 0.00 trap
    # the user's checkpoint is the only one: no automatic checkpoint next to it
    assert trainer.checkpoint_callbacks == [checkpoint, misspelt]


def test_plain_lightning_modules(tmp_path, kit):
    """Approach 2 of the seed: user modules without `monitor`; val/loss when logged, else the latest epoch."""
    train, val = kit.make_data()
    loader = torch.utils.data.DataLoader(train, batch_size=64)
    val_loader = torch.utils.data.DataLoader(val, batch_size=64)

    trainer = AutoTrainer(max_epochs=2, default_root_dir=tmp_path, **kit.QUIET)
    trainer.fit(kit.PlainModule(), loader)
    names = sorted(p.name for p in (trainer.run_dir / "checkpoints").iterdir())
    assert names == ["epoch=01-step=6.ckpt", "last.ckpt"], names
    assert trainer.run_dir == tmp_path / "plainmodule" / "version_0"

    trainer = AutoTrainer(max_epochs=2, default_root_dir=tmp_path, **kit.QUIET)
    trainer.fit(kit.PlainModule(with_validation=True), loader, val_loader)
    val_loss = epoch_values(read_csv(trainer.run_dir / "metrics.csv"), "val/loss")
    best = [p.name for p in (trainer.run_dir / "checkpoints").iterdir() if p.name.startswith("best-")]
    m = re.fullmatch(r"best-epoch=(\d\d)-val_loss=(\d+\.\d{4})\.ckpt", best[0])
    assert m and float(m.group(2)) == pytest.approx(min(val_loss.values()), abs=1e-4), (best, val_loss)


def test_last_checkpoint_is_the_latest_state_when_the_monitored_metric_stops_improving(tmp_path, kit):
    """Lightning 2.6 writes last.ckpt only beside a new best; ours must still hold the final step and weights."""

    class Worsening(kit.PlainModule):
        def validation_step(self, batch, batch_idx):
            self.log("val/loss", float(self.current_epoch))  # best at epoch 0, worse every epoch after

    train, val = kit.make_data()
    pl.seed_everything(0)
    model = Worsening()
    trainer = AutoTrainer(max_epochs=3, default_root_dir=tmp_path, **kit.QUIET)
    trainer.fit(model, torch.utils.data.DataLoader(train, batch_size=64), torch.utils.data.DataLoader(val, batch_size=64))
    ckpts = trainer.run_dir / "checkpoints"
    assert sorted(p.name for p in ckpts.iterdir()) == ["best-epoch=00-val_loss=0.0000.ckpt", "last.ckpt"]
    best = torch.load(ckpts / "best-epoch=00-val_loss=0.0000.ckpt", weights_only=True)
    last = torch.load(ckpts / "last.ckpt", weights_only=True)
    assert best["global_step"] == 3 and (last["epoch"], last["global_step"]) == (2, 9)  # 192 rows / 64 = 3 steps
    for key, value in model.state_dict().items():
        torch.testing.assert_close(last["state_dict"][key], value, rtol=0, atol=0)
    assert not torch.equal(best["state_dict"]["net.0.weight"], last["state_dict"]["net.0.weight"])


def test_checkpoint_monitor_override_and_unknown_monitor(tmp_path, kit, data):
    trainer = AutoTrainer(
        max_epochs=2, default_root_dir=tmp_path, checkpoint_monitor="val/loss", checkpoint_mode="min", **kit.QUIET
    )
    trainer.fit(kit.TinyClassifier(), datamodule=data)
    assert trainer.checkpoint_callback.monitor == "val/loss"
    assert re.search(r"best-epoch=\d\d-val_loss=\d\.\d{4}\.ckpt$", trainer.checkpoint_callback.best_model_path)

    trainer = AutoTrainer(max_epochs=1, default_root_dir=tmp_path, checkpoint_monitor="val/nope", **kit.QUIET)
    with pytest.raises(ValueError, match="checkpoint_monitor='val/nope' was never logged"):
        trainer.fit(kit.TinyClassifier(), datamodule=data)
    with pytest.raises(ValueError, match="checkpoint_mode='best'"):
        AutoTrainer(checkpoint_mode="best")


def test_resume_continues_epoch_and_step(tmp_path, kit, data):
    pl.seed_everything(0)
    first = AutoTrainer(max_epochs=2, default_root_dir=tmp_path, **kit.QUIET)
    model = kit.TinyClassifier()
    first.fit(model, datamodule=data)
    steps_per_epoch = 6  # 192 training samples / batch 32
    assert first.global_step == 2 * steps_per_epoch
    last = first.run_dir / "checkpoints" / "last.ckpt"
    saved = torch.load(last, weights_only=True, map_location="cpu")
    assert saved["epoch"] == 1 and saved["global_step"] == 2 * steps_per_epoch

    class Probe(pl.Callback):
        def on_train_start(self, trainer, pl_module):
            self.start = (trainer.current_epoch, trainer.global_step)
            self.weights = {k: v.clone() for k, v in pl_module.state_dict().items()}

    probe = Probe()
    second = AutoTrainer(max_epochs=4, default_root_dir=tmp_path, callbacks=[probe], **kit.QUIET)
    second.fit(kit.TinyClassifier(), datamodule=data, ckpt_path=last)
    assert probe.start == (2, 2 * steps_per_epoch)
    for key, value in saved["state_dict"].items():
        torch.testing.assert_close(probe.weights[key], value, rtol=0, atol=0)
    assert second.current_epoch == 4 and second.global_step == 4 * steps_per_epoch
    assert second.run_dir.name == "version_1"
    assert sorted(epoch_values(read_csv(second.run_dir / "metrics.csv"), "val/accuracy")) == [2, 3]


def test_second_model_on_same_trainer_trains_in_its_own_run(tmp_path, kit, data):
    """The seed fits several models on one AutoTrainer; each must train from epoch 0, with fresh early stopping."""
    pl.seed_everything(0)
    stopper = pl.callbacks.EarlyStopping(monitor="val/accuracy", mode="max", patience=1)
    trainer = AutoTrainer(max_epochs=2, default_root_dir=tmp_path, callbacks=[stopper], **kit.QUIET)
    first, second = kit.TinyClassifier(), kit.TinyClassifier()
    trainer.fit(first, datamodule=data)
    first_dir, first_best = trainer.run_dir, trainer.checkpoint_callback.best_model_path
    before = {k: v.clone() for k, v in second.state_dict().items()}
    trainer.fit(second, datamodule=data)
    assert second.optimizer_steps == 2 * 6 and trainer.global_step == 2 * 6
    assert any(not torch.equal(before[k], v) for k, v in second.state_dict().items())
    assert trainer.run_dir != first_dir and trainer.run_dir.name == "version_1"
    assert Path(trainer.checkpoint_callback.best_model_path).parent.parent == trainer.run_dir
    assert Path(first_best).is_file()  # the first run's files stay where they were


def test_accumulate_grad_batches_step_count(tmp_path, kit, data):
    model = kit.TinyClassifier()
    trainer = AutoTrainer(max_epochs=2, accumulate_grad_batches=4, default_root_dir=tmp_path, **kit.QUIET)
    trainer.fit(model, datamodule=data)
    # 6 batches per epoch, accumulate 4: steps after batch 4 and at the epoch's last batch -> 2 per epoch
    assert model.optimizer_steps == 4 and trainer.global_step == 4


def test_bf16_mixed_on_cpu(tmp_path, kit, data):
    model = kit.TinyClassifier()
    seen: list[torch.dtype] = []
    model.net[0].register_forward_hook(lambda mod, inp, out: seen.append(out.dtype) if mod.training else None)
    trainer = AutoTrainer(max_epochs=1, precision="bf16-mixed", default_root_dir=tmp_path, **kit.QUIET)
    trainer.fit(model, datamodule=data)
    assert seen and set(seen) == {torch.bfloat16}
    assert all(p.dtype == torch.float32 for p in model.parameters())  # master weights stay fp32
    rows = read_csv(trainer.run_dir / "metrics.csv")
    assert all(torch.isfinite(torch.tensor(v)) for v in epoch_values(rows, "train/loss_epoch").values())


def test_bad_logger_argument():
    with pytest.raises(ValueError, match="logger=42"):
        AutoTrainer(logger=42)


def test_fast_dev_run_writes_nothing(tmp_path, kit, data):
    trainer = AutoTrainer(fast_dev_run=True, default_root_dir=tmp_path, **kit.QUIET)
    model = kit.TinyClassifier()
    trainer.fit(model, datamodule=data)
    assert model.optimizer_steps == 1
    assert list(tmp_path.iterdir()) == []
