"""Metrics as configuration: ``MetricConfig`` says what to measure, ``MetricManager`` holds the torchmetrics objects.

Tasks feed the manager *probabilities* (softmax / sigmoid outputs), never argmax labels, so threshold-free metrics
(AUROC, top-k accuracy, calibration error) see what they need. One metric instance exists per (stage, name): train,
val and test never share state, the instances live in an ``nn.ModuleDict`` so they follow the model across devices,
and Lightning computes, syncs (DDP) and resets them per epoch when tasks pass the metric objects to ``self.log``.
"""
from __future__ import annotations

import difflib
import importlib
import inspect
import re
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch
import torchmetrics
from torch import Tensor, nn

BACKENDS = ("torchmetrics", "custom")
STAGES = ("train", "val", "test")
_NAME_RE = re.compile(r"^[A-Za-z0-9_\-]+$")


def _torchmetrics_names() -> list[str]:
    names = set(torchmetrics.__all__)
    import torchmetrics.classification as classification

    names.update(getattr(classification, "__all__", []))
    return sorted(n for n in names if n[:1].isupper())


def _import_dotted(path: str) -> Any:
    module_name, _, attr = path.rpartition(".")
    if not module_name:
        raise ImportError(f"{path!r} is not a dotted path 'package.module.Class'")
    return getattr(importlib.import_module(module_name), attr)


def resolve_metric_class(metric_class: str | type, backend: str = "torchmetrics", name: str = "?") -> type:
    """Turn a ``metric_class`` spec into a ``torchmetrics.Metric`` subclass, or raise a one-line ``ValueError``."""
    where = f"MetricConfig(name={name!r})"
    if isinstance(metric_class, type):
        cls = metric_class
    elif not isinstance(metric_class, str) or not metric_class:
        raise ValueError(f"{where}: metric_class must be a class name or dotted path, got {metric_class!r}")
    elif backend == "torchmetrics":
        if "." in metric_class:
            try:
                cls = _import_dotted(metric_class)
            except (ImportError, AttributeError) as err:
                raise ValueError(f"{where}: metric_class={metric_class!r} cannot be imported ({err})") from None
        else:
            cls = getattr(torchmetrics, metric_class, None)
            if cls is None:
                import torchmetrics.classification as classification

                cls = getattr(classification, metric_class, None)
            if cls is None:
                close = difflib.get_close_matches(metric_class, _torchmetrics_names(), n=3, cutoff=0.6)
                hint = f"; did you mean {', '.join(map(repr, close))}?" if close else (
                    "; use a torchmetrics class name such as 'Accuracy', 'F1Score' or 'AUROC'"
                )
                raise ValueError(f"{where}: unknown torchmetrics metric_class={metric_class!r}{hint}")
    else:  # custom
        try:
            cls = _import_dotted(metric_class)
        except (ImportError, AttributeError) as err:
            raise ValueError(
                f"{where}: custom metric_class={metric_class!r} cannot be imported ({err}); "
                "give a dotted path 'package.module.MyMetric'"
            ) from None
    if not (isinstance(cls, type) and issubclass(cls, torchmetrics.Metric)):
        raise ValueError(f"{where}: metric_class={metric_class!r} is not a torchmetrics.Metric subclass")
    return cls


def _accepted(cls: type) -> set[str]:
    """The keyword arguments a metric class takes (none known for C-level or exotic constructors)."""
    try:
        return set(inspect.signature(cls).parameters)
    except (TypeError, ValueError):
        return set()


