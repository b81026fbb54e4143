"""``TunerConfig``: Lightning's learning-rate finder and batch-size scaler, run before ``fit`` when asked.

Nothing here is silent: the chosen values are printed and logged as hyperparameters, the LR-finder curve is saved
as ``lr_finder.png`` in the run directory, and whenever a value cannot be found or applied a warning says why and
what is kept instead.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytorch_lightning as pl
from pytorch_lightning.tuner import Tuner
from pytorch_lightning.utilities.parsing import lightning_getattr, lightning_hasattr, lightning_setattr

from hubtrain.utils import atomic_path

if TYPE_CHECKING:
    from pytorch_lightning.tuner.lr_finder import _LRFinder


# AutoTimm's defaults for the two searches, filled in when a TunerConfig is given none.
LR_FIND_DEFAULTS = {"min_lr": 1e-7, "max_lr": 1.0, "num_training": 100, "mode": "exponential", "early_stop_threshold": 4.0}
BATCH_SIZE_DEFAULTS = {"mode": "power", "steps_per_trial": 3, "init_val": 16, "max_trials": 25}


@dataclass
class TunerConfig:
    """What to tune before training, with AutoTimm's defaults: both searches on.

    ``lr_find_kwargs`` go to ``Tuner.lr_find`` (``min_lr``, ``max_lr``, ``num_training``, ``mode``,
    ``early_stop_threshold``, ``attr_name``); ``batch_size_kwargs`` to ``Tuner.scale_batch_size`` (``mode``,
    ``steps_per_trial``, ``init_val``, ``max_trials``, ``batch_arg_name``). Left as ``None`` they become
    ``LR_FIND_DEFAULTS`` / ``BATCH_SIZE_DEFAULTS``; a dict given replaces them whole, as in AutoTimm.
    """

    auto_lr: bool = True
    auto_batch_size: bool = True
    lr_find_kwargs: dict[str, Any] | None = None
    batch_size_kwargs: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        if self.lr_find_kwargs is None:
            self.lr_find_kwargs = dict(LR_FIND_DEFAULTS)
        if self.batch_size_kwargs is None:
            self.batch_size_kwargs = dict(BATCH_SIZE_DEFAULTS)

    @property
    def enabled(self) -> bool:
        return bool(self.auto_lr or self.auto_batch_size)


def _lr_attr(model: pl.LightningModule, attr_name: str) -> str | None:
    if attr_name:
        return attr_name if lightning_hasattr(model, attr_name) else None
    for name in ("lr", "learning_rate"):
        if lightning_hasattr(model, name):
            return name
    return None


def _save_lr_plot(finder: "_LRFinder", path: Path) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 4))
    ax = fig.subplots()
    finder.plot(suggest=True, ax=ax)
    ax.set_title("learning-rate finder")
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)


def _why_no_suggestion(finder: "_LRFinder") -> str:
    losses = finder.results.get("loss", [])
    n = len(losses)
    return (
        f"only {n} loss values were recorded and at least 2 finite ones are needed after skipping the first 10 and "
        "the last; give lr_find more steps (lr_find_kwargs={'num_training': ...}) or more training batches, or lower "
        "early_stop_threshold's sensitivity (None disables it)"
    )


def run_tuner(
    trainer: pl.Trainer,
    config: TunerConfig,
    model: pl.LightningModule,
    train_dataloaders: Any = None,
    val_dataloaders: Any = None,
    datamodule: pl.LightningDataModule | None = None,
    run_dir: Path | None = None,
) -> dict[str, Any]:
    """Run the requested searches, apply what they find, and return ``{"lr": ..., "batch_size": ...}`` (as applied)."""
    tuner = Tuner(trainer)
    chosen: dict[str, Any] = {}

    if config.auto_batch_size:
        kwargs = dict(config.batch_size_kwargs or {})
        arg = kwargs.get("batch_arg_name", "batch_size")
        holder_has_it = (datamodule is not None and hasattr(datamodule, arg)) or lightning_hasattr(model, arg)
        if train_dataloaders is not None and not isinstance(train_dataloaders, pl.LightningDataModule):
            warnings.warn(
                "TunerConfig(auto_batch_size=True) skipped: batch size scaling rebuilds the dataloaders, which is "
                "impossible for dataloaders passed to fit(); pass a datamodule with a `batch_size` attribute instead",
                stacklevel=3,
            )
        elif not holder_has_it:
            warnings.warn(
                f"TunerConfig(auto_batch_size=True) skipped: neither the datamodule nor the model has a `{arg}` "
                "attribute to scale; add one (used by its dataloaders) or set batch_size_kwargs={'batch_arg_name': ...}",
                stacklevel=3,
            )
        else:
            new_size = tuner.scale_batch_size(
                model, train_dataloaders=train_dataloaders, val_dataloaders=val_dataloaders, datamodule=datamodule, **kwargs
            )
            if new_size is None:
                warnings.warn("TunerConfig(auto_batch_size=True): no batch size was found; keeping the original", stacklevel=3)
            else:
                chosen["batch_size"] = int(new_size)

    if config.auto_lr:
        kwargs = dict(config.lr_find_kwargs or {})
        attr_name = kwargs.pop("attr_name", "")
        attr = _lr_attr(model, attr_name)
        finder = tuner.lr_find(
            model,
            train_dataloaders=train_dataloaders,
            val_dataloaders=val_dataloaders,
            datamodule=datamodule,
            update_attr=False,
            **kwargs,
        )
        trainer.lr_finder = finder  # the full curve (finder.results) stays available to the user
        if finder is None:
            warnings.warn(
                "TunerConfig(auto_lr=True): the learning-rate finder did not run (fast_dev_run is on); keeping the "
                "model's learning rate",
                stacklevel=3,
            )
        else:
            if run_dir is not None and trainer.is_global_zero:
                _save_lr_plot(finder, Path(run_dir) / "lr_finder.png")
            suggestion = finder.suggestion()
            if suggestion is None:
                keep = lightning_getattr(model, attr) if attr else "unchanged"
                warnings.warn(
                    f"TunerConfig(auto_lr=True): no learning rate suggested, keeping lr={keep}: {_why_no_suggestion(finder)}",
                    stacklevel=3,
                )
            elif attr is None:
                warnings.warn(
                    f"TunerConfig(auto_lr=True): lr_find suggests lr={suggestion:.3g} but the model has no "
                    f"{attr_name or '`lr` or `learning_rate`'} attribute or hparam to write it to; store the "
                    "learning rate there and read it in configure_optimizers (or set lr_find_kwargs={'attr_name': ...})",
                    stacklevel=3,
                )
                chosen["suggested_lr"] = float(suggestion)
            else:
                chosen["previous_lr"] = float(lightning_getattr(model, attr))
                lightning_setattr(model, attr, float(suggestion))
                chosen["lr"] = float(suggestion)

    if chosen:
        for logger in trainer.loggers:
            logger.log_hyperparams({f"tuner/{k}": v for k, v in chosen.items()})
        if trainer.is_global_zero:
            from rich.console import Console

            parts = []
            if "lr" in chosen:
                parts.append(f"learning rate {chosen['previous_lr']:.3g} -> [bold]{chosen['lr']:.3g}[/] (lr_find)")
            if "batch_size" in chosen:
                parts.append(f"batch size -> [bold]{chosen['batch_size']}[/] (scale_batch_size)")
            if parts:
                Console(stderr=True).print("[cyan]TunerConfig[/]: " + "; ".join(parts))
    return chosen
