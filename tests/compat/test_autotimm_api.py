"""AutoTimm 0.7.37's public API, row by row: an AutoTimm script that changes ``import autotimm`` to ``import hubtrain``
keeps working, or fails with one line that names AutoTimm's behaviour and ours.

Each ``@row`` is one documented argument, default or method of ``ImageClassifier``, ``SemanticSegmentor``,
``ObjectDetector``, ``AutoTrainer``, ``TunerConfig``, ``LoggerConfig``, ``LoggerManager``, ``MetricConfig``,
``ImageDataModule`` or ``BackboneConfig`` (read from AutoTimm's signatures and docstrings), with what AutoTimm does,
what hubtrain does, and a status:

- ``same``: hubtrain does what AutoTimm documents; the check asserts that it took effect;
- ``error``: hubtrain cannot do it and raises a one-line ``ValueError`` naming AutoTimm's behaviour and ours;
- ``differs``: a deliberate difference, stated in the row; the check asserts hubtrain's stated behaviour.

``docs/autotimm_api.md`` is this table rendered; ``test_markdown_table_is_current`` keeps the two equal.
Regenerate it with ``python tests/compat/test_autotimm_api.py``.

Every row is cheap: timm's ``test_resnet`` at 32 px, the built-in digits, fits of two batches, one thread.
"""
from __future__ import annotations

import csv
import re
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import pytest

DOC = Path(__file__).resolve().parents[2] / "docs" / "autotimm_api.md"
SAME, ERROR, DIFFERS = "same", "error", "differs"


@dataclass
class Row:
    cls: str
    argument: str
    autotimm: str
    hubtrain: str
    status: str
    check: Callable[[Any], None]

    @property
    def id(self) -> str:
        return f"{self.cls}:{self.argument}"


ROWS: list[Row] = []


def row(cls: str, argument: str, autotimm: str, hubtrain: str = "the same", status: str = SAME):
    def register(check: Callable[[Any], None]) -> Callable[[Any], None]:
        assert status in (SAME, ERROR, DIFFERS), status
        ROWS.append(Row(cls, argument, autotimm, hubtrain, status, check))
        return check

    return register


def render() -> str:
    cell = lambda text: text.replace("|", "\\|")  # noqa: E731
    lines = [
        "# AutoTimm 0.7.37 API in hubtrain",
        "",
        "Generated from `tests/compat/test_autotimm_api.py` (`python tests/compat/test_autotimm_api.py`); every row is",
        "a test there that checks the behaviour took effect. Status: **same** (works as AutoTimm documents it),",
        "**error** (a one-line `ValueError` naming AutoTimm's behaviour, ours and what to do), **differs** (a deliberate",
        "difference, stated in the row).",
        "",
        "| Class | Argument or method | AutoTimm | hubtrain | Status |",
        "|---|---|---|---|---|",
    ]
    lines += [f"| {r.cls} | `{cell(r.argument)}` | {cell(r.autotimm)} | {cell(r.hubtrain)} | {r.status} |" for r in ROWS]
    counts = {s: sum(r.status == s for r in ROWS) for s in (SAME, ERROR, DIFFERS)}
    lines += ["", f"{len(ROWS)} rows: {counts[SAME]} same, {counts[ERROR]} error, {counts[DIFFERS]} differs.", ""]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------------------
# shared pieces


class Ctx:
    """What the checks share: tiny models, the digits data, a quiet 2-batch ``fit`` and the compat fixtures."""

    def __init__(self, tmp_path: Path, publish: Callable[[str], str], image_folder: Callable[..., Path]) -> None:
        self.tmp, self.publish, self.image_folder = tmp_path, publish, image_folder

    def digits(self, **kwargs: Any):
        from hubtrain import ImageDataModule

        return ImageDataModule(**{"dataset_name": "digits", "image_size": 32, "batch_size": 8, **kwargs})

    def classifier(self, **kwargs: Any):
        from hubtrain import ImageClassifier

        return ImageClassifier(**{"backbone": "test_resnet", "num_classes": 10, "pretrained": False, **kwargs})

    def segmentor(self, **kwargs: Any):
        from hubtrain import SemanticSegmentor

        small = dict(aspp_channels=8, decoder_channels=8, low_level_channels=4)
        return SemanticSegmentor(**{"backbone": "test_resnet", "num_classes": 3, "pretrained": False, **small, **kwargs})

    def detector(self, **kwargs: Any):
        from hubtrain import ObjectDetector

        small = dict(fpn_channels=16, head_num_convs=1)
        return ObjectDetector(**{"backbone": "test_resnet", "num_classes": 3, "pretrained": False, **small, **kwargs})

    def trainer(self, **kwargs: Any):
        from hubtrain import AutoTrainer

        return AutoTrainer(**{**self.quiet(), **kwargs})

    def quiet(self) -> dict[str, Any]:
        return dict(max_epochs=1, limit_train_batches=2, limit_val_batches=1, limit_test_batches=1, num_sanity_val_steps=0,
                    accelerator="cpu", devices=1, default_root_dir=self.tmp / "runs", enable_progress_bar=False,
                    enable_model_summary=False, plot_curves=False, log_every_n_steps=1)

    def fit(self, model: Any = None, data: Any = None, **trainer_kwargs: Any):
        trainer = self.trainer(**trainer_kwargs)
        trainer.fit(model if model is not None else self.classifier(), datamodule=data if data is not None else self.digits())
        return trainer


@pytest.fixture
def ctx(tmp_path, publish, image_folder, one_thread) -> Ctx:
    return Ctx(tmp_path, publish, image_folder)


def _one_line_error(call: Callable[[], Any], *fragments: str) -> str:
    with pytest.raises(ValueError) as info:
        call()
    message = str(info.value)
    assert "\n" not in message, message
    for fragment in fragments:
        assert fragment in message, (fragment, message)
    return message


def _checkpoints(trainer) -> list:
    from pytorch_lightning.callbacks import ModelCheckpoint

    return [cb for cb in trainer.callbacks if isinstance(cb, ModelCheckpoint)]


def _no_tuning(ctx: Ctx, **trainer_kwargs: Any) -> None:
    model = ctx.classifier(lr=0.02)
    trainer = ctx.fit(model, **trainer_kwargs)
    assert trainer.tuner_config is None and trainer.lr_finder is None and trainer.tuning_results == {}
    assert model.lr == 0.02 and not list((ctx.tmp / "runs").rglob("lr_finder.png"))


def _seed_at_fit(ctx: Ctx, **trainer_kwargs: Any) -> None:
    import pytorch_lightning as pl
    import torch

    class Probe(pl.Callback):
        def on_fit_start(self, trainer, pl_module):
            self.seed = torch.initial_seed()

    probe = Probe()
    trainer = ctx.trainer(seed=1234, callbacks=[probe], **trainer_kwargs)
    torch.manual_seed(0)  # whatever ran between the trainer and fit
    trainer.fit(ctx.classifier(), datamodule=ctx.digits())
    assert probe.seed == 1234


def _optimizers(model: Any) -> dict:
    import pytorch_lightning as pl

    # a run of 3 epochs, 100 steps: what the schedules size themselves by
    model.trainer = pl.Trainer(max_epochs=3, max_steps=100, logger=False, enable_progress_bar=False, enable_model_summary=False)
    return model.configure_optimizers()


# ---------------------------------------------------------------------------------------------------------------
# AutoTrainer


