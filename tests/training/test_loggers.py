"""LoggerConfig / LoggerManager: every configured backend really receives the metric, offline."""
from __future__ import annotations

import csv
import importlib.util

import pytest
import pytorch_lightning as pl

from hubtrain.training import AutoTrainer, LoggerConfig, LoggerManager


def csv_values(path, key: str) -> dict[int, float]:
    with open(path, newline="") as f:
        return {int(r["epoch"]): float(r[key]) for r in csv.DictReader(f) if r.get(key)}


def test_csv_and_tensorboard_both_get_the_metric(tmp_path, kit, data):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    trainer = AutoTrainer(
        max_epochs=2,
        default_root_dir=tmp_path,
        logger=[LoggerConfig("csv"), LoggerConfig("tensorboard")],
        **kit.QUIET,
    )
    trainer.fit(kit.TinyClassifier(), datamodule=data)
    run = trainer.run_dir
    assert [type(lg).__name__ for lg in trainer.loggers] == ["CSVLogger", "TensorBoardLogger"]  # no duplicate CSV
    from_csv = csv_values(run / "metrics.csv", "val/accuracy")
    assert len(from_csv) == 2

    events = list((run / "tensorboard").glob("events.out.tfevents.*"))
    assert len(events) == 1, events
    acc = EventAccumulator(str(events[0]))
    acc.Reload()
    assert "val/accuracy" in acc.Tags()["scalars"]
    from_tb = [e.value for e in acc.Scalars("val/accuracy")]
    assert from_tb == pytest.approx([from_csv[0], from_csv[1]], abs=1e-6)


def test_mixed_list_user_logger_first(tmp_path, kit, data):
    tb = pl.loggers.TensorBoardLogger(save_dir=tmp_path / "tb")
    trainer = AutoTrainer(max_epochs=1, default_root_dir=tmp_path, logger=[tb, LoggerConfig("csv")], **kit.QUIET)
    trainer.fit(kit.TinyClassifier(), datamodule=data)
    assert trainer.logger is tb  # the user's own logger stays trainer.logger
    assert (trainer.run_dir / "metrics.csv").is_file()
    assert list((tmp_path / "tb").rglob("events.out.tfevents.*"))


def test_mlflow_local_store(tmp_path, kit, data):
    from mlflow.tracking import MlflowClient  # hubtrain[test] installs mlflow: missing, this fails instead of skipping

    trainer = AutoTrainer(max_epochs=2, default_root_dir=tmp_path, logger=LoggerConfig("mlflow"), **kit.QUIET)
    trainer.fit(kit.TinyClassifier(), datamodule=data)
    mlf = trainer.loggers[0]
    assert mlf._tracking_uri == f"sqlite:///{(trainer.run_dir / 'mlflow.db').resolve()}"
    client = MlflowClient(tracking_uri=mlf._tracking_uri)
    history = client.get_metric_history(mlf.run_id, "val/accuracy")
    from_csv = csv_values(trainer.run_dir / "metrics.csv", "val/accuracy")
    assert sorted(m.value for m in history) == pytest.approx(sorted(from_csv.values()), abs=1e-6)
    assert client.get_run(mlf.run_id).data.params["lr"] == "0.05"  # hyperparameters reach the store too


def test_unknown_backend_lists_valid_ones():
    with pytest.raises(ValueError, match=r"unknown backend='comet'.*'csv', 'tensorboard', 'mlflow', 'wandb'"):
        LoggerConfig("comet")


def test_missing_package_names_the_extra(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name in ("tensorboard", "tensorboardX") else real(name, *a)
    )
    with pytest.raises(ImportError, match=r'pip install "hubtrain\[tensorboard\]"'):
        LoggerManager([LoggerConfig("tensorboard")])


@pytest.mark.skipif(importlib.util.find_spec("wandb") is not None, reason="wandb is installed here")
def test_wandb_missing_says_which_extra():
    with pytest.raises(ImportError, match=r'pip install "hubtrain\[wandb\]"'):
        AutoTrainer(logger=[LoggerConfig(backend="wandb", params={"project": "my-project"})])


@pytest.mark.skipif(importlib.util.find_spec("wandb") is None, reason="wandb is not installed (extra hubtrain[wandb])")
def test_wandb_is_offline_by_default(tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    logger = LoggerConfig(backend="wandb", params={"project": "my-project"}).build(tmp_path)
    assert logger._offline is True
    online = LoggerConfig(backend="wandb", params={"project": "p", "offline": False}).build(tmp_path)
    assert online._offline is False
