"""``BaseTask``: what every hubtrain task shares (optimiser, schedule, monitored metric, Hub-ready save/load).

A subclass builds its model (``self.backbone``, a head, ``self.metrics``), then calls
``self.save_hyperparameters()``. The hyperparameters are made JSON-friendly on the spot: a backbone becomes its
``backbone_spec`` (the bare architecture, ``pretrained=False``), ``MetricConfig`` objects become dicts. That is
what lets ``load_from_checkpoint`` and ``from_pretrained`` rebuild the task offline, without pickled code.
"""
from __future__ import annotations

import dataclasses
import importlib
import inspect
import json
import math
import os
from pathlib import Path
from typing import Any, ClassVar

import pytorch_lightning as pl
import torch
from torch import nn

from ..metrics import MetricManager

# AutoTimm's optimiser names: torch's five, then timm's (all resolved on demand).
OPTIMIZERS = {
    "adamw": "torch.optim.AdamW", "adam": "torch.optim.Adam", "sgd": "torch.optim.SGD",
    "rmsprop": "torch.optim.RMSprop", "adagrad": "torch.optim.Adagrad",
    "adamp": "timm.optim.AdamP", "sgdp": "timm.optim.SGDP", "adabelief": "timm.optim.AdaBelief",
    "radam": "timm.optim.RAdam", "adahessian": "timm.optim.Adahessian", "lamb": "timm.optim.Lamb",
    "lars": "timm.optim.Lars", "madgrad": "timm.optim.MADGRAD", "novograd": "timm.optim.NvNovoGrad",
}
SCHEDULERS = ("cosine", "step", "multistep", "exponential", "onecycle", "plateau", "cosine_with_restarts")
# Hyperparameters a task records for its readers (as AutoTimm's tasks do) that are not constructor arguments.
RECORDED_HPARAMS = ("backbone_name",)
# AutoTimm task arguments hubtrain has no counterpart for: accepted only at their "off" value (None).
AUTOTIMM_ONLY = {
    "logging_config": "AutoTimm's LoggingConfig logs lr / norms / confusion matrices from the task; hubtrain has no "
                      "LoggingConfig: pass Lightning's LearningRateMonitor callback to the trainer instead",
    "transform_config": "AutoTimm's TransformConfig adds model.preprocess(); hubtrain keeps preprocessing in the "
                        "data module: use ImageDataModule.from_backbone(model) (or transform_config=model there)",
    "cls_loss_fn": "AutoTimm swaps the detector's classification loss; hubtrain's FCOS uses its focal loss: set "
                   "focal_alpha / focal_gamma / cls_loss_weight instead",
    "reg_loss_fn": "AutoTimm swaps the detector's box loss; hubtrain's FCOS uses GIoU: set reg_loss_weight instead",
}


def reject_autotimm_only(task: str, **values: Any) -> None:
    """One-line ``ValueError`` for an AutoTimm-only argument given anything but ``None`` (see ``AUTOTIMM_ONLY``)."""
    for name, value in values.items():
        if value is not None:
            raise ValueError(f"{task}({name}={value!r}): {AUTOTIMM_ONLY[name]}.")


def apply_seed(seed: int | None, deterministic: bool) -> None:
    """AutoTimm's task ``seed``: seed Python, NumPy and torch before the model is built; ``deterministic`` then also
    asks torch for deterministic kernels (warning, not failing, where an op has none)."""
    if seed is None:
        return
    pl.seed_everything(seed, workers=True, verbose=False)
    if deterministic:
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True
        torch.use_deterministic_algorithms(True, warn_only=True)


def compile_modules(modules: list[nn.Module], compile_kwargs: dict[str, Any] | None) -> None:
    """``torch.compile`` each module in place (``nn.Module.compile``): parameter names, so checkpoints, stay the same."""
    for module in modules:
        module.compile(**(compile_kwargs or {}))


