"""TunerConfig: Lightning's LR finder and batch-size scaler, applied and reported, never silent.

TunerConfig() turns both searches on (AutoTimm's defaults), so each test here turns off the one it does not test."""
from __future__ import annotations

import numpy as np
import pytest
import pytorch_lightning as pl
import yaml

from hubtrain.training import AutoTrainer, TunerConfig


class OptimizerLR(pl.Callback):
    def on_train_start(self, trainer, pl_module):
        self.lr = trainer.optimizers[0].param_groups[0]["lr"]


def test_auto_lr_applies_suggestion_and_saves_plot(tmp_path, kit):
    pl.seed_everything(0)
    data = kit.TinyDataModule(batch_size=8)  # 24 batches per epoch: enough points for the finder
    model = kit.TinyClassifier(lr=1e-5)
    probe = OptimizerLR()
    trainer = AutoTrainer(
        max_epochs=2,
        default_root_dir=tmp_path,
        callbacks=[probe],
        tuner_config=TunerConfig(auto_lr=True, auto_batch_size=False, lr_find_kwargs={"num_training": 40, "min_lr": 1e-5, "max_lr": 1.0}),
        **kit.QUIET,
    )
    trainer.fit(model, datamodule=data)

    chosen = trainer.tuning_results
    # the applied value is the steepest descent of the recorded curve (Lightning's rule, recomputed with numpy:
    # skip the first 10 and the last point, gradient of loss with respect to lr)
    lrs = np.array(trainer.lr_finder.results["lr"][10:-1])
    losses = np.array(trainer.lr_finder.results["loss"][10:-1])
    keep = np.isfinite(losses)
    expected = lrs[keep][np.argmin(np.gradient(losses[keep], lrs[keep]))]
    assert chosen["lr"] == pytest.approx(expected, rel=1e-6)
    assert 1e-5 < chosen["lr"] < 1.0
    assert chosen["previous_lr"] == 1e-5 and chosen["lr"] != 1e-5
    assert model.lr == chosen["lr"] == model.hparams.lr  # attribute and hparams both updated
    assert probe.lr == pytest.approx(chosen["lr"])  # the real fit trained with it
    png = trainer.run_dir / "lr_finder.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    hparams = yaml.safe_load((trainer.run_dir / "hparams.yaml").read_text())
    assert hparams["tuner/lr"] == pytest.approx(chosen["lr"])
    # the finder's scratch checkpoint stays inside the run and is cleaned up
    assert not list(tmp_path.rglob(".lr_find_*.ckpt"))


def test_auto_lr_without_enough_points_warns_and_keeps_lr(tmp_path, kit, data):
    model = kit.TinyClassifier(lr=0.05)
    trainer = AutoTrainer(
        max_epochs=1,
        default_root_dir=tmp_path,
        tuner_config=TunerConfig(auto_lr=True, auto_batch_size=False, lr_find_kwargs={"num_training": 5}),
        **kit.QUIET,
    )
    with pytest.warns(UserWarning, match=r"no learning rate suggested, keeping lr=0.05: only 5 loss values"):
        trainer.fit(model, datamodule=data)
    assert model.lr == 0.05


def test_auto_lr_on_module_without_lr_attribute_says_so(tmp_path, kit):
    train, _ = kit.make_data()
    loader = __import__("torch").utils.data.DataLoader(train, batch_size=4)  # 48 batches
    trainer = AutoTrainer(
        max_epochs=1, default_root_dir=tmp_path, tuner_config=TunerConfig(auto_lr=True, auto_batch_size=False, lr_find_kwargs={"num_training": 30}),
        **kit.QUIET,
    )
    with pytest.warns(UserWarning, match=r"lr_find suggests lr=.* but the model has no `lr` or `learning_rate`"):
        trainer.fit(kit.PlainModule(), loader)


def test_auto_batch_size(tmp_path, kit):
    data = kit.TinyDataModule(batch_size=4)
    trainer = AutoTrainer(
        max_epochs=1,
        default_root_dir=tmp_path,
        tuner_config=TunerConfig(
            auto_lr=False, auto_batch_size=True, batch_size_kwargs={"mode": "power", "init_val": 4, "max_trials": 2, "steps_per_trial": 1}
        ),
        **kit.QUIET,
    )
    trainer.fit(kit.TinyClassifier(), datamodule=data)
    # power mode tries 4 then 8; both fit in memory, and the last size that ran is the one applied
    assert trainer.tuning_results["batch_size"] == data.batch_size == 8


def test_auto_batch_size_without_attribute_warns(tmp_path, kit):
    train, _ = kit.make_data()
    loader = __import__("torch").utils.data.DataLoader(train, batch_size=32)
    trainer = AutoTrainer(
        max_epochs=1, default_root_dir=tmp_path, tuner_config=TunerConfig(auto_lr=False, auto_batch_size=True), **kit.QUIET
    )
    with pytest.warns(UserWarning, match="auto_batch_size=True\\) skipped: batch size scaling rebuilds the dataloaders"):
        trainer.fit(kit.PlainModule(), loader)

    class NoBatchSize(pl.LightningDataModule):
        def train_dataloader(self):
            return loader

    trainer = AutoTrainer(
        max_epochs=1, default_root_dir=tmp_path, tuner_config=TunerConfig(auto_lr=False, auto_batch_size=True), **kit.QUIET
    )
    with pytest.warns(UserWarning, match="neither the datamodule nor the model has a `batch_size` attribute"):
        trainer.fit(kit.PlainModule(), datamodule=NoBatchSize())


def test_tuner_off_by_default(tmp_path, kit, data):
    trainer = AutoTrainer(max_epochs=1, default_root_dir=tmp_path, **kit.QUIET)
    model = kit.TinyClassifier(lr=0.05)
    trainer.fit(model, datamodule=data)
    assert model.lr == 0.05 and not (trainer.run_dir / "lr_finder.png").exists()