@dataclass
class MetricConfig:
    """One metric, logged as ``"{stage}/{name}"`` in each of ``stages``.

    ``metric_class`` is a torchmetrics class name (``"Accuracy"``), a dotted path
    (``"torchmetrics.classification.MulticlassAUROC"``), or, with ``backend="custom"``, the dotted import path of
    your own ``torchmetrics.Metric`` subclass. ``params`` go to its constructor. ``log_on_step`` /
    ``log_on_epoch`` say when Lightning logs it. Fields, order and defaults are AutoTimm's (which requires
    ``params`` and ``stages``; here they default to ``{}`` and all three stages).
    """

    name: str
    backend: str = "torchmetrics"
    metric_class: str | type | None = None
    params: dict[str, Any] | None = None
    stages: list[str] | None = None
    log_on_step: bool = False
    log_on_epoch: bool = True
    prog_bar: bool = False
    _cls: type = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _NAME_RE.match(self.name):
            raise ValueError(
                f"MetricConfig: name={self.name!r} must be a non-empty string of letters, digits, '_' or '-' "
                "(it becomes the logged key '<stage>/<name>')"
            )
        self.backend = str(self.backend).lower()
        if self.backend not in BACKENDS:
            raise ValueError(f"MetricConfig(name={self.name!r}): unknown backend={self.backend!r}; use one of {BACKENDS}")
        if self.metric_class is None:
            raise ValueError(f"MetricConfig(name={self.name!r}): metric_class is required, e.g. metric_class='Accuracy'")
        if self.stages is None:
            self.stages = list(STAGES)
        if isinstance(self.stages, str):
            self.stages = [self.stages]
        self.stages = [str(stage).lower() for stage in self.stages]
        if not self.stages:
            raise ValueError(f"MetricConfig(name={self.name!r}): stages=[] logs nowhere; use some of {list(STAGES)}")
        for stage in self.stages:
            if stage not in STAGES:
                raise ValueError(f"MetricConfig(name={self.name!r}): unknown stage {stage!r} in stages; use {list(STAGES)}")
        if self.params is not None and not isinstance(self.params, dict):
            raise ValueError(f"MetricConfig(name={self.name!r}): params must be a dict, got {type(self.params).__name__}")
        self._cls = resolve_metric_class(self.metric_class, self.backend, self.name)

    def build(self, num_classes: int | None = None, threshold: float | None = None) -> torchmetrics.Metric:
        """Instantiate the metric; ``num_classes`` fills ``num_classes`` / ``num_labels`` and ``threshold`` fills
        ``threshold`` when the params leave them out and the metric takes them."""
        params = dict(self.params or {})
        if threshold is not None and "threshold" in _accepted(self._cls):
            params.setdefault("threshold", threshold)
        if num_classes is not None:
            task = params.get("task")
            if task == "multilabel":
                params.setdefault("num_labels", num_classes)
            elif task == "multiclass":
                params.setdefault("num_classes", num_classes)
            elif task is None:
                accepted = _accepted(self._cls)
                if "num_classes" in accepted:
                    params.setdefault("num_classes", num_classes)
                elif "num_labels" in accepted:
                    params.setdefault("num_labels", num_classes)
        try:
            return self._cls(**params)
        except (TypeError, ValueError) as err:
            msg = str(err).splitlines()[0] if str(err) else type(err).__name__
            raise ValueError(
                f"MetricConfig(name={self.name!r}): {self._cls.__name__}(**{params!r}) failed: {msg}"
            ) from None


