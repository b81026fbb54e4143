"""Callbacks AutoTrainer adds: a checkpoint that follows the task's monitored metric, and a training-curves plot.

The checkpoint side also fixes a quiet trap in Lightning's file-name template: with metric names such as
``val/accuracy`` the inserted ``name=value`` part carries a ``/``, which makes a sub-folder out of the file name
(``best-epoch=03-val/accuracy=0.95.ckpt``). ``slash_safe_filename`` rewrites the template so the name part reads
``val_accuracy=0.9500`` while the value is still looked up under the real key, so file names carry real values.
"""
from __future__ import annotations

import math
import re
from collections import defaultdict
from pathlib import Path
from typing import Any, Sequence

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback, ModelCheckpoint
from pytorch_lightning.utilities import rank_zero_warn


_GROUP_RE = re.compile(r"(\{.*?)[:\}]")  # the same key pattern Lightning's ModelCheckpoint uses


def slash_safe_filename(filename: str | None, auto_insert_metric_name: bool = True) -> str | None:
    """Return an equivalent checkpoint ``filename`` template whose literal text has no ``/``.

    Use it with ``auto_insert_metric_name=False``: the ``name=`` parts Lightning would insert are spelt out here
    (``val/accuracy`` -> ``val_accuracy=``) while ``{val/accuracy:.4f}`` still formats the logged value.
    """
    if not filename:
        return filename
    out = filename
    if auto_insert_metric_name:
        keys = sorted({g[1:] for g in _GROUP_RE.findall(filename)}, key=len, reverse=True)
        for key in keys:
            # Only the first occurrence of each key gets a name= prefix, exactly as Lightning's str.replace would
            # for a key that appears once.
            out = re.sub(r"\{" + re.escape(key) + r"(?=[:\}])", key.replace("/", "_") + "=" + "\x00" + key, out)
        out = out.replace("\x00", "{")
    # slashes outside braces would create folders; inside braces they are part of the metric key
    parts = re.split(r"(\{[^}]*\})", out)
    return "".join(p if p.startswith("{") else p.replace("/", "_") for p in parts)


def template_keys(filename: str | None) -> list[str]:
    return [g[1:] for g in _GROUP_RE.findall(filename or "")]


def make_slash_safe(callback: ModelCheckpoint) -> None:
    """Rewrite a ``ModelCheckpoint``'s filename template in place (see ``slash_safe_filename``)."""
    if callback.filename and ("/" in callback.filename):
        callback.filename = slash_safe_filename(callback.filename, callback.auto_insert_metric_name)
        callback.auto_insert_metric_name = False


class AutoModelCheckpoint(ModelCheckpoint):
    """A ``ModelCheckpoint`` that picks its monitor at the first save from an ordered list of candidates.

    The trainer only meets the model at ``fit`` time and cannot know which metrics it will log: a task says
    ``monitor = ("val/accuracy", "max")``, but without validation data that key never appears; a plain user
    LightningModule may log ``val/loss``, ``val_loss`` or nothing. The first candidate found in the logged metrics
    wins; with none, the latest epoch is kept (and, when the candidates came from the task, a warning says so).
    """

    def __init__(
        self,
        candidates: Sequence[tuple[str, str]],
        strict: bool = False,
        warn_if_missing: bool = True,
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("save_top_k", 1)
        kwargs.setdefault("save_last", True)
        super().__init__(monitor=None, **kwargs)
        self.candidates = [(str(name), str(mode)) for name, mode in candidates]
        self.strict = strict
        self.warn_if_missing = warn_if_missing
        self._resolved = False
        for _, mode in self.candidates:
            if mode not in ("min", "max"):
                raise ValueError(f"checkpoint mode={mode!r} is invalid; use 'min' or 'max'")

    @property
    def state_key(self) -> str:
        # Stable across the lazy resolution, so resuming restores best_model_score into the same callback.
        return self._generate_state_key(
            monitor="auto:" + "|".join(n for n, _ in self.candidates),
            every_n_train_steps=self._every_n_train_steps,
            every_n_epochs=self._every_n_epochs,
            train_time_interval=self._train_time_interval,
        )

    def _resolve(self, trainer: pl.Trainer) -> None:
        from pytorch_lightning.trainer.states import TrainerFn

        if self._resolved or trainer.sanity_checking or trainer.state.fn != TrainerFn.FITTING:
            return
        logged = trainer.callback_metrics
        for name, mode in self.candidates:
            if name in logged:
                self.monitor, self.mode = name, mode
                if not self.best_k_models:  # a restored top-k keeps its threshold
                    self.kth_value = torch.tensor(math.inf if mode == "min" else -math.inf)
                self.filename = slash_safe_filename(f"best-{{epoch:02d}}-{{{name}:.4f}}")
                self.auto_insert_metric_name = False
                break
        else:
            if self.strict:
                names = [n for n, _ in self.candidates]
                raise ValueError(
                    f"checkpoint_monitor={names[0]!r} was never logged; logged metrics are {sorted(logged)}. "
                    "Pass one of those as checkpoint_monitor, or log it with self.log()"
                )
            if self.candidates and self.warn_if_missing:
                rank_zero_warn(
                    f"AutoTrainer: the monitored metric {self.candidates[0][0]!r} was not logged (no validation data?);"
                    " checkpointing the latest epoch instead"
                )
            self.filename = "epoch={epoch:02d}-step={step}"
            self.auto_insert_metric_name = False
        self._resolved = True

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._should_save_on_train_epoch_end(trainer):
            self._resolve(trainer)
        super().on_train_epoch_end(trainer, pl_module)
        self._keep_last_current(trainer, at_train_epoch_end=True)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self._should_save_on_train_epoch_end(trainer):
            self._resolve(trainer)
        super().on_validation_end(trainer, pl_module)
        self._keep_last_current(trainer, at_train_epoch_end=False)

    def _keep_last_current(self, trainer: pl.Trainer, at_train_epoch_end: bool) -> None:
        # Lightning 2.6 writes last.ckpt only at a step where a top-k checkpoint was written too, so with save_top_k=1
        # it stops at the best epoch and "resume from last" silently replays every epoch after it. last.ckpt is the
        # latest state (as before 2.6, and as resuming needs): where this hook saves, and nothing was saved at this
        # step (Lightning's own skip test, which also covers sanity checks and fast_dev_run), write it.
        if (self.save_last is True and self._should_save_on_train_epoch_end(trainer) == at_train_epoch_end
                and not self._should_skip_saving_checkpoint(trainer)):
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))


