"""``AutoTrainer``: a ``pytorch_lightning.Trainer`` that files every run and checkpoints what the task cares about.

What it adds to Lightning, and nothing else:

* a run directory ``<default_root_dir or "runs">/<run_name or model class>/version_k/`` holding ``metrics.csv``,
  ``checkpoints/``, ``training_curves.png`` (and ``lr_finder.png`` when tuning), instead of the current folder;
* a ``ModelCheckpoint`` on the model's own ``monitor`` (``("val/accuracy", "max")`` for a classifier; ``val/loss``
  or the latest epoch for plain LightningModules) unless you pass one, with file names that carry the real values;
* ``logger`` may be Lightning loggers, ``LoggerConfig`` objects or a ``LoggerManager``;
* ``TunerConfig`` runs Lightning's LR finder / batch-size scaler before ``fit``; ``seed`` calls ``seed_everything``
  at the start of ``fit`` and ``test``;
* ``test`` evaluates the best checkpoint of the last ``fit`` by default (``ckpt_path="best"``), as AutoTimm's does.

AutoTimm's arguments mean what they mean there (``tuner_config=False`` / ``True``, ``checkpoint_monitor="auto"`` /
``None``, ``use_autotimm_seeding``, ``json_progress``...), except that ``tuner_config=None`` (the default) tunes
nothing: pass ``tuner_config=True`` for AutoTimm's default tuning.

The trainer knows nothing about tasks beyond the optional ``monitor`` attribute.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Sequence

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback, EarlyStopping, ModelCheckpoint
from pytorch_lightning.loops.fit_loop import _FitLoop
from pytorch_lightning.loops.training_epoch_loop import _TrainingEpochLoop
from pytorch_lightning.loggers import CSVLogger, Logger
from pytorch_lightning.utilities import rank_zero_only, rank_zero_warn

from hubtrain.errors import RunInterrupted
from hubtrain.training.callbacks import (
    AutoModelCheckpoint,
    RandomStateCheckpoint,
    TrainingCurvesCallback,
    make_slash_safe,
    template_keys,
)
from hubtrain.training.loggers import LoggerConfig, LoggerManager
from hubtrain.training.tuner import TunerConfig, run_tuner

_VERSION_RE = re.compile(r"^version_(\d+)$")


def next_version(folder: Path) -> int:
    """The next free ``version_k`` under ``folder``, counted the way Lightning's CSVLogger does."""
    if not folder.is_dir():
        return 0
    versions = [int(m.group(1)) for p in folder.iterdir() if p.is_dir() and (m := _VERSION_RE.match(p.name))]
    return max(versions) + 1 if versions else 0


def _model_monitor(model: pl.LightningModule) -> tuple[str, str] | None:
    monitor = getattr(model, "monitor", None)
    if monitor is None:
        return None
    if isinstance(monitor, str):
        return monitor, "min" if "loss" in monitor else "max"
    name, mode = monitor
    return str(name), str(mode)


class _RunHooks(Callback):
    """Keeps the run directory identical on every rank and warns about checkpoint names that would read 0."""

    def __init__(self) -> None:
        self._warned: set[str] = set()

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        run_dir = getattr(trainer, "_run_dir", None)
        if run_dir is not None and trainer.world_size > 1:
            trainer._run_dir = Path(trainer.strategy.broadcast(str(run_dir)))

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Lightning hands a resumed run's loader states (position in the epoch) to the train loaders when it builds
        # them after reading the checkpoint; a scheduler that asked for estimated_stepping_batches had them built
        # before, and the states would be dropped. Hand them over now, before the first batch is drawn.
        loop = trainer.fit_loop
        if getattr(loop, "_combined_loader_states_to_load", None):
            loop._load_combined_loader_states()

    def _check_filenames(self, trainer: pl.Trainer) -> None:
        if trainer.sanity_checking:
            return
        available = set(trainer.callback_metrics) | {"epoch", "step"}
        for cb in trainer.checkpoint_callbacks:
            if isinstance(cb, AutoModelCheckpoint):
                continue
            for key in template_keys(cb.filename):
                if key not in available and key not in self._warned:
                    self._warned.add(key)
                    rank_zero_warn(
                        f"ModelCheckpoint(filename={cb.filename!r}): {key!r} is not a logged metric, so Lightning "
                        f"writes 0 in its place; logged metrics are {sorted(available)}"
                    )

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._check_filenames(trainer)