class MetricManager(nn.Module):
    """All metric objects of a task, one per (stage, config).

    Typical use in a task::

        self.metrics = MetricManager(configs, num_classes=10)
        ...
        self.metrics.update("val", probs, target)
        self.metrics.log(self, "val", batch_size=len(target))   # Lightning computes + resets per epoch
    """

    def __init__(
        self, configs: Sequence[MetricConfig | dict] | "MetricManager", num_classes: int | None = None,
        threshold: float | None = None,
    ) -> None:
        super().__init__()
        if isinstance(configs, MetricManager):  # AutoTimm's tasks take a manager as well as a list
            configs = configs.configs
        if configs is None or len(configs) == 0:
            raise ValueError("MetricManager: metrics=[] is empty; pass at least one MetricConfig (or metrics=None for defaults)")
        parsed: list[MetricConfig] = []
        for cfg in configs:
            if isinstance(cfg, dict):
                cfg = MetricConfig(**cfg)
            if not isinstance(cfg, MetricConfig):
                raise ValueError(f"MetricManager: expected MetricConfig or dict, got {type(cfg).__name__}: {cfg!r}")
            parsed.append(cfg)
        names = [c.name for c in parsed]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"MetricManager: duplicate metric name(s) {dupes}; each MetricConfig needs its own name")
        self.configs = parsed
        self.num_classes = num_classes
        self.threshold = threshold
        # Flat keys "<stage>_<name>": nn.Module attributes such as `train` cannot be used as ModuleDict keys.
        self._metrics = nn.ModuleDict(
            {f"{stage}_{cfg.name}": cfg.build(num_classes, threshold) for cfg in parsed for stage in cfg.stages}
        )

    def _get(self, stage: str, name: str) -> torchmetrics.Metric:
        return self._metrics[f"{stage}_{name}"]

    def _check_stage(self, stage: str) -> None:
        if stage not in STAGES:
            raise ValueError(f"MetricManager: unknown stage {stage!r}; use one of {list(STAGES)}")

    def configs_for(self, stage: str) -> list[MetricConfig]:
        self._check_stage(stage)
        return [c for c in self.configs if stage in c.stages]

    def metrics(self, stage: str) -> dict[str, torchmetrics.Metric]:
        """The metric objects of ``stage``, keyed by their logged name ``"{stage}/{name}"``."""
        return {f"{stage}/{c.name}": self._get(stage, c.name) for c in self.configs_for(stage)}

    @torch.no_grad()
    def update(self, stage: str, preds: Tensor | Any, target: Tensor | Any) -> None:
        """Accumulate a batch. ``preds`` are probabilities (softmax/sigmoid), ``target`` the labels.

        Non-tensor inputs (e.g. the lists of box dicts detection metrics take) are passed through unchanged.
        """
        if isinstance(preds, Tensor):
            preds = preds.detach()
            if preds.is_floating_point() and preds.dtype != torch.float32:
                preds = preds.float()  # bf16/fp16 autocast outputs would cost the metrics precision
        for cfg in self.configs_for(stage):
            metric = self._get(stage, cfg.name)
            if cfg.log_on_step:
                metric(preds, target)  # forward() also computes the batch's value, which Lightning logs per step
            else:
                metric.update(preds, target)

    def log(self, module: Any, stage: str, **log_kwargs: Any) -> None:
        """Hand the metric objects to ``module.log`` so Lightning computes, syncs and resets them each epoch (and
        logs them per step where a config says ``log_on_step``)."""
        for cfg in self.configs_for(stage):
            kwargs = {"on_step": cfg.log_on_step, "on_epoch": cfg.log_on_epoch, **log_kwargs}
            module.log(f"{stage}/{cfg.name}", self._get(stage, cfg.name), prog_bar=cfg.prog_bar, **kwargs)

    def compute(self, stage: str) -> dict[str, Tensor]:
        return {key: metric.compute() for key, metric in self.metrics(stage).items()}

    def log_dict(self, stage: str) -> dict[str, Tensor]:
        """Current values of ``stage``'s metrics as ``{"{stage}/{name}": tensor}`` (for manual logging or printing)."""
        return self.compute(stage)

    def reset(self, stage: str | None = None) -> None:
        for s in [stage] if stage else list(STAGES):
            for metric in self.metrics(s).values():
                metric.reset()

    def prog_bar_keys(self, stage: str) -> list[str]:
        return [f"{stage}/{c.name}" for c in self.configs_for(stage) if c.prog_bar]


def default_classification_metrics(num_classes: int, multi_label: bool = False) -> list[MetricConfig]:
    """Accuracy everywhere (on the progress bar), macro F1 on val/test, top-5 accuracy on val/test when it means something."""
    if multi_label:
        common = {"task": "multilabel", "num_labels": num_classes}
        return [
            MetricConfig("accuracy", metric_class="Accuracy", params=common, prog_bar=True),
            MetricConfig("f1", metric_class="F1Score", params={**common, "average": "macro"}, stages=["val", "test"]),
        ]
    common = {"task": "multiclass", "num_classes": num_classes}
    configs = [
        MetricConfig("accuracy", metric_class="Accuracy", params=common, prog_bar=True),
        MetricConfig("f1", metric_class="F1Score", params={**common, "average": "macro"}, stages=["val", "test"]),
    ]
    if num_classes > 5:
        configs.append(
            MetricConfig("top5_accuracy", metric_class="Accuracy", params={**common, "top_k": 5}, stages=["val", "test"])
        )
    return configs