@row("AutoTrainer", "tuner_config=False", "no LR finder, no batch-size scaling")
def _(ctx):
    _no_tuning(ctx, tuner_config=False)


@row("AutoTrainer", "tuner_config=None (default)", "AutoTimm's default tuning: LR finder (+ batch size on GPU)",
     "no tuning; pass tuner_config=True for AutoTimm's default", DIFFERS)
def _(ctx):
    _no_tuning(ctx)


@row("AutoTrainer", "tuner_config=True", "TunerConfig(auto_batch_size=<CUDA available>)")
def _(ctx):
    import torch

    from hubtrain import TunerConfig

    trainer = ctx.fit(tuner_config=True)
    assert trainer.tuner_config == TunerConfig(auto_batch_size=torch.cuda.is_available())
    assert trainer.lr_finder is not None and (trainer.run_dir / "lr_finder.png").is_file()


@row("AutoTrainer", "tuner_config=<anything else>", "TypeError listing TunerConfig, None, True, False",
     "one-line ValueError listing the same", ERROR)
def _(ctx):
    from hubtrain import AutoTrainer

    _one_line_error(lambda: AutoTrainer(tuner_config="yes"), "tuner_config='yes'", "True (AutoTimm's default tuning)")


@row("AutoTrainer", "fast_dev_run=True", "turns auto-tuning off")
def _(ctx):
    from hubtrain import AutoTrainer

    assert AutoTrainer(fast_dev_run=True, tuner_config=True, enable_progress_bar=False).tuner_config is None


@row("AutoTrainer", "tuner_config (property)", "the TunerConfig in use, or None")
def _(ctx):
    from hubtrain import AutoTrainer, TunerConfig

    config = TunerConfig(auto_batch_size=False)
    assert AutoTrainer(tuner_config=config).tuner_config is config and AutoTrainer(tuner_config=False).tuner_config is None


@row("AutoTrainer", 'checkpoint_monitor="auto" (default)', "best checkpoint on the task's metric (val/loss unless the task "
     "declares one)", "best checkpoint on the task's `monitor`: val/accuracy for ImageClassifier, val/mIoU, val/map",
     DIFFERS)
def _(ctx):
    trainer = ctx.fit()
    (checkpoint,) = _checkpoints(trainer)
    assert (checkpoint.monitor, checkpoint.mode) == ("val/accuracy", "max")
    assert Path(checkpoint.best_model_path).is_file()


@row("AutoTrainer", "checkpoint_monitor=None", "no monitored checkpoint (Lightning's own latest-epoch one stays)")
def _(ctx):
    trainer = ctx.fit(checkpoint_monitor=None)
    assert [cb.monitor for cb in _checkpoints(trainer)] == [None]
    assert list((trainer.run_dir / "checkpoints").glob("epoch=0-step=2.ckpt"))


@row("AutoTrainer", 'checkpoint_monitor="val/loss", checkpoint_mode="min"', "best checkpoint on that metric and mode")
def _(ctx):
    trainer = ctx.fit(checkpoint_monitor="val/loss", checkpoint_mode="min")
    (checkpoint,) = _checkpoints(trainer)
    assert (checkpoint.monitor, checkpoint.mode) == ("val/loss", "min") and Path(checkpoint.best_model_path).is_file()


@row("AutoTrainer", "checkpoint_mode (default)", '"min" for any named metric',
     "inferred from the name (min for a loss, else max); give it to choose", DIFFERS)
def _(ctx):
    (checkpoint,) = _checkpoints(ctx.fit(checkpoint_monitor="val/accuracy"))
    assert checkpoint.mode == "max"


@row("AutoTrainer", "seed=1234", "seeds at the start of fit() and test()")
def _(ctx):
    _seed_at_fit(ctx)


@row("AutoTrainer", "use_autotimm_seeding=True", "AutoTimm's seed_everything instead of Lightning's",
     "accepted; both seed Python, NumPy and torch, hubtrain with Lightning's")
def _(ctx):
    _seed_at_fit(ctx, use_autotimm_seeding=True)


@row("AutoTrainer", "deterministic=True", "deterministic cuDNN (with a seed)",
     "Lightning's deterministic=True: torch's deterministic algorithms (a superset)")
def _(ctx):
    import torch

    before = torch.are_deterministic_algorithms_enabled()
    try:
        ctx.trainer(deterministic=True, seed=0)
        assert torch.are_deterministic_algorithms_enabled()
    finally:
        torch.use_deterministic_algorithms(before)


@row("AutoTrainer", "json_progress=True", "NDJSON progress events on stdout for AutoTimm's front end",
     "one-line ValueError: use a CSV logger or a callback", ERROR)
def _(ctx):
    from hubtrain import AutoTrainer

    _one_line_error(lambda: AutoTrainer(json_progress=True), "json_progress=True", "AutoTimm", "hubtrain")


@row("AutoTrainer", "logger=False", "no logger")
def _(ctx):
    trainer = ctx.fit(logger=False)
    assert trainer.loggers == [] and not (trainer.run_dir / "metrics.csv").exists()


@row("AutoTrainer", "logger (default)", "False: no logger",
     "a CSV logger writing metrics.csv into the run directory", DIFFERS)
def _(ctx):
    trainer = ctx.fit()
    assert "val/loss" in (trainer.run_dir / "metrics.csv").read_text()


@row("AutoTrainer", "logger=[LoggerConfig(...)]", "loggers built from the configs")
def _(ctx):
    from hubtrain import LoggerConfig

    trainer = ctx.fit(logger=[LoggerConfig(backend="csv", params={"save_dir": str(ctx.tmp / "logs"), "name": "run"})])
    assert list((ctx.tmp / "logs" / "run").rglob("metrics.csv"))


@row("AutoTrainer", "logger=LoggerManager(...)", "the manager's loggers")
def _(ctx):
    from hubtrain import LoggerConfig, LoggerManager

    manager = LoggerManager(configs=[LoggerConfig(backend="csv", params={"save_dir": str(ctx.tmp / "mgr")})])
    ctx.fit(logger=manager)
    assert list((ctx.tmp / "mgr").rglob("metrics.csv"))


@row("AutoTrainer", "logger=<Lightning Logger or list>", "used as given")
def _(ctx):
    from pytorch_lightning.loggers import CSVLogger

    mine = CSVLogger(save_dir=str(ctx.tmp / "own"))
    trainer = ctx.fit(logger=[mine])
    assert mine in trainer.loggers and list((ctx.tmp / "own").rglob("metrics.csv"))


@row("AutoTrainer", 'default_root_dir (default ".")', "Lightning's layout under the current directory",
     'runs filed as <default_root_dir or "runs">/<model class>/version_k/', DIFFERS)
def _(ctx):
    trainer = ctx.fit()
    assert trainer.run_dir == ctx.tmp / "runs" / "imageclassifier" / "version_0"


@row("AutoTrainer", "max_epochs=10, precision=32 (defaults)", "Lightning's Trainer settings")
def _(ctx):
    from hubtrain import AutoTrainer

    trainer = AutoTrainer(enable_progress_bar=False)
    assert trainer.max_epochs == 10 and trainer.precision == "32-true"


@row("AutoTrainer", "gradient_clip_val, val_check_interval, accumulate_grad_batches, **trainer_kwargs",
     "passed to pl.Trainer")