class TrainingCurvesCallback(Callback):
    """Plot every logged scalar per epoch, train against val, into ``training_curves.png`` in the run directory.

    Values are read from ``trainer.callback_metrics`` (epoch aggregates) after each validation run and after each
    training epoch, so the plot needs no particular logger.
    """

    def __init__(self, filename: str = "training_curves.png", dirpath: str | Path | None = None) -> None:
        self.filename = filename
        self.dirpath = Path(dirpath) if dirpath is not None else None
        self.history: dict[str, dict[int, float]] = defaultdict(dict)

    def _record(self, trainer: pl.Trainer, prefixes: tuple[str, ...] | None) -> None:
        for key, value in trainer.callback_metrics.items():
            if key.endswith("_step") or not isinstance(value, torch.Tensor) or value.numel() != 1:
                continue
            if prefixes is not None and not key.startswith(prefixes):
                continue
            self.history[key][trainer.current_epoch] = float(value)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.sanity_checking:
            self._record(trainer, ("val",))

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._record(trainer, None)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.is_global_zero and self.history and not trainer.fast_dev_run:
            self.save(self.output_path(trainer))

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        # An interrupted run still leaves its curves so far, but a failure to draw them must not
        # replace the exception the user needs to see.
        try:
            self.on_train_end(trainer, pl_module)
        except OSError as err:
            rank_zero_warn(f"training curves not written after the interruption: {err}")

    def output_path(self, trainer: pl.Trainer) -> Path:
        base = self.dirpath or Path(getattr(trainer, "run_dir", None) or trainer.log_dir or trainer.default_root_dir)
        return base / self.filename

    def panels(self) -> dict[str, dict[str, dict[int, float]]]:
        """``{metric: {"train"|"val"|"": {epoch: value}}}`` with ``train/``, ``val_`` and ``_epoch`` spellings merged."""
        from hubtrain.artifacts import split_metric

        panels: dict[str, dict[str, dict[int, float]]] = defaultdict(dict)
        for key, series in sorted(self.history.items(), key=lambda kv: kv[0].endswith("_epoch"), reverse=True):
            stage, base = split_metric(key)
            # "train/loss_epoch" and a plain "train/loss" describe the same curve; keep the epoch aggregate
            panels[base].setdefault(stage, series)
        return dict(panels)

    def save(self, path: Path) -> Path:
        from hubtrain.artifacts import plot_curves

        plot_curves(self.panels(), path, x_label="epoch")
        return path


class RandomStateCheckpoint(Callback):
    """Saves Python's, NumPy's and torch's random states in every checkpoint and restores them on resume.

    With data loaders whose batches depend only on (seed, epoch, position) (``hubtrain.data.loading``), the global
    random state is then all that dropout and other in-model randomness read, and a resumed run continues exactly
    where the interrupted one stopped.
    """

    def state_dict(self) -> dict[str, Any]:
        import random

        import numpy as np

        name, keys, pos, has_gauss, gauss = np.random.get_state()
        # plain tensors and numbers only: checkpoints stay loadable with torch.load(weights_only=True)
        numpy_state = {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                       "has_gauss": int(has_gauss), "gauss": float(gauss)}
        state = {"python": random.getstate(), "numpy": numpy_state, "torch": torch.get_rng_state()}
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            state["cuda"] = torch.cuda.get_rng_state_all()
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        import random

        import numpy as np

        random.setstate(_as_python_state(state_dict["python"]))
        n = state_dict["numpy"]
        np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
        torch.set_rng_state(state_dict["torch"])
        if "cuda" in state_dict and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state_dict["cuda"])


def _as_python_state(state: Any) -> tuple:
    """``random.setstate`` wants tuples; a checkpoint read with ``weights_only=True`` may hand back lists."""
    version, internal, gauss = state
    return (version, tuple(internal), gauss)