def _import_class(path: str, what: str) -> type:
    module_name, _, attr = path.rpartition(".")
    try:
        return getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError, ValueError):
        raise ValueError(f"{what}={path!r} cannot be imported; give a dotted class path such as 'torch.optim.AdamW'.") from None


def _split_spec(spec: str | dict, what: str) -> tuple[str, dict[str, Any]]:
    """``"adamw"`` / ``"torch.optim.RMSprop"`` / ``{"class": ..., "params": {...}}`` -> (name, kwargs)."""
    if isinstance(spec, dict):
        spec = dict(spec)
        name = spec.pop("class", None) or spec.pop("name", None)
        if not isinstance(name, str):
            raise ValueError(f"{what}={spec!r}: a dict needs a 'class' (or 'name') key, e.g. {{'class': 'sgd', 'params': {{'momentum': 0.9}}}}.")
        return name, {**spec.pop("params", {}), **spec}
    if not isinstance(spec, str):
        raise ValueError(f"{what}={spec!r}: give a name, a dotted class path or a dict with 'class' and 'params'.")
    return spec, {}


def to_jsonable(value: Any) -> Any:
    """Hyperparameters as plain JSON values: dataclasses (``MetricConfig``, ``BackboneConfig``) become dicts."""
    if isinstance(value, MetricManager):
        return to_jsonable(value.configs)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        out = {}
        for f in dataclasses.fields(value):
            if not f.init or f.name.startswith("_"):
                continue
            item = getattr(value, f.name)
            out[f.name] = f"{item.__module__}.{item.__qualname__}" if isinstance(item, type) else to_jsonable(item)
        return out
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, torch.Tensor):
        return value.tolist()
    return value