LoggerSpec = bool | Logger | LoggerConfig | LoggerManager | Sequence[LoggerConfig | Logger] | None


class AutoTrainer(pl.Trainer):
    """A Lightning ``Trainer`` with run directories, task-aware checkpoints, config-built loggers and tuning.

    Args:
        max_epochs: epochs to train.
        accelerator, devices, precision, accumulate_grad_batches, callbacks, enable_checkpointing, fast_dev_run:
            as in ``pytorch_lightning.Trainer``.
        logger: ``None``/``True`` for a CSV logger in the run directory, ``False`` for none, or Lightning loggers,
            ``LoggerConfig`` objects (a list may mix them) or a ``LoggerManager``. A CSV logger writing
            ``metrics.csv`` into the run directory is always added unless ``logger=False``.
        tuner_config: a ``TunerConfig``; ``True`` for AutoTimm's default (LR finder, plus batch-size scaling when
            CUDA is available); ``None`` (default) or ``False`` for no tuning. ``fast_dev_run`` turns tuning off.
        seed: when given, ``pl.seed_everything(seed, workers=True)`` at the start of ``fit`` and ``test``.
        use_autotimm_seeding: AutoTimm's choice between its own seeding and Lightning's; both seed Python, NumPy
            and torch alike, so hubtrain takes either value and seeds with Lightning's.
        json_progress, json_progress_every_n_steps, json_progress_log_file: AutoTimm's NDJSON progress events for
            its desktop front end; hubtrain has none, so ``json_progress=True`` is a one-line error.
        default_root_dir: root of the run folders (default ``"runs"``).
        run_name: folder name under the root (default: the model class name, lower case).
        checkpoint_monitor: the metric of the automatic checkpoint; ``"auto"`` (default) follows the model's
            ``monitor``, ``None`` keeps only Lightning's own checkpoint of the latest epoch (AutoTimm's meanings).
        checkpoint_mode: ``"min"`` or ``"max"`` for a named ``checkpoint_monitor`` (inferred from its name when
            ``None``); ignored under ``"auto"``, as in AutoTimm.
        plot_curves: write ``training_curves.png`` at the end of ``fit``.
        **trainer_kwargs: anything else ``pytorch_lightning.Trainer`` accepts (``strategy``, ``limit_train_batches``...).
    """

    def __init__(
        self,
        max_epochs: int | None = 10,
        accelerator: str = "auto",
        devices: list[int] | str | int = "auto",
        precision: str | int | None = None,
        accumulate_grad_batches: int = 1,
        callbacks: list[Callback] | Callback | None = None,
        logger: LoggerSpec = None,
        tuner_config: TunerConfig | bool | None = None,
        seed: int | None = None,
        default_root_dir: str | Path | None = None,
        run_name: str | None = None,
        checkpoint_monitor: str | None = "auto",
        checkpoint_mode: str | None = None,
        enable_checkpointing: bool = True,
        fast_dev_run: bool | int = False,
        plot_curves: bool = True,
        use_autotimm_seeding: bool = False,
        json_progress: bool = False,
        json_progress_every_n_steps: int = 10,
        json_progress_log_file: str | None = None,
        **trainer_kwargs: Any,
    ) -> None:
        if checkpoint_mode is not None and checkpoint_mode not in ("min", "max"):
            raise ValueError(f"AutoTrainer: checkpoint_mode={checkpoint_mode!r} is invalid; use 'min' or 'max'")
        if json_progress:
            raise ValueError(
                "AutoTrainer(json_progress=True): AutoTimm prints NDJSON progress events for its front end, hubtrain "
                "has none; use logger=LoggerConfig('csv') (metrics.csv) or a Lightning callback of your own."
            )

        self._logger_manager = self._parse_logger(logger)
        self.tuner_config = None if fast_dev_run else self._parse_tuner(tuner_config)
        self.seed = seed
        self.run_name = run_name
        self.root_dir = Path(default_root_dir) if default_root_dir is not None else Path("runs")
        self.checkpoint_monitor = checkpoint_monitor
        self.checkpoint_mode = checkpoint_mode
        self._run_dir: Path | None = None
        self._tuning = False
        self._fit_prepared = False
        self.tuning_results: dict[str, Any] = {}  # what TunerConfig chose ({"lr": ..., "batch_size": ...})
        self.lr_finder = None  # Lightning's _LRFinder after auto_lr: .results["lr"], .results["loss"]

        user_callbacks = [] if callbacks is None else [callbacks] if isinstance(callbacks, Callback) else list(callbacks)
        self._user_checkpoints = [cb for cb in user_callbacks if isinstance(cb, ModelCheckpoint)]
        self._user_checkpoint_dirs = [cb.dirpath for cb in self._user_checkpoints]
        self._fitted_model: pl.LightningModule | None = None
        self._curves = TrainingCurvesCallback() if plot_curves else None
        own = [_RunHooks(), RandomStateCheckpoint()] + ([self._curves] if self._curves else [])

        super().__init__(
            max_epochs=max_epochs,
            accelerator=accelerator,
            devices=devices,
            precision=precision,
            accumulate_grad_batches=accumulate_grad_batches,
            callbacks=user_callbacks + own,
            default_root_dir=str(self.root_dir),
            logger=False,  # built per run in _prepare_run, once the run directory is known
            enable_checkpointing=enable_checkpointing,
            fast_dev_run=fast_dev_run,
            **trainer_kwargs,
        )
        self._enable_checkpointing = enable_checkpointing
        # Lightning adds its own default ModelCheckpoint when none is passed; ours replaces it at fit time.
        self._lightning_default_checkpoints = [
            cb for cb in self.callbacks if isinstance(cb, ModelCheckpoint) and cb not in self._user_checkpoints
        ]

    # ------------------------------------------------------------------ run directory and loggers
    @staticmethod
    def _parse_tuner(tuner_config: TunerConfig | bool | None) -> TunerConfig | None:
        if tuner_config is None or tuner_config is False:
            return None
        if tuner_config is True:  # AutoTimm's default: batch-size probing only where there is GPU memory to probe
            return TunerConfig(auto_batch_size=torch.cuda.is_available())
        if isinstance(tuner_config, TunerConfig):
            return tuner_config
        raise ValueError(
            f"AutoTrainer: tuner_config={tuner_config!r}; give a TunerConfig, True (AutoTimm's default tuning), "
            "or None / False (no tuning)"
        )

    @staticmethod
    def _parse_logger(logger: LoggerSpec) -> LoggerManager | None:
        if logger is False:
            return None
        if logger is None or logger is True:
            return LoggerManager([])
        if isinstance(logger, LoggerManager):
            return logger
        if isinstance(logger, (Logger, LoggerConfig, dict)):
            return LoggerManager([logger])
        if isinstance(logger, (list, tuple)):
            return LoggerManager(list(logger))
        raise ValueError(
            f"AutoTrainer: logger={logger!r} is not understood; pass False, a Lightning logger, LoggerConfig objects "
            "(or a list mixing them) or a LoggerManager"
        )

    @property
    def run_dir(self) -> Path | None:
        """``<root>/<name>/version_k`` of this trainer's run (``None`` before the first fit/validate/test/predict)."""
        return self._run_dir

    @property
    def default_root_dir(self) -> str:
        # Lightning writes its own scratch files (LR-finder checkpoints, ...) here: keep them inside the run.
        if self._run_dir is not None:
            return str(self._run_dir)
        return super().default_root_dir

    @property
    def log_dir(self) -> str | None:
        if self._run_dir is not None:
            return str(self._run_dir)
        return super().log_dir

    def _prepare_run(self, model: pl.LightningModule | None) -> None:
        if self._run_dir is not None:
            return
        model = model if model is not None else self.lightning_module
        name = self.run_name or (type(model).__name__.lower() if model is not None else "run")
        parent = self.root_dir / name
        self._run_dir = parent / f"version_{next_version(parent)}"
        if self.fast_dev_run:
            return  # Lightning's fast_dev_run writes nothing; neither do we
        if rank_zero_only.rank == 0:
            # Claim the version now so a second trainer in this process counts past it. Other ranks of a
            # subprocess-launched DDP job may count one further; _RunHooks.setup broadcasts rank 0's choice.
            self._run_dir.mkdir(parents=True, exist_ok=True)
        if self._logger_manager is not None:
            loggers = self._logger_manager.build(self._run_dir)
            writes_here = any(
                isinstance(lg, CSVLogger) and Path(lg.log_dir).resolve() == self._run_dir.resolve() for lg in loggers
            )
            if not writes_here:
                loggers.append(CSVLogger(save_dir=str(self._run_dir), name="", version=""))
            self.loggers = loggers

    def _prepare_checkpoints(self, model: pl.LightningModule) -> None:
        if self._fit_prepared:
            return
        self._fit_prepared = True
        ckpt_dir = str(self._run_dir / "checkpoints")
        for cb in self._user_checkpoints:
            make_slash_safe(cb)
            if cb.dirpath is None:
                cb.dirpath = ckpt_dir
        if self._user_checkpoints and (self.checkpoint_monitor not in (None, "auto") or self.checkpoint_mode):
            rank_zero_warn(
                "AutoTrainer: checkpoint_monitor/checkpoint_mode are ignored because you passed your own ModelCheckpoint;"
                " set monitor/mode on it instead"
            )
        if self._user_checkpoints or not self._enable_checkpointing or self.fast_dev_run:
            return  # (Lightning's on_train_end would still write a save_last file under fast_dev_run)
        if self.checkpoint_monitor is None:
            return  # AutoTimm's checkpoint_monitor=None: no monitored checkpoint, Lightning's own (latest epoch) stays
        self.callbacks = [cb for cb in self.callbacks if cb not in self._lightning_default_checkpoints]
        if self.checkpoint_monitor != "auto":
            mode = self.checkpoint_mode or ("min" if "loss" in self.checkpoint_monitor else "max")
            checkpoint = AutoModelCheckpoint([(self.checkpoint_monitor, mode)], strict=True, dirpath=ckpt_dir)
        elif (monitor := _model_monitor(model)) is not None:
            checkpoint = AutoModelCheckpoint([monitor], dirpath=ckpt_dir)
        else:
            # a plain LightningModule: best val loss if it logs one, else the latest epoch
            checkpoint = AutoModelCheckpoint([("val/loss", "min"), ("val_loss", "min")], warn_if_missing=False, dirpath=ckpt_dir)
        self.callbacks.append(checkpoint)  # checkpoints last, as Lightning orders them

    # ------------------------------------------------------------------ entry points
    def fit(
        self,
        model: pl.LightningModule,
        train_dataloaders: Any = None,
        val_dataloaders: Any = None,
        datamodule: pl.LightningDataModule | None = None,
        ckpt_path: str | Path | None = None,
        **kwargs: Any,
    ) -> None:
        if self._tuning:  # Lightning's Tuner calls fit() for its searches
            return super().fit(model, train_dataloaders, val_dataloaders, datamodule, ckpt_path, **kwargs)
        if self._fitted_model is not None and model is not self._fitted_model and ckpt_path is None:
            self._start_new_run()
        self._prepare_run(model)
        self._prepare_checkpoints(model)
        self._seed()
        if self.tuner_config is not None and self.tuner_config.enabled:
            if ckpt_path is not None:
                rank_zero_warn("AutoTrainer: tuner_config is skipped when resuming from ckpt_path (the run is already tuned)")
            else:
                self._tuning = True
                try:
                    self.tuning_results = run_tuner(
                        self, self.tuner_config, model, train_dataloaders, val_dataloaders, datamodule, self._run_dir
                    )
                finally:
                    self._tuning = False
        from pytorch_lightning.utilities.exceptions import SIGTERMException

        try:
            result = super().fit(model, train_dataloaders, val_dataloaders, datamodule, ckpt_path, **kwargs)
        except SIGTERMException:  # a SystemExit without a code: left alone, the process would exit 0
            raise self._interrupted("SIGTERM") from None
        self._fitted_model = model
        return result

    def _interrupted(self, why: str) -> RunInterrupted:
        """Save the state reached (the loop stops between batches, so it is consistent) and say where it is."""
        path = None
        if self.global_step > 0 and self.is_global_zero:
            path = (Path(self.run_dir or self.default_root_dir) / "checkpoints" / "interrupted.ckpt").resolve()
            self.save_checkpoint(path)
        where = f"resume with ckpt_path={str(path)!r}" if path else "no checkpoint was saved (no step finished)"
        return RunInterrupted(f"training interrupted by {why} at step {self.global_step}; {where}",
                              checkpoint=str(path) if path else None)

    def _start_new_run(self) -> None:
        """Fitting another model on the same trainer (the seed's "all three work" example) trains it from epoch 0
        in a run directory of its own. Plain Lightning would find max_epochs reached and return without training."""
        old = self.fit_loop
        self.fit_loop = _FitLoop(self, min_epochs=old.min_epochs, max_epochs=old.max_epochs)
        self.fit_loop.epoch_loop = _TrainingEpochLoop(
            self, min_steps=old.epoch_loop.min_steps, max_steps=old.epoch_loop.max_steps
        )
        self.should_stop = False
        self.callbacks = [cb for cb in self.callbacks if not isinstance(cb, AutoModelCheckpoint)]
        for cb, dirpath in zip(self._user_checkpoints, self._user_checkpoint_dirs):
            # the first model's best scores say nothing about the second's
            cb.dirpath = dirpath
            cb.best_k_models, cb.kth_best_model_path, cb.best_model_path, cb.last_model_path = {}, "", "", ""
            cb.best_model_score = cb.current_score = None
            cb.kth_value = torch.tensor(torch.inf if cb.mode == "min" else -torch.inf)
        for cb in self.callbacks:
            if isinstance(cb, EarlyStopping):
                cb.wait_count, cb.stopped_epoch = 0, 0
                cb.best_score = torch.tensor(torch.inf if cb.monitor_op == torch.lt else -torch.inf)
        if self._curves is not None:
            self._curves.history.clear()
        self._run_dir, self._fit_prepared = None, False

    def validate(self, model: pl.LightningModule | None = None, *args: Any, **kwargs: Any) -> Any:
        self._prepare_run(model)
        return super().validate(model, *args, **kwargs)

    def _seed(self) -> None:
        if self.seed is not None:
            pl.seed_everything(self.seed, workers=True)

    def test(
        self,
        model: pl.LightningModule | None = None,
        dataloaders: Any = None,
        ckpt_path: str | Path | None = "best",
        verbose: bool = True,
        datamodule: pl.LightningDataModule | None = None,
        **kwargs: Any,
    ) -> Any:
        """Lightning's ``test``, on the best checkpoint of the last ``fit`` by default (AutoTimm's ``"best"``); with
        no such checkpoint (no fit, no monitored checkpoint) it tests the weights at hand, as ``ckpt_path=None``."""
        self._prepare_run(model)
        self._seed()
        if ckpt_path == "best" and not any(getattr(cb, "best_model_path", "") for cb in self.checkpoint_callbacks):
            ckpt_path = None
        return super().test(model, dataloaders, ckpt_path, verbose, datamodule, **kwargs)

    def predict(self, model: pl.LightningModule | None = None, *args: Any, **kwargs: Any) -> Any:
        self._prepare_run(model)
        return super().predict(model, *args, **kwargs)