def _(ctx):
    trainer = ctx.trainer(gradient_clip_val=0.5, val_check_interval=0.5, accumulate_grad_batches=2)
    assert trainer.gradient_clip_val == 0.5 and trainer.val_check_interval == 0.5 and trainer.accumulate_grad_batches == 2


@row("AutoTrainer", "callbacks=[...]", "added to the trainer")
def _(ctx):
    import pytorch_lightning as pl

    class Count(pl.Callback):
        epochs = 0

        def on_train_epoch_end(self, trainer, pl_module):
            self.epochs += 1

    count = Count()
    ctx.fit(callbacks=[count])
    assert count.epochs == 1


@row("AutoTrainer", "enable_checkpointing=False", "no checkpoint")
def _(ctx):
    trainer = ctx.fit(enable_checkpointing=False)
    assert not _checkpoints(trainer) and not list(trainer.run_dir.rglob("*.ckpt"))


@row("AutoTrainer", 'test(ckpt_path="best") (default)', "tests the best checkpoint of the last fit")
def _(ctx):
    import torch

    model = ctx.classifier()
    data = ctx.digits()
    trainer = ctx.fit(model, data)
    best = torch.load(trainer.checkpoint_callback.best_model_path, map_location="cpu", weights_only=False)["state_dict"]
    with torch.no_grad():
        model.head[1].weight.add_(1.0)  # weights that are not the checkpoint's
    results = trainer.test(model, datamodule=data, verbose=False)
    assert "test/accuracy" in results[0]
    assert torch.equal(model.state_dict()["head.1.weight"], best["head.1.weight"])  # the checkpoint was tested


# ---------------------------------------------------------------------------------------------------------------
# TunerConfig


@row("TunerConfig", "TunerConfig() defaults", "auto_lr=True, auto_batch_size=True")
def _(ctx):
    from hubtrain import TunerConfig

    config = TunerConfig()
    assert config.auto_lr is True and config.auto_batch_size is True


@row("TunerConfig", "lr_find_kwargs=None", "min_lr=1e-7, max_lr=1, num_training=100, exponential, early_stop_threshold=4")
def _(ctx):
    from hubtrain import TunerConfig

    assert TunerConfig().lr_find_kwargs == {"min_lr": 1e-7, "max_lr": 1.0, "num_training": 100, "mode": "exponential",
                                            "early_stop_threshold": 4.0}


@row("TunerConfig", "batch_size_kwargs=None", "power mode, steps_per_trial=3, init_val=16, max_trials=25")
def _(ctx):
    from hubtrain import TunerConfig

    assert TunerConfig().batch_size_kwargs == {"mode": "power", "steps_per_trial": 3, "init_val": 16, "max_trials": 25}


@row("TunerConfig", "auto_lr=True, lr_find_kwargs={...}", "Tuner.lr_find with those arguments; the suggestion becomes "
     "the model's lr")
def _(ctx):
    from hubtrain import TunerConfig

    model = ctx.classifier(lr=1e-4)
    tuner = TunerConfig(auto_lr=True, auto_batch_size=False,
                        lr_find_kwargs={"min_lr": 1e-5, "max_lr": 1.0, "num_training": 16, "early_stop_threshold": None})
    trainer = ctx.fit(model, tuner_config=tuner, limit_train_batches=16)
    assert len(trainer.lr_finder.results["lr"]) == 16
    assert model.lr == trainer.tuning_results["lr"] != 1e-4


@row("TunerConfig", "auto_batch_size=True, batch_size_kwargs={...}", "Tuner.scale_batch_size on the datamodule's batch_size")
def _(ctx):
    from hubtrain import TunerConfig

    data = ctx.digits(batch_size=4)
    tuner = TunerConfig(auto_lr=False, batch_size_kwargs={"mode": "power", "init_val": 4, "max_trials": 2, "steps_per_trial": 1})
    trainer = ctx.fit(data=data, tuner_config=tuner)
    assert trainer.tuning_results["batch_size"] == data.batch_size == 8


# ---------------------------------------------------------------------------------------------------------------
# LoggerConfig and LoggerManager


@row("LoggerConfig", 'LoggerConfig(backend="csv", params={"save_dir": ...})', "a Lightning CSVLogger built with params")
def _(ctx):
    from pytorch_lightning.loggers import CSVLogger

    from hubtrain import LoggerConfig, LoggerManager

    (logger,) = LoggerManager([LoggerConfig(backend="csv", params={"save_dir": str(ctx.tmp / "a"), "name": "x"})]).loggers
    assert isinstance(logger, CSVLogger) and Path(logger.save_dir) == ctx.tmp / "a" and logger.name == "x"


@row("LoggerConfig", 'backend="TensorBoard"', "backend is case-insensitive")
def _(ctx):
    from hubtrain import LoggerConfig

    assert LoggerConfig(backend="TensorBoard").backend == "tensorboard"


@row("LoggerConfig", "params (default)", "{}")
def _(ctx):
    from hubtrain import LoggerConfig

    assert LoggerConfig(backend="csv").params == {}


@row("LoggerConfig", 'backend="neptune"', "ValueError naming the valid backends")
def _(ctx):
    from hubtrain import LoggerConfig

    _one_line_error(lambda: LoggerConfig(backend="neptune"), "neptune", "csv")


@row("LoggerConfig", "required params (save_dir, experiment_name, project)", "ValueError when missing",
     "optional: loggers write into the run directory, MLflow to a local store", DIFFERS)
def _(ctx):
    from hubtrain import LoggerConfig

    trainer = ctx.fit(logger=[LoggerConfig(backend="csv")])
    assert (trainer.run_dir / "metrics.csv").is_file()


@row("LoggerManager", "LoggerManager(configs=[...]).loggers", "the built Lightning loggers (for pl.Trainer(logger=...))")
def _(ctx):
    from pytorch_lightning.loggers import CSVLogger

    from hubtrain import LoggerConfig, LoggerManager

    manager = LoggerManager(configs=[LoggerConfig("csv", {"save_dir": str(ctx.tmp / "l")})])
    assert manager.loggers is manager.loggers and isinstance(manager.loggers[0], CSVLogger)


@row("LoggerManager", "len(), iteration, [index], configs", "over the loggers / their configs")
def _(ctx):
    from hubtrain import LoggerConfig, LoggerManager

    configs = [LoggerConfig("csv", {"save_dir": str(ctx.tmp / "a")}), LoggerConfig("csv", {"save_dir": str(ctx.tmp / "b")})]
    manager = LoggerManager(configs=configs)
    assert len(manager) == 2 and list(manager) == manager.loggers and manager[1] is manager.loggers[1]
    assert manager.configs == configs


@row("LoggerManager", 'get_logger_by_backend("csv")', "the first logger of that backend, else None")
def _(ctx):
    from hubtrain import LoggerConfig, LoggerManager

    manager = LoggerManager(configs=[LoggerConfig("csv", {"save_dir": str(ctx.tmp / "a")})])
    assert manager.get_logger_by_backend("CSV") is manager[0] and manager.get_logger_by_backend("wandb") is None


@row("LoggerManager", "LoggerManager(configs=[])", "ValueError: at least one LoggerConfig",
     "allowed (AutoTrainer adds its CSV logger)", DIFFERS)
def _(ctx):
    from hubtrain import LoggerManager

    assert len(LoggerManager(configs=[])) == 0


# ---------------------------------------------------------------------------------------------------------------
# MetricConfig