class BaseTask(pl.LightningModule):
    """Shared machinery of hubtrain tasks.

    Args:
        lr: peak learning rate (Lightning's LR finder reads and writes ``self.lr``).
        weight_decay: decoupled weight decay; never applied to biases and normalisation weights.
        optimizer: a name of ``OPTIMIZERS`` (AutoTimm's: ``"adamw"``, ``"adam"``, ``"sgd"``, ``"rmsprop"``,
            ``"adagrad"`` and timm's ``"lamb"``, ``"adamp"``...), a dotted class path, or ``{"class": ..., "params": {...}}``.
        optimizer_kwargs: extra optimiser arguments (``{"momentum": 0.9}``; SGD gets none unless asked, as in torch).
        scheduler: ``"cosine"`` (per step, to zero or ``eta_min``), ``"step"`` (per epoch), ``"multistep"`` and
            ``"exponential"`` (per epoch), ``"onecycle"`` (per step, peaking at ``lr``), ``"plateau"`` (on the
            monitored metric), ``"cosine_with_restarts"`` (timm's ``CosineLRScheduler``, per epoch), ``None`` /
            ``"none"``, or ``{"class": ..., "params": ..., "interval": "epoch"}``.
        scheduler_kwargs: the scheduler's own arguments (``{"T_max": 500}``, ``{"step_size": 10, "gamma": 0.1}``,
            ``{"patience": 3}``...), plus ``warmup_steps`` / ``warmup_ratio`` (linear warm-up before cosine),
            ``interval`` and ``frequency`` (how Lightning steps it).

    ``configure_optimizers`` returns Lightning's dict form, as AutoTimm's tasks do: ``{"optimizer": ...}``, plus
    ``"lr_scheduler": {"scheduler": ..., "interval": ..., "frequency": ...}`` when there is a schedule.
    """

    _registry: ClassVar[dict[str, type["BaseTask"]]] = {}
    # What the artefact, hub and export rooms read about a task (class data, timm-style; nothing tests class names):
    pipeline_tag: ClassVar[str | None] = None  # the Hub's task type
    hub_layout: ClassVar[str] = "hubtrain"  # how save_pretrained writes the folder: "hubtrain" or "transformers"
    usage_call: ClassVar[str] = "model(images)"  # the call in the card's usage snippet
    export_tolerance: ClassVar[float | None] = None  # relative ONNX/TorchScript tolerance; None: the exporter's default
    export_check_argmax: ClassVar[bool] = False  # exports must also agree on the argmax of every output row

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        BaseTask._registry[cls.__name__] = cls

    def __init__(
        self,
        lr: float = 1e-3,
        weight_decay: float = 1e-4,
        optimizer: str | dict = "adamw",
        scheduler: str | dict | None = "cosine",
        optimizer_kwargs: dict[str, Any] | None = None,
        scheduler_kwargs: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if not (isinstance(lr, (int, float)) and lr > 0):
            raise ValueError(f"lr={lr!r}: the learning rate must be a positive number.")
        if weight_decay < 0:
            raise ValueError(f"weight_decay={weight_decay!r}: must be >= 0.")
        name, _ = _split_spec(optimizer, "optimizer")
        if name.lower() not in OPTIMIZERS and "." not in name:
            raise ValueError(f"optimizer={optimizer!r}: use one of {sorted(OPTIMIZERS)} or a dotted class path such as 'torch.optim.ASGD'.")
        if scheduler is not None and not isinstance(scheduler, dict) and str(scheduler).lower() not in (*SCHEDULERS, "none"):
            raise ValueError(f"scheduler={scheduler!r}: use one of {list(SCHEDULERS)}, None, or a dict with 'class'.")
        self.lr = float(lr)
        self.weight_decay = float(weight_decay)
        self.optimizer_spec = optimizer
        self.scheduler_spec = None if scheduler in (None, "none", "None") else scheduler
        self.optimizer_kwargs = dict(optimizer_kwargs or {})
        self.scheduler_kwargs = dict(scheduler_kwargs or {})
        self.preprocessing: dict[str, Any] | None = None

    # ------------------------------------------------------------------ hyperparameters

    def save_hyperparameters(self, *args: Any, ignore: Any = None, frame: Any = None, logger: bool = True) -> None:
        """Lightning's ``save_hyperparameters``, then made JSON-friendly and offline-rebuildable (see module doc)."""
        super().save_hyperparameters(*args, ignore=ignore, frame=frame or inspect.currentframe().f_back, logger=logger)
        spec = getattr(getattr(self, "backbone", None), "backbone_spec", None)
        if spec is not None:
            self._hparams["backbone"] = spec
            # AutoTimm's key: the name the backbone came from (timm name, "hf-hub:org/name", "hf:org/name"...).
            self._hparams["backbone_name"] = spec.get("source") or spec["model_name"]
            if "pretrained" in self._hparams:
                self._hparams["pretrained"] = False
        for key in list(self._hparams):
            self._hparams[key] = to_jsonable(self._hparams[key])
        self._hparams_initial = type(self._hparams)(dict(self._hparams))

    @staticmethod
    def init_kwargs(hparams: dict[str, Any]) -> dict[str, Any]:
        """Saved hyperparameters as constructor arguments: without the keys only recorded for readers."""
        return {k: v for k, v in hparams.items() if k not in RECORDED_HPARAMS}

    @property
    def init_args(self) -> dict[str, Any]:
        """Arguments that rebuild this task offline (current ``lr`` included, e.g. after the LR finder)."""
        args = self.init_kwargs(to_jsonable(dict(self.hparams)))
        if "lr" in args:
            args["lr"] = self.lr
        return args

    @property
    def monitor(self) -> tuple[str, str]:
        """The metric checkpoints should follow and its mode; tasks with a better one override this."""
        return ("val/loss", "min")

    # ------------------------------------------------------------------ optimisation

    def _param_groups(self) -> list[dict[str, Any]]:
        """Weight decay on matrices; none on biases, normalisation weights and embedding tables."""
        embeddings = {id(m.weight) for m in self.modules() if isinstance(m, nn.Embedding)}
        decay, no_decay = [], []
        for param in self.parameters():
            if param.requires_grad:
                (no_decay if param.ndim <= 1 or id(param) in embeddings else decay).append(param)
        if not decay and not no_decay:
            raise ValueError(f"{type(self).__name__} has no trainable parameters (is everything frozen?).")
        return [{"params": decay, "weight_decay": self.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]

    def build_optimizer(self) -> torch.optim.Optimizer:
        name, kwargs = _split_spec(self.optimizer_spec, "optimizer")
        kwargs = {**kwargs, **self.optimizer_kwargs}
        cls = _import_class(OPTIMIZERS.get(name.lower(), name), "optimizer")
        return cls(self._param_groups(), lr=self.lr, **kwargs)

    def _total_steps(self) -> int:
        trainer = self._trainer
        steps = trainer.estimated_stepping_batches if trainer is not None else float("inf")
        if not math.isfinite(steps):
            raise ValueError("this scheduler needs the run length: set max_epochs or max_steps on the trainer, or scheduler=None.")
        return max(1, int(steps))

    def build_scheduler(self, optimizer: torch.optim.Optimizer) -> dict[str, Any] | None:
        """Lightning's scheduler dict ``{"scheduler", "interval", "frequency"[, "monitor"]}``, or ``None``."""
        if self.scheduler_spec is None:
            return None
        name, kwargs = _split_spec(self.scheduler_spec, "scheduler")
        kwargs = {**kwargs, **self.scheduler_kwargs}
        out: dict[str, Any] = {"interval": kwargs.pop("interval", None), "frequency": int(kwargs.pop("frequency", 1))}
        warmup = int(kwargs.pop("warmup_steps", 0))
        warmup_ratio = float(kwargs.pop("warmup_ratio", 0.0))
        warmup_start_factor = kwargs.pop("warmup_start_factor", None)
        lname = name.lower()
        sched = torch.optim.lr_scheduler
        per_step = lname in ("cosine", "onecycle")
        if lname == "cosine":
            total = kwargs.pop("T_max", None) or self._total_steps()
            warmup = min(warmup or int(warmup_ratio * total), total - 1)
            if "min_lr_ratio" in kwargs:  # the cosine ends at lr * min_lr_ratio, whatever lr the LR finder chose
                kwargs["eta_min"] = self.lr * float(kwargs.pop("min_lr_ratio"))
            scheduler = sched.CosineAnnealingLR(optimizer, T_max=max(1, total - warmup), **kwargs)
            if warmup:  # linear from lr * warmup_start_factor to lr, then the cosine
                start = warmup_start_factor if warmup_start_factor is not None else 1e-3
                ramp = sched.LinearLR(optimizer, start_factor=start, total_iters=warmup)
                scheduler = sched.SequentialLR(optimizer, [ramp, scheduler], milestones=[warmup])
        elif lname == "onecycle":
            total = kwargs.pop("total_steps", None) or self._total_steps()
            pct = (warmup / total) if warmup else (warmup_ratio or kwargs.pop("pct_start", 0.3))
            kwargs.setdefault("max_lr", self.lr)
            scheduler = sched.OneCycleLR(optimizer, total_steps=total, pct_start=pct, **kwargs)
        elif lname == "step":
            max_epochs = self._trainer.max_epochs if self._trainer is not None else None
            kwargs.setdefault("step_size", max(1, (max_epochs or 30) // 3))
            scheduler = sched.StepLR(optimizer, **kwargs)
        elif lname == "multistep":
            scheduler = sched.MultiStepLR(optimizer, **{"milestones": [30, 60, 90], **kwargs})
        elif lname == "exponential":
            scheduler = sched.ExponentialLR(optimizer, **{"gamma": 0.95, **kwargs})
        elif lname == "plateau":
            metric, mode = self.monitor
            out["monitor"] = kwargs.pop("monitor", metric)
            scheduler = sched.ReduceLROnPlateau(optimizer, mode=kwargs.pop("mode", mode), **kwargs)
        elif lname == "cosine_with_restarts":
            from timm.scheduler import CosineLRScheduler

            max_epochs = self._trainer.max_epochs if self._trainer is not None else None
            kwargs.setdefault("t_initial", max_epochs or 1)
            scheduler = CosineLRScheduler(optimizer, **{"cycle_limit": 1, **kwargs})
            out["interval"] = "epoch"  # timm's schedulers count epochs
        else:
            scheduler = _import_class(name, "scheduler")(optimizer, **kwargs)
        out["interval"] = out["interval"] or ("step" if per_step else "epoch")
        return {"scheduler": scheduler, **out}

    def configure_optimizers(self) -> dict[str, Any]:
        optimizer = self.build_optimizer()
        scheduler = self.build_scheduler(optimizer)
        return {"optimizer": optimizer} if scheduler is None else {"optimizer": optimizer, "lr_scheduler": scheduler}

    def lr_scheduler_step(self, scheduler: Any, metric: Any) -> None:
        """timm's schedulers step with the epoch number; torch's as Lightning steps them."""
        from timm.scheduler.scheduler import Scheduler as TimmScheduler

        if isinstance(scheduler, TimmScheduler):
            scheduler.step(epoch=self.current_epoch + 1)
        elif metric is None:
            scheduler.step()
        else:
            scheduler.step(metric)

    # ------------------------------------------------------------------ checkpoints keep the preprocessing

    def on_fit_start(self) -> None:
        datamodule = getattr(self._trainer, "datamodule", None) if self._trainer is not None else None
        preprocessing = getattr(datamodule, "preprocessing", None)
        if isinstance(preprocessing, dict):
            self.preprocessing = to_jsonable(preprocessing)
            wanted = getattr(getattr(self, "backbone", None), "data_config", None) or {}
            differs = [k for k in ("mean", "std") if k in wanted and list(wanted[k]) != list(preprocessing.get(k, wanted[k]))]
            if differs:
                from pytorch_lightning.utilities import rank_zero_warn

                rank_zero_warn(
                    f"the data module normalises with {differs} different from the backbone's data config "
                    f"({ {k: wanted[k] for k in differs} }); build it with ImageDataModule.from_backbone(model) "
                    "(or transform_config=model) so pretrained weights see the inputs they were trained on."
                )

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["hubtrain_task"] = type(self).__name__  # what hubtrain.load rebuilds a .ckpt as
        if self.preprocessing is not None:
            checkpoint["hubtrain_preprocessing"] = self.preprocessing

    @classmethod
    def checkpoint_args(cls, hparams: dict[str, Any]) -> dict[str, Any]:
        """Checks a task adds to :meth:`from_checkpoint_args` (a checkpoint may only describe its model as data)."""
        return hparams

    @classmethod
    def from_checkpoint_args(cls, hparams: dict[str, Any], *, source: Any = "checkpoint", **overrides: Any) -> "BaseTask":
        """The task a checkpoint's hyper-parameters describe, built only after they are checked as data: every key
        must be an argument of this task, none may turn on remote code or name a class outside the trusted packages
        (:func:`hubtrain.artifacts.check_stored_args`), the task's own :meth:`checkpoint_args` must accept them, and
        nothing is downloaded while it is built."""
        from ..artifacts import check_stored_args
        from ..network import offline

        args = cls.init_kwargs(dict(hparams))
        accepted = set(inspect.signature(cls.__init__).parameters) - {"self"}
        unknown = sorted(set(args) - accepted)
        if unknown:
            raise ValueError(f"{source}: the checkpoint's hyper-parameters {unknown} are not arguments of {cls.__name__}; "
                             "it was not written by this task (hubtrain rebuilds checkpoints from known arguments only)")
        check_stored_args(args, source)
        try:
            args = cls.checkpoint_args(args)
        except ValueError as err:
            raise ValueError(f"{source}: {err}") from None
        with offline(f"{source} is being rebuilt (a checkpoint never makes hubtrain download anything)"):
            return cls(**{**args, **overrides})

    @classmethod
    def load_from_checkpoint(cls, checkpoint_path: str | os.PathLike, map_location: Any = None,
                             hparams_file: str | os.PathLike | None = None, strict: bool | None = None,
                             weights_only: bool | None = None, **kwargs: Any) -> "BaseTask":
        """Lightning's ``load_from_checkpoint``, with the checkpoint read as data: ``torch.load(weights_only=True)``,
        and the task rebuilt by :meth:`from_checkpoint_args` (its hyper-parameters checked first). ``kwargs``
        override stored arguments, as in Lightning."""
        from ..artifacts import _state_dict_of, read_checkpoint
        from . import task_class

        if hparams_file is not None:
            raise ValueError("load_from_checkpoint(hparams_file=...): hubtrain tasks rebuild from the checkpoint's own "
                             "hyper-parameters; pass overrides as keyword arguments instead")
        if weights_only is False:
            raise ValueError("load_from_checkpoint(weights_only=False) would unpickle code from the file; hubtrain "
                             "checkpoints hold only tensors and JSON values, so leave weights_only at its default")
        path = Path(checkpoint_path)
        raw = read_checkpoint(path)
        saved = raw.get("hubtrain_task")
        if saved is not None and not issubclass(task_class(saved), cls):
            raise ValueError(f"{path} holds a {saved}, not a {cls.__name__}; load it with {saved}.load_from_checkpoint")
        hparams = raw.get("hyper_parameters") if isinstance(raw.get("hyper_parameters"), dict) else {}
        model = cls.from_checkpoint_args(hparams, source=path, **kwargs)
        model.on_load_checkpoint(raw)
        model.load_state_dict(_state_dict_of(raw, path), strict=True if strict is None else strict)
        return model.to(map_location) if map_location is not None and not callable(map_location) else model

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.preprocessing = checkpoint.get("hubtrain_preprocessing", self.preprocessing)

    # ------------------------------------------------------------------ Hub-ready folders

    # Lightning's three loops share one step; a task implements ``_step(batch, stage) -> loss`` and logs with
    # ``stage`` as the metric prefix ("train/loss", "val/accuracy", ...).
    def _step(self, batch: Any, stage: str) -> torch.Tensor:
        raise NotImplementedError(f"{type(self).__name__} must implement _step(batch, stage)")

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        return self._step(batch, "train")

    def validation_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        return self._step(batch, "val")

    def test_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        return self._step(batch, "test")

    def train(self, mode: bool = True) -> "BaseTask":
        super().train(mode)
        if getattr(self, "freeze_backbone", False):
            self.backbone.eval()  # a frozen backbone keeps its BatchNorm statistics too
        return self

    def on_train_epoch_start(self) -> None:
        # Lightning restores each submodule's mode itself, bypassing train(); pin the frozen backbone here too.
        if getattr(self, "freeze_backbone", False):
            self.backbone.eval()

    def hub_config(self) -> dict[str, Any]:
        """Everything besides the weights that a reader needs; subclasses add labels, preprocessing, ..."""
        from .. import __version__

        config: dict[str, Any] = {
            "hubtrain_task": type(self).__name__,
            "hubtrain_version": __version__,
            "init_args": self.init_args,
        }
        spec = getattr(getattr(self, "backbone", None), "backbone_spec", None)
        if spec is not None:
            config["backbone"] = spec
        class_names = getattr(self, "class_names", None)
        if class_names:
            config.update(
                num_classes=len(class_names),
                class_names=list(class_names),
                id2label={str(i): name for i, name in enumerate(class_names)},
                label2id={name: i for i, name in enumerate(class_names)},
            )
        preprocessing = self.preprocessing or getattr(getattr(self, "backbone", None), "data_config", None)
        if preprocessing is not None:
            config["preprocessing"] = to_jsonable(preprocessing)
        return config

    # ------------------------------------------------------------------ predictions for people (predict, serve)

    def eval_transform(self) -> Any:
        """PIL image -> normalised tensor, as the model was evaluated: timm's eval transform for the saved
        preprocessing (resize, centre crop, normalise). Dense tasks resize without cropping."""
        from ..data.transforms import build_transform, resolve_transform_config

        return build_transform(resolve_transform_config(self), train=False)

    def predict_images(self, images: list[Any], *, top_k: int = 5) -> list[dict[str, Any]]:
        """One JSON-friendly record per PIL image (what ``hubtrain predict`` writes and ``hubtrain serve`` shows)."""
        raise NotImplementedError(f"{type(self).__name__} does not predict on images")

    def library_format(self) -> Any:
        """This task in the own format of the library its model came from (a ``backbones.LibraryClassifier``), so
        that library's loader reads the saved folder without hubtrain; None where no library class fits."""
        return None

    def known_metrics(self) -> dict[str, float]:
        """Validation / test metrics of the attached trainer's last run (empty when there was none)."""
        trainer = self._trainer
        if trainer is None:
            return {}
        out = {}
        for key, value in trainer.callback_metrics.items():
            if key.split("/")[0] in ("val", "test") and torch.as_tensor(value).numel() == 1:
                out[key] = float(value)
        return out

    def model_card(self, repo_id: str | None = None, **card: Any) -> Any:
        """The ``huggingface_hub.ModelCard`` :meth:`save_pretrained` writes (see :func:`hubtrain.artifacts.model_card`)."""
        import tempfile

        from ..artifacts import CARD_NAME, save_task

        with tempfile.TemporaryDirectory(prefix="hubtrain-card-") as tmp:
            folder = save_task(self, Path(tmp) / "model", repo_id=repo_id, **card)
            from huggingface_hub import ModelCard

            return ModelCard((folder / CARD_NAME).read_text(encoding="utf-8"))

    def save_pretrained(self, folder: str | os.PathLike, *, metrics: dict[str, float] | None = None,
                        run_dir: str | os.PathLike | None = None, **card: Any) -> Path:
        """Write the task's Hub-ready folder (weights, config, card; curves when the run is known), atomically.

        ``run_dir`` defaults to the attached trainer's run folder (its ``metrics.csv``); ``metrics`` to the trainer's
        last validation / test values; ``card`` (``datasets``, ``license``, ``tags``, ``description``...) goes to
        :func:`hubtrain.artifacts.model_card`.
        """
        from ..artifacts import save_task

        return save_task(self, folder, metrics=metrics, run_dir=run_dir, **card)

    @classmethod
    def from_pretrained(cls, folder_or_repo_id: str | os.PathLike, *, revision: str | None = None,
                        map_location: str | torch.device = "cpu", **overrides: Any) -> "BaseTask":
        """Rebuild a task from a folder written by ``save_pretrained`` or a Hub repo id (cache first, offline-safe).

        ``overrides`` replace saved init arguments (``lr=1e-4``, ``metrics=[...]``). The model is returned in eval mode.
        """
        from ..artifacts import describe, load, resolve_folder

        folder = resolve_folder(folder_or_repo_id, revision=revision)
        if folder.is_dir():
            info = describe(folder)
            if cls is not BaseTask and info.kind == "task" and not issubclass(_task_class(info.class_name), cls):
                raise ValueError(f"{folder} holds a {info.class_name}, not a {cls.__name__}; load it with "
                                 f"{info.class_name}.from_pretrained.")
        model = load(folder, map_location=str(map_location), **overrides)
        if not isinstance(model, cls):
            raise ValueError(f"{folder} holds a {type(model).__name__}, not a {cls.__name__}; load it with hubtrain.load.")
        return model


def _task_class(name: str) -> type:
    from . import task_class

    return task_class(name)