@row("MetricConfig", "fields and their order", "name, backend, metric_class, params, stages, log_on_step=False, "
     "log_on_epoch=True, prog_bar=False")
def _(ctx):
    from hubtrain import MetricConfig

    config = MetricConfig("acc", "torchmetrics", "Accuracy", {"task": "multiclass"}, ["val"], True, False, True)
    assert (config.log_on_step, config.log_on_epoch, config.prog_bar) == (True, False, True)
    assert MetricConfig("a", metric_class="Accuracy").log_on_step is False and MetricConfig("a", metric_class="Accuracy").log_on_epoch


@row("MetricConfig", "log_on_step=True", "logged per step as well as per epoch")
def _(ctx):
    from hubtrain import MetricConfig

    metric = MetricConfig(name="acc", backend="torchmetrics", metric_class="Accuracy", params={"task": "multiclass"},
                          stages=["train"], log_on_step=True, log_on_epoch=True)
    trainer = ctx.fit(ctx.classifier(metrics=[metric]))
    with open(trainer.run_dir / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert sum(bool(r["train/acc_step"]) for r in rows) == 2 and sum(bool(r["train/acc_epoch"]) for r in rows) == 1


@row("MetricConfig", 'backend="TorchMetrics", stages=["Val"]', "lower-cased")
def _(ctx):
    from hubtrain import MetricConfig

    config = MetricConfig("acc", backend="TorchMetrics", metric_class="Accuracy", params={}, stages=["Val"])
    assert config.backend == "torchmetrics" and config.stages == ["val"]


@row("MetricConfig", 'params={"task": "multiclass"} (no num_classes)', "num_classes filled in from the task")
def _(ctx):
    from hubtrain import MetricConfig

    model = ctx.classifier(metrics=[MetricConfig("acc", "torchmetrics", "Accuracy", {"task": "multiclass"}, ["val"])])
    assert model.metrics.metrics("val")["val/acc"].num_classes == 10


@row("MetricConfig", 'backend="custom", metric_class="pkg.module.Class"', "imports your torchmetrics.Metric")
def _(ctx):
    import torchmetrics

    from hubtrain import MetricConfig

    config = MetricConfig("acc", "custom", "torchmetrics.classification.MulticlassAccuracy", {"num_classes": 3}, ["val"])
    assert isinstance(config.build(), torchmetrics.classification.MulticlassAccuracy)


@row("MetricConfig", "params, stages (required)", "no defaults", "params={} and all three stages by default", DIFFERS)
def _(ctx):
    from hubtrain import MetricConfig

    assert MetricConfig("acc", metric_class="Accuracy").stages == ["train", "val", "test"]


# ---------------------------------------------------------------------------------------------------------------
# ImageClassifier


def _backbone_name_survives_checkpoint(ctx: Ctx, backbone: str, **kwargs: Any) -> None:
    from hubtrain import ImageClassifier

    model = ctx.classifier(backbone=backbone, **kwargs)
    assert model.hparams["backbone_name"] == backbone
    trainer = ctx.fit(model, ctx.digits(), limit_train_batches=1)
    loaded = ImageClassifier.load_from_checkpoint(trainer.checkpoint_callback.best_model_path, map_location="cpu")
    assert loaded.hparams["backbone_name"] == backbone


@row("ImageClassifier", 'hparams["backbone_name"] (timm name)', "the backbone's name, kept by load_from_checkpoint")
def _(ctx):
    _backbone_name_survives_checkpoint(ctx, "test_resnet")


@row("ImageClassifier", 'hparams["backbone_name"] ("hf-hub:org/name")', "the backbone's name, kept by load_from_checkpoint")
def _(ctx):
    _backbone_name_survives_checkpoint(ctx, ctx.publish("hf_hub_timm"), pretrained=True)


@row("ImageClassifier", 'hparams["backbone_name"] (transformers "hf:org/name")', "AutoTimm takes timm backbones only",
     "the transformers name, kept by load_from_checkpoint")
def _(ctx):
    _backbone_name_survives_checkpoint(ctx, ctx.publish("hf_auto"), pretrained=True)


@row("ImageClassifier", "hparams username, timestamp", "recorded",
     "not recorded: they would be published with save_pretrained / push_to_hub", DIFFERS)
def _(ctx):
    assert not {"username", "timestamp"} & set(ctx.classifier().hparams)


@row("ImageClassifier", "save_hyperparameters() contents", "every constructor argument but metrics, logging_config, "
     "transform_config, loss_fn, + backbone_name", "the same (metrics kept, as JSON); a loss_fn module is left out")
def _(ctx):
    import inspect

    from torch import nn

    model = ctx.classifier(loss_fn=nn.CrossEntropyLoss())
    autotimm_saved = ("backbone num_classes multi_label threshold lr weight_decay optimizer optimizer_kwargs scheduler "
                      "scheduler_kwargs head_dropout label_smoothing freeze_backbone mixup_alpha compile_model "
                      "compile_kwargs seed deterministic backbone_name").split()
    assert set(autotimm_saved) <= set(model.hparams) and "loss_fn" not in model.hparams
    assert set(inspect.signature(type(model)).parameters) - {"loss_fn"} <= set(model.hparams)


@row("ImageClassifier", "load_from_checkpoint(path, **overrides)", "rebuilds from the saved hyperparameters; overrides win")
def _(ctx):
    from hubtrain import ImageClassifier

    trainer = ctx.fit(ctx.classifier())
    loaded = ImageClassifier.load_from_checkpoint(trainer.checkpoint_callback.best_model_path, lr=0.5, map_location="cpu")
    assert loaded.lr == 0.5 and loaded.head[1].out_features == 10


@row("ImageClassifier", "configure_optimizers() with a scheduler", '{"optimizer": ..., "lr_scheduler": {"scheduler", '
     '"interval", "frequency"}}')
def _(ctx):
    import torch

    config = _optimizers(ctx.classifier(scheduler="cosine"))
    assert set(config) == {"optimizer", "lr_scheduler"} and isinstance(config["optimizer"], torch.optim.Optimizer)
    assert isinstance(config["lr_scheduler"]["scheduler"], torch.optim.lr_scheduler.CosineAnnealingLR)
    assert (config["lr_scheduler"]["interval"], config["lr_scheduler"]["frequency"]) == ("step", 1)


@row("ImageClassifier", "configure_optimizers() with scheduler=None", '{"optimizer": ...}')
def _(ctx):
    import torch

    config = ctx.classifier(scheduler=None).configure_optimizers()
    assert set(config) == {"optimizer"} and isinstance(config["optimizer"], torch.optim.AdamW)
    assert set(ctx.classifier(scheduler="none").configure_optimizers()) == {"optimizer"}


@row("ImageClassifier", "backbone=BackboneConfig(..., num_classes=1000)", "the config's backbone, made headless")
def _(ctx):
    from hubtrain import BackboneConfig

    model = ctx.classifier(backbone=BackboneConfig("test_resnet", pretrained=False, num_classes=1000), num_classes=4)
    assert model.head[1].out_features == 4 and model.hparams["backbone_name"] == "test_resnet"


@row("ImageClassifier", "multi_label=True, threshold=0.3", "sigmoid outputs; metrics count a label positive above 0.3")
def _(ctx):
    from hubtrain import MetricConfig

    metric = MetricConfig("acc", "torchmetrics", "Accuracy", {"task": "multilabel"}, ["val"])
    model = ctx.classifier(num_classes=4, multi_label=True, threshold=0.3, metrics=[metric])
    assert model.metrics.metrics("val")["val/acc"].threshold == 0.3


@row("ImageClassifier", "loss_fn=<nn.Module>", "used as the loss")
def _(ctx):
    import torch
    from torch import nn

    class Doubled(nn.Module):
        def forward(self, logits, targets):
            return 2 * nn.functional.cross_entropy(logits, targets)

    logits, targets = torch.randn(4, 10), torch.tensor([1, 2, 3, 4])
    assert ctx.classifier(loss_fn=Doubled()).loss(logits, targets) == pytest.approx(2 * ctx.classifier().loss(logits, targets).item())


@row("ImageClassifier", 'loss_fn="cross_entropy" / "bce"', "a loss of AutoTimm's registry")
def _(ctx):
    from torch import nn

    assert isinstance(ctx.classifier(loss_fn="cross_entropy", label_smoothing=0.1).criterion, nn.CrossEntropyLoss)
    assert ctx.classifier(loss_fn="ce", label_smoothing=0.1).criterion.label_smoothing == 0.1
    assert isinstance(ctx.classifier(num_classes=3, multi_label=True, loss_fn="bce").criterion, nn.BCEWithLogitsLoss)


@row("ImageClassifier", 'loss_fn="focal" (other registry names)', "AutoTimm's loss registry",
     "one-line ValueError: pass the loss as an nn.Module", ERROR)
def _(ctx):
    _one_line_error(lambda: ctx.classifier(loss_fn="focal"), "loss_fn='focal'", "AutoTimm", "nn.Module")


@row("ImageClassifier", "metrics=[MetricConfig] or MetricManager", "those metrics, logged as {stage}/{name}")
def _(ctx):
    from hubtrain import MetricConfig, MetricManager

    configs = [MetricConfig("acc", "torchmetrics", "Accuracy", {"task": "multiclass"}, ["val", "test"])]
    for metrics in (configs, MetricManager(configs, num_classes=10)):
        assert set(ctx.classifier(metrics=metrics).metrics.metrics("val")) == {"val/acc"}


@row("ImageClassifier", "metrics=None", "no metrics", "accuracy (+ macro F1 and top-5 on val/test)", DIFFERS)
def _(ctx):
    assert set(ctx.classifier().metrics.metrics("val")) == {"val/accuracy", "val/f1", "val/top5_accuracy"}


@row("ImageClassifier", "logging_config=LoggingConfig(...)", "logs lr / gradient norms / confusion matrix from the task",
     "one-line ValueError: use Lightning's LearningRateMonitor", ERROR)
def _(ctx):
    _one_line_error(lambda: ctx.classifier(logging_config=object()), "logging_config", "AutoTimm", "LearningRateMonitor")


@row("ImageClassifier", "transform_config=TransformConfig(...)", "adds model.preprocess()",
     "one-line ValueError: use ImageDataModule.from_backbone(model)", ERROR)
def _(ctx):
    _one_line_error(lambda: ctx.classifier(transform_config=object()), "transform_config", "AutoTimm", "from_backbone")


@row("ImageClassifier", "lr, weight_decay", "the optimiser's learning rate and weight decay",
     "the same; biases and norm weights get no decay", DIFFERS)
def _(ctx):
    optimizer = ctx.classifier(lr=0.02, weight_decay=0.3, scheduler=None).configure_optimizers()["optimizer"]
    assert [g["lr"] for g in optimizer.param_groups] == [0.02, 0.02]
    assert [g["weight_decay"] for g in optimizer.param_groups] == [0.3, 0.0]


@row("ImageClassifier", 'optimizer="sgd" / "rmsprop" / "adagrad" / "lamb" / {"class", "params"}',
     "torch's or timm's optimiser (SGD without momentum unless asked)")
def _(ctx):
    import timm.optim
    import torch

    expected = {"sgd": torch.optim.SGD, "rmsprop": torch.optim.RMSprop, "adagrad": torch.optim.Adagrad,
                "lamb": timm.optim.Lamb, "adamp": timm.optim.AdamP}
    for name, cls in expected.items():
        assert type(ctx.classifier(optimizer=name, scheduler=None).configure_optimizers()["optimizer"]) is cls
    sgd = ctx.classifier(optimizer="sgd", scheduler=None).configure_optimizers()["optimizer"]
    assert sgd.param_groups[0]["momentum"] == 0
    spec = {"class": "torch.optim.SGD", "params": {"momentum": 0.8}}
    assert ctx.classifier(optimizer=spec, scheduler=None).configure_optimizers()["optimizer"].param_groups[0]["momentum"] == 0.8


@row("ImageClassifier", 'scheduler="multistep" / "exponential" / "plateau" / "cosine_with_restarts"',
     "MultiStepLR, ExponentialLR, ReduceLROnPlateau (with monitor), timm's CosineLRScheduler")
def _(ctx):
    import torch
    from timm.scheduler import CosineLRScheduler

    sched = torch.optim.lr_scheduler
    expected = {"multistep": sched.MultiStepLR, "exponential": sched.ExponentialLR, "plateau": sched.ReduceLROnPlateau,
                "cosine_with_restarts": CosineLRScheduler}
    for name, cls in expected.items():
        assert type(_optimizers(ctx.classifier(scheduler=name))["lr_scheduler"]["scheduler"]) is cls, name
    assert _optimizers(ctx.classifier(scheduler="plateau"))["lr_scheduler"]["monitor"] == "val/accuracy"
    trainer = ctx.fit(ctx.classifier(scheduler="cosine_with_restarts"))  # timm's scheduler steps with the epoch
    assert trainer.current_epoch == 1


@row("ImageClassifier", 'scheduler="step"', "StepLR(step_size=30) stepped per optimiser step",
     "StepLR(step_size=max_epochs // 3) stepped per epoch; scheduler_kwargs set both", DIFFERS)
def _(ctx):
    config = _optimizers(ctx.classifier(scheduler="step"))["lr_scheduler"]
    assert config["interval"] == "epoch" and config["scheduler"].step_size == 1


@row("ImageClassifier", 'scheduler="onecycle"', "OneCycleLR peaking at 10 x lr",
     'OneCycleLR peaking at lr; scheduler_kwargs={"max_lr": ...} for another peak', DIFFERS)
def _(ctx):
    scheduler = _optimizers(ctx.classifier(scheduler="onecycle", lr=0.01))["lr_scheduler"]["scheduler"]
    assert scheduler.optimizer.param_groups[0]["max_lr"] == 0.01


@row("ImageClassifier", 'scheduler_kwargs={"T_max": ..., "interval": ..., "frequency": ...}',
     "passed to the scheduler; interval and frequency to Lightning")
def _(ctx):
    config = _optimizers(ctx.classifier(scheduler="cosine", scheduler_kwargs={"T_max": 7, "interval": "epoch", "frequency": 2}))
    assert config["lr_scheduler"]["scheduler"].T_max == 7
    assert (config["lr_scheduler"]["interval"], config["lr_scheduler"]["frequency"]) == ("epoch", 2)


@row("ImageClassifier", "head_dropout, freeze_backbone", "dropout before the head; a frozen backbone")
def _(ctx):
    model = ctx.classifier(head_dropout=0.3, freeze_backbone=True)
    assert model.head[0].p == 0.3 and not any(p.requires_grad for p in model.backbone.parameters())


@row("ImageClassifier", "label_smoothing=0.1", "cross-entropy label smoothing")
def _(ctx):
    import torch

    logits, targets = torch.randn(4, 10), torch.tensor([1, 2, 3, 4])
    expected = torch.nn.functional.cross_entropy(logits, targets, label_smoothing=0.1)
    assert ctx.classifier(label_smoothing=0.1).loss(logits, targets) == pytest.approx(expected.item())


@row("ImageClassifier", "label_smoothing with multi_label=True", "ValueError", "smooths the BCE targets", DIFFERS)
def _(ctx):
    import torch

    model = ctx.classifier(num_classes=3, multi_label=True, label_smoothing=0.2)
    logits, targets = torch.zeros(1, 3), torch.tensor([[1, 0, 1]])
    expected = torch.nn.functional.binary_cross_entropy_with_logits(logits, torch.tensor([[0.9, 0.1, 0.9]]))
    assert model.loss(logits, targets) == pytest.approx(expected.item())


@row("ImageClassifier", "mixup_alpha=0.4", "training batches mixed with a shuffled copy (Mixup)")
def _(ctx):
    import torch

    torch.manual_seed(0)
    model = ctx.classifier(mixup_alpha=0.4)
    seen = []
    model.backbone.register_forward_hook(lambda module, args, out: seen.append(args[0].detach().clone()))
    images, targets = torch.randn(8, 3, 32, 32), torch.arange(8)
    with pytest.warns(UserWarning, match="self.log"):  # no trainer attached
        model._step((images, targets), "train")
        model._step((images, targets), "val")
    assert not torch.allclose(seen[0], images) and torch.allclose(seen[1], images)  # mixed for training only


@row("ImageClassifier", "compile_model (default)", "True: torch.compile backbone and head",
     "False: on CPU compiling costs more than it saves; pass True", DIFFERS)
def _(ctx):
    assert ctx.classifier()._compiled is None


@row("ImageClassifier", "compile_model=True, compile_kwargs={...}", "torch.compile with those arguments")
def _(ctx):
    import torch

    model = ctx.classifier(compile_model=True, compile_kwargs={"backend": "eager"}).eval()
    assert model._compiled is not None
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(model(x), model._logits(x), atol=1e-5)


@row("ImageClassifier", "seed=0, deterministic=True", "seeds before building (same initial weights); deterministic "
     "algorithms on")
def _(ctx):
    import torch

    before = torch.are_deterministic_algorithms_enabled()
    try:
        first = ctx.classifier(seed=0).head[1].weight
        torch.rand(100)
        assert torch.equal(first, ctx.classifier(seed=0).head[1].weight)
        assert torch.are_deterministic_algorithms_enabled()
    finally:
        torch.use_deterministic_algorithms(before)


@row("ImageClassifier", "predict_step(batch)", "softmax probabilities (sigmoid for multi-label)")
def _(ctx):
    import torch

    probs = ctx.classifier().eval().predict_step(torch.randn(2, 3, 32, 32), 0)
    assert probs.shape == (2, 10) and torch.allclose(probs.sum(-1), torch.ones(2))


# ---------------------------------------------------------------------------------------------------------------
# SemanticSegmentor


@row("SemanticSegmentor", 'hparams["backbone_name"]', "the backbone's name")
def _(ctx):
    assert ctx.segmentor().hparams["backbone_name"] == "test_resnet"


@row("SemanticSegmentor", 'loss_type="combined", lr=1e-4 (defaults)', "CE + Dice; lr 1e-4")
def _(ctx):
    model = ctx.segmentor()
    assert model.criterion.loss_type == "combined" and model.lr == 1e-4


@row("SemanticSegmentor", "ce_weight, dice_weight, ignore_index, class_weights", "weights of the combined loss; "
     "ignored label; CE class weights")
def _(ctx):
    import torch

    model = ctx.segmentor(ce_weight=0.5, dice_weight=2.0, ignore_index=7, class_weights=torch.tensor([1.0, 2.0, 3.0]))
    criterion = model.criterion
    assert (criterion.ce_weight, criterion.dice_weight, criterion.ignore_index) == (0.5, 2.0, 7)
    assert criterion.class_weights.tolist() == [1.0, 2.0, 3.0]


@row("SemanticSegmentor", 'loss_fn="dice" / <nn.Module>', "a registry loss, or the module, instead of loss_type")
def _(ctx):
    from torch import nn

    assert ctx.segmentor(loss_fn="dice").criterion.loss_type == "dice"
    assert ctx.segmentor(loss_fn="focal_pixelwise").criterion.loss_type == "focal"
    mine = nn.CrossEntropyLoss(ignore_index=255)
    model = ctx.segmentor(loss_fn=mine)
    assert model.criterion is mine and "loss_fn" not in model.hparams
    _one_line_error(lambda: ctx.segmentor(loss_fn="tversky"), "loss_fn='tversky'", "nn.Module")


@row("SemanticSegmentor", "head_type='deeplabv3plus' / 'fcn'", "the segmentation head")
def _(ctx):
    from hubtrain.tasks.heads.segmentation import DeepLabV3PlusHead, FCNHead

    assert isinstance(ctx.segmentor().head, DeepLabV3PlusHead) and isinstance(ctx.segmentor(head_type="fcn").head, FCNHead)


@row("SemanticSegmentor", "metrics=None", "no metrics", "mIoU and pixel accuracy", DIFFERS)
def _(ctx):
    assert set(ctx.segmentor().metrics.metrics("val")) == {"val/mIoU", "val/pixel_accuracy"}


@row("SemanticSegmentor", "logging_config / transform_config", "task-side logging; model.preprocess()",
     "one-line ValueError naming the replacement", ERROR)
def _(ctx):
    _one_line_error(lambda: ctx.segmentor(logging_config=object()), "SemanticSegmentor(logging_config", "AutoTimm")
    _one_line_error(lambda: ctx.segmentor(transform_config=object()), "SemanticSegmentor(transform_config", "AutoTimm")


@row("SemanticSegmentor", "configure_optimizers()", '{"optimizer", "lr_scheduler": {"scheduler", "interval", "frequency"}}')
def _(ctx):
    config = _optimizers(ctx.segmentor())
    assert set(config) == {"optimizer", "lr_scheduler"} and {"scheduler", "interval", "frequency"} <= set(config["lr_scheduler"])


@row("SemanticSegmentor", "compile_model=True", "backbone and head compiled", "the same, in place (parameter names kept)")
def _(ctx):
    model = ctx.segmentor(compile_model=True, compile_kwargs={"backend": "eager"})
    assert model.backbone._compiled_call_impl is not None and model.head._compiled_call_impl is not None
    assert set(model.state_dict()) == set(ctx.segmentor().state_dict())


@row("SemanticSegmentor", "seed=0", "same initial weights")
def _(ctx):
    import torch

    before = torch.are_deterministic_algorithms_enabled()
    try:
        first = ctx.segmentor(seed=0).state_dict()
        torch.rand(100)
        second = ctx.segmentor(seed=0).state_dict()
        assert all(torch.equal(first[k], second[k]) for k in first)
    finally:
        torch.use_deterministic_algorithms(before)


# ---------------------------------------------------------------------------------------------------------------
# ObjectDetector


def _detection_batch():
    import torch

    torch.manual_seed(0)
    targets = [{"boxes": torch.tensor([[4.0, 4.0, 40.0, 36.0]]), "labels": torch.tensor([1])} for _ in range(2)]
    return torch.randn(2, 3, 64, 64), targets


@row("ObjectDetector", 'hparams["backbone_name"]', "the backbone's name")
def _(ctx):
    assert ctx.detector().hparams["backbone_name"] == "test_resnet"


@row("ObjectDetector", 'detection_arch="yolox"', "YOLOX head", "one-line ValueError: hubtrain implements FCOS", ERROR)
def _(ctx):
    _one_line_error(lambda: ctx.detector(detection_arch="yolox"), "'yolox'", "AutoTimm", "fcos")


@row("ObjectDetector", "cls_loss_fn / reg_loss_fn", "custom classification / box losses",
     "one-line ValueError: tune the FCOS losses' weights and focal parameters", ERROR)
def _(ctx):
    _one_line_error(lambda: ctx.detector(cls_loss_fn="focal"), "cls_loss_fn='focal'", "AutoTimm", "cls_loss_weight")
    _one_line_error(lambda: ctx.detector(reg_loss_fn="giou"), "reg_loss_fn='giou'", "AutoTimm", "reg_loss_weight")


@row("ObjectDetector", "cls_loss_weight, reg_loss_weight, centerness_loss_weight", "weights of the FCOS losses in the total")
def _(ctx):
    import torch

    batch = _detection_batch()
    losses = {}
    for name, weights in {"plain": (1.0, 1.0, 1.0), "weighted": (2.0, 0.0, 0.0), "cls": (1.0, 0.0, 0.0)}.items():
        torch.manual_seed(0)
        model = ctx.detector(cls_loss_weight=weights[0], reg_loss_weight=weights[1], centerness_loss_weight=weights[2])
        with pytest.warns(UserWarning, match="self.log"):
            losses[name] = model._step(batch, "train").item()
    assert losses["weighted"] == pytest.approx(2 * losses["cls"]) and losses["plain"] > losses["cls"]


@row("ObjectDetector", "max_detections_per_image, regress_ranges", "decoding limit; FCOS regression ranges",
     "the same (hubtrain also calls them max_detections, regression_ranges)")
def _(ctx):
    ranges = [(-1, 32), (32, 64), (64, 128), (128, 256), (256, 1e8)]
    model = ctx.detector(max_detections_per_image=5, score_thresh=0.0, regress_ranges=ranges)
    assert model.regression_ranges == [tuple(float(v) for v in r) for r in ranges]
    assert all(len(d["boxes"]) == 5 for d in model.predict(_detection_batch()[0]))


@row("ObjectDetector", "strides=(8, 16, 32, 64, 128)", "FPN strides P3-P7", "checked against the backbone's: equal "
     "works, others are a one-line ValueError")
def _(ctx):
    assert ctx.detector(strides=(8, 16, 32, 64, 128)).fpn.strides == [8, 16, 32, 64, 128]
    _one_line_error(lambda: ctx.detector(strides=(4, 8, 16, 32, 64)), "strides=(4, 8, 16, 32, 64)", "backbone")


@row("ObjectDetector", "nms_thresh=0.5, lr=1e-4 (defaults)", "NMS IoU 0.5; lr 1e-4")
def _(ctx):
    model = ctx.detector()
    assert model.nms_thresh == 0.5 and model.lr == 1e-4


@row("ObjectDetector", "metrics=None", "COCO mAP (MeanAveragePrecision)")
def _(ctx):
    assert set(ctx.detector().detection_metrics) == {"val_map", "test_map"}


@row("ObjectDetector", "configure_optimizers()", '{"optimizer", "lr_scheduler": {"scheduler", "interval", "frequency"}}')
def _(ctx):
    config = _optimizers(ctx.detector())
    assert set(config) == {"optimizer", "lr_scheduler"} and config["lr_scheduler"]["interval"] == "step"


@row("ObjectDetector", "compile_model=True", "backbone, FPN and head compiled", "the same, in place")
def _(ctx):
    model = ctx.detector(compile_model=True, compile_kwargs={"backend": "eager"})
    assert all(m._compiled_call_impl is not None for m in (model.backbone, model.fpn, model.head))


# ---------------------------------------------------------------------------------------------------------------
# ImageDataModule


def _csv_dataset(ctx: Ctx) -> tuple[Path, Path]:
    root = ctx.image_folder(("cat", "dog"), {"train": 4, "val": 2}, size=16)
    images = ctx.tmp / "csv"
    images.mkdir()
    for split in ("train", "val"):
        lines = ["path,species"] + [f"{p.relative_to(root)},{p.parent.name}" for p in sorted((root / split).rglob("*.png"))]
        (images / f"{split}.csv").write_text("\n".join(lines) + "\n")
    return root, images


@row("ImageDataModule", "data_dir (folder mode)", "train/ val/ test/ class folders")
def _(ctx):
    from hubtrain import ImageDataModule

    root = ctx.image_folder(("cat", "dog", "fox"), {"train": 4, "val": 2, "test": 2}, size=16)
    data = ImageDataModule(data_dir=root, image_size=16, batch_size=2)
    data.setup()
    assert data.class_names == ["cat", "dog", "fox"] and data.num_classes == 3 and len(data.test_dataset) == 6


@row("ImageDataModule", "train_csv, val_csv, image_dir, image_column=None, label_column=None",
     "CSV mode; paths under image_dir; first column images, next column labels",
     "the same, except that columns named 'image' / 'label' are taken first")
def _(ctx):
    from hubtrain import ImageDataModule

    root, csvs = _csv_dataset(ctx)
    data = ImageDataModule(train_csv=csvs / "train.csv", val_csv=csvs / "val.csv", image_dir=root, image_size=16)
    data.setup()
    assert data.class_names == ["cat", "dog"] and len(data.train_dataset) == 8 and len(data.val_dataset) == 4


@row("ImageDataModule", "image_size, batch_size, val_split", "square resize; loader batch size; held-out fraction")
def _(ctx):
    data = ctx.digits(image_size=24, batch_size=5, val_split=0.2)
    images, _ = next(iter(data.train_dataloader()))
    assert images.shape == (5, 3, 24, 24)
    root = ctx.image_folder(("a", "b"), {"train": 10}, size=16)
    from hubtrain import ImageDataModule

    folder = ImageDataModule(data_dir=root, image_size=16, val_split=0.2)
    folder.setup()
    assert (len(folder.train_dataset), len(folder.val_dataset)) == (16, 4)


@row("ImageDataModule", "num_workers, pin_memory (defaults)", "min(cpu_count, 4) workers; pinned memory",
     "0 workers, no pinning (set them for GPU training)", DIFFERS)
def _(ctx):
    loader = ctx.digits().train_dataloader()
    assert loader.num_workers == 0 and loader.pin_memory is False


@row("ImageDataModule", "persistent_workers, prefetch_factor", "passed to the loaders (with workers)")
def _(ctx):
    loader = ctx.digits(num_workers=1, persistent_workers=True, prefetch_factor=3).train_dataloader()
    assert loader.persistent_workers is True and loader.prefetch_factor == 3


@row("ImageDataModule", "train_transforms, eval_transforms", "replace the default transforms")
def _(ctx):
    import torch

    data = ctx.digits(train_transforms=lambda image: torch.zeros(3, 8, 8), eval_transforms=lambda image: torch.ones(3, 8, 8))
    data.setup()
    assert data.train_dataset[0][0].sum() == 0 and data.val_dataset[0][0].mean() == 1


@row("ImageDataModule", 'augmentation_preset="randaugment" / "autoaugment"', "torchvision's RandAugment / AutoAugment",
     "timm's RandAugment ('rand-m9-mstd0.5') / AutoAugment ('original') of the same policies", DIFFERS)
def _(ctx):
    from timm.data.auto_augment import AutoAugment, RandAugment

    def ops(data):
        return [type(t) for t in data.train_transform.transforms]

    assert RandAugment in ops(ctx.digits(augmentation_preset="randaugment"))
    assert AutoAugment in ops(ctx.digits(augmentation_preset="autoaugment"))


@row("ImageDataModule", 'augmentation_preset="trivialaugment" / albumentations presets', "torchvision's TrivialAugment",
     "one-line ValueError: pass train_transform_kwargs or train_transforms", ERROR)
def _(ctx):
    _one_line_error(lambda: ctx.digits(augmentation_preset="trivialaugment"), "trivialaugment", "AutoTimm", "train_transforms")


@row("ImageDataModule", 'transform_backend="albumentations"', "OpenCV + albumentations pipelines",
     "one-line ValueError: hubtrain uses timm's torchvision transforms", ERROR)
def _(ctx):
    _one_line_error(lambda: ctx.digits(transform_backend="albumentations"), "albumentations", "AutoTimm", "'torchvision'")


@row("ImageDataModule", "backbone=<name or module>", "normalise with the backbone's mean / std")
def _(ctx):
    from timm.data import IMAGENET_DEFAULT_MEAN

    from hubtrain import create_backbone

    name = ctx.publish("hf_auto")  # a ViT whose image processor normalises with its own mean
    mean = create_backbone(name, pretrained=False).data_config["mean"]
    assert list(mean) != pytest.approx(list(IMAGENET_DEFAULT_MEAN))
    assert list(ctx.digits(backbone=name).transform_config["mean"]) == pytest.approx(list(mean))


@row("ImageDataModule", "transform_config=TransformConfig(...)", "AutoTimm's transform settings object",
     "a timm data config dict, a backbone or a task (hubtrain has no TransformConfig)", DIFFERS)
def _(ctx):
    data = ctx.digits(transform_config={"mean": (0.1, 0.2, 0.3), "std": (0.5, 0.5, 0.5)})
    assert data.transform_config["mean"] == (0.1, 0.2, 0.3)


@row("ImageDataModule", "balanced_sampling=True", "WeightedRandomSampler, weights 1 / class count")
def _(ctx):
    from torch.utils.data import WeightedRandomSampler

    from hubtrain import ImageDataModule

    root = ctx.image_folder(("rare", "common"), {"train": 2}, size=16)
    for extra in range(6):  # 2 rare, 8 common
        shutil.copyfile(root / "train" / "common" / "common_000.png", root / "train" / "common" / f"extra_{extra}.png")
    data = ImageDataModule(data_dir=root, image_size=16, val_split=0.0001, balanced_sampling=True)
    data.setup()
    sampler = data.train_dataloader().sampler
    labels = [data.train_dataset.dataset.samples[i][1] for i in data.train_dataset.indices]
    assert isinstance(sampler, WeightedRandomSampler) and sampler.replacement and len(set(labels)) == 2
    weights = dict(zip(labels, sampler.weights.tolist()))
    assert weights[0] * labels.count(0) == pytest.approx(weights[1] * labels.count(1))  # each class drawn alike


@row("ImageDataModule", "test_dataloader() without a test split", "RuntimeError", "one-line ValueError", DIFFERS)
def _(ctx):
    from hubtrain import ImageDataModule

    data = ImageDataModule(data_dir=ctx.image_folder(("a", "b"), {"train": 4}, size=16), image_size=16)
    _one_line_error(data.test_dataloader, "no test split")


@row("ImageDataModule", 'data_dir (default "./data")', "folder mode in ./data",
     "no default: a one-line ValueError asks for a source", DIFFERS)
def _(ctx):
    from hubtrain import ImageDataModule

    _one_line_error(ImageDataModule, "give a source", "AutoTimm's default './data'")


# ---------------------------------------------------------------------------------------------------------------
# BackboneConfig


@row("BackboneConfig", "fields and their order", "model_name='resnet50', pretrained=True, num_classes=0, drop_rate=0, "
     "drop_path_rate=0, extra_kwargs={}", "the same (+ source, informational)")
def _(ctx):
    from hubtrain import BackboneConfig

    config = BackboneConfig("test_resnet", False, 0, 0.1, 0.05, {"in_chans": 1})
    assert (config.pretrained, config.num_classes, config.drop_rate, config.drop_path_rate) == (False, 0, 0.1, 0.05)
    assert BackboneConfig().model_name == "resnet50" and BackboneConfig().pretrained is True


@row("BackboneConfig", "drop_rate, drop_path_rate, extra_kwargs", "passed to timm.create_model")
def _(ctx):
    from hubtrain import BackboneConfig, create_backbone

    backbone = create_backbone(BackboneConfig("test_resnet", pretrained=False, drop_rate=0.2, drop_path_rate=0.1,
                                              extra_kwargs={"in_chans": 1}))
    assert backbone.model.drop_rate == 0.2 and backbone.model.conv1[0].in_channels == 1
    assert any(type(m).__name__ == "DropPath" and m.drop_prob > 0 for m in backbone.model.modules())


@row("BackboneConfig", "num_classes=10 in create_backbone", "a timm model with a classifier",
     "one-line ValueError: hubtrain backbones are headless, a task adds the head", ERROR)
def _(ctx):
    from hubtrain import BackboneConfig, create_backbone

    _one_line_error(lambda: create_backbone(BackboneConfig("test_resnet", pretrained=False, num_classes=10)),
                    "num_classes=10", "AutoTimm", "headless")


# ---------------------------------------------------------------------------------------------------------------
# the tests


@pytest.mark.parametrize("entry", ROWS, ids=[r.id for r in ROWS])
def test_autotimm_api(entry: Row, ctx: Ctx) -> None:
    entry.check(ctx)


def test_markdown_table_is_current() -> None:
    """docs/autotimm_api.md is the rendered table, and every row in it has a check above."""
    text = DOC.read_text(encoding="utf-8")
    table = [line for line in text.splitlines() if line.startswith("| ") and not line.startswith("| Class ")]
    documented = [tuple(cell.strip().strip("`").replace("\\|", "|") for cell in re.split(r"(?<!\\)\|", line)[1:3])
                  for line in table]
    checked = [(r.cls, r.argument) for r in ROWS]
    assert [d for d in documented if d not in checked] == [], "rows in docs/autotimm_api.md without a test"
    assert text == render(), "docs/autotimm_api.md is stale: run python tests/compat/test_autotimm_api.py"


def test_rows_are_unique_and_cover_the_ten_classes() -> None:
    ids = [r.id for r in ROWS]
    assert len(ids) == len(set(ids))
    classes = {"ImageClassifier", "SemanticSegmentor", "ObjectDetector", "AutoTrainer", "TunerConfig", "LoggerConfig",
               "LoggerManager", "MetricConfig", "ImageDataModule", "BackboneConfig"}
    assert {r.cls for r in ROWS} == classes


if __name__ == "__main__":
    DOC.write_text(render(), encoding="utf-8")
    print(f"wrote {DOC} ({len(ROWS)} rows)", file=sys.stderr)
