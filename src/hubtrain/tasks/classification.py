"""``ImageClassifier``: any backbone + a linear head, as in AutoTimm.

Metrics see probabilities (softmax, or sigmoid for multi-label), never argmax labels, so AUROC, top-k accuracy
and calibration error work out of the box.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..backbones import BackboneConfig, create_backbone
from ..backbones.timm_backbone import TimmBackbone
from ..metrics import MetricConfig, MetricManager, default_classification_metrics
from .base import BaseTask, apply_seed, reject_autotimm_only

# AutoTimm's loss-registry names that apply to classification -> hubtrain's loss
LOSSES = {"cross_entropy": "ce", "ce": "ce", "bce": "bce", "bce_with_logits": "bce"}


def _criterion(loss_fn: str | nn.Module | None, label_smoothing: float) -> nn.Module | None:
    """AutoTimm's ``loss_fn``: a module used as is, or a registry name; ``None`` keeps the task's own loss."""
    if loss_fn is None or isinstance(loss_fn, nn.Module):
        return loss_fn
    kind = LOSSES.get(str(loss_fn).lower())
    if kind is None:
        raise ValueError(
            f"ImageClassifier(loss_fn={loss_fn!r}): hubtrain knows {sorted(LOSSES)} of AutoTimm's loss names; "
            "pass any other loss as an nn.Module instance."
        )
    return nn.CrossEntropyLoss(label_smoothing=label_smoothing) if kind == "ce" else nn.BCEWithLogitsLoss()


class ImageClassifier(BaseTask):
    """Image classification with a timm or transformers backbone.

    Args:
        backbone: anything ``create_backbone`` takes: a timm name, ``"hf-hub:org/name"``, ``"local-dir:/path"``,
            a ``BackboneConfig`` (or its dict), a transformers model / config / ``"hf:"`` name.
        num_classes: number of classes (labels, for ``multi_label``).
        multi_label: independent sigmoid outputs and BCE loss instead of softmax and cross-entropy.
        threshold: multi-label decision threshold, given to every metric that takes a ``threshold``.
        loss_fn: AutoTimm's custom loss: an ``nn.Module`` called as ``loss_fn(logits, targets)``, or one of
            ``LOSSES``; ``None`` keeps the built-in loss. A module is not saved in the hyperparameters (as in
            AutoTimm): pass it again to ``load_from_checkpoint`` to keep training with it.
        metrics: ``MetricConfig`` list (or dicts, or a ``MetricManager``); ``None`` gives accuracy (+ macro F1 and
            top-5 on val/test).
        logging_config, transform_config: AutoTimm-only; accepted as ``None`` (see ``base.AUTOTIMM_ONLY``).
        lr, weight_decay, optimizer, optimizer_kwargs, scheduler, scheduler_kwargs: see ``BaseTask``.
        head_dropout: dropout before the linear head.
        label_smoothing: cross-entropy label smoothing (or BCE target smoothing for multi-label).
        freeze_backbone: train the head only; the frozen backbone also stays in eval mode (fixed BN statistics).
        mixup_alpha: when > 0, mix each training batch with a shuffled copy of itself, with a Beta(alpha, alpha)
            weight, and weight the two targets' losses alike (AutoTimm's Mixup).
        compile_model: ``torch.compile`` the forward pass. Off by default (AutoTimm: on): on CPU it costs far more
            than it saves.
        compile_kwargs: passed to ``torch.compile`` (``{"mode": "max-autotune"}``, ``{"backend": "eager"}``).
        seed: seed Python, NumPy and torch before building the model; ``deterministic`` (with a seed) also turns
            on torch's deterministic algorithms, as in AutoTimm.
        channels_last: keep the backbone's weights and the images in channels-last memory order, which convolution
            kernels (oneDNN on CPU, cuDNN with mixed precision) run faster: about 10% per training step for resnet18
            on CPU here. Results are the same up to float rounding. ``None`` (default) turns it on for timm
            backbones, which all support it (timm's ``train.py --channels-last``), and off for transformers models.
        class_names: names for the outputs, written to ``config.json`` (``id2label``) on ``save_pretrained``.
        pretrained: override the backbone's ``pretrained`` flag (``None`` keeps it; a bare name means ``True``).
    """

    pipeline_tag = "image-classification"
    export_check_argmax = True  # logits: the exported classifier must pick the same class

    def __init__(
        self,
        backbone: Any,
        num_classes: int,
        multi_label: bool = False,
        threshold: float = 0.5,
        loss_fn: str | nn.Module | None = None,
        metrics: Sequence[MetricConfig | dict] | MetricManager | None = None,
        logging_config: Any = None,
        transform_config: Any = None,
        lr: float = 1e-3,
        weight_decay: float = 1e-4,
        optimizer: str | dict = "adamw",
        optimizer_kwargs: dict[str, Any] | None = None,
        scheduler: str | dict | None = "cosine",
        scheduler_kwargs: dict[str, Any] | None = None,
        head_dropout: float = 0.0,
        label_smoothing: float = 0.0,
        freeze_backbone: bool = False,
        mixup_alpha: float = 0.0,
        compile_model: bool = False,
        compile_kwargs: dict[str, Any] | None = None,
        seed: int | None = None,
        deterministic: bool = True,
        channels_last: bool | None = None,
        class_names: Sequence[str] | None = None,
        pretrained: bool | None = None,
    ) -> None:
        if not isinstance(num_classes, int) or num_classes < (1 if multi_label else 2):
            raise ValueError(f"num_classes={num_classes!r}: a classifier needs at least {1 if multi_label else 2} classes.")
        if class_names is not None and len(class_names) != num_classes:
            raise ValueError(f"class_names has {len(class_names)} names but num_classes={num_classes}; give one name per class.")
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"label_smoothing={label_smoothing!r}: must lie in [0, 1).")
        if not 0.0 <= head_dropout < 1.0:
            raise ValueError(f"head_dropout={head_dropout!r}: must lie in [0, 1).")
        if mixup_alpha < 0:
            raise ValueError(f"mixup_alpha={mixup_alpha!r}: must be >= 0 (0 turns Mixup off).")
        reject_autotimm_only("ImageClassifier", logging_config=logging_config, transform_config=transform_config)
        apply_seed(seed, deterministic)
        super().__init__(
            lr=lr,
            weight_decay=weight_decay,
            optimizer=optimizer,
            scheduler=scheduler,
            optimizer_kwargs=optimizer_kwargs,
            scheduler_kwargs=scheduler_kwargs,
        )
        self.num_classes = num_classes
        self.multi_label = multi_label
        self.label_smoothing = label_smoothing
        self.class_names = [str(c) for c in class_names] if class_names is not None else [str(i) for i in range(num_classes)]
        self.freeze_backbone = freeze_backbone
        self.mixup_alpha = float(mixup_alpha)
        self.criterion = _criterion(loss_fn, label_smoothing)

        if isinstance(backbone, BackboneConfig) and backbone.num_classes:
            backbone = dataclasses.replace(backbone, num_classes=0)  # the head is ours, as in AutoTimm
        self.backbone = create_backbone(backbone, pretrained=pretrained)
        self.head = nn.Sequential(nn.Dropout(head_dropout), nn.Linear(self.backbone.num_features, num_classes))
        self.metrics = MetricManager(
            metrics if metrics is not None else default_classification_metrics(num_classes, multi_label), num_classes,
            threshold=threshold if multi_label else None,
        )
        if freeze_backbone:
            self.backbone.requires_grad_(False)
        self.channels_last = isinstance(self.backbone, TimmBackbone) if channels_last is None else bool(channels_last)
        if self.channels_last:
            self.backbone.to(memory_format=torch.channels_last)
        # A compiled function, not a compiled module: parameter names (and so checkpoints) stay the same.
        self._compiled = torch.compile(self._logits, **(compile_kwargs or {})) if compile_model else None
        self.save_hyperparameters(ignore=["loss_fn"] if isinstance(loss_fn, nn.Module) else None)

    @property
    def monitor(self) -> tuple[str, str]:
        has_val_accuracy = any(c.name == "accuracy" for c in self.metrics.configs_for("val"))
        return ("val/accuracy", "max") if has_val_accuracy else ("val/loss", "min")

    def _logits(self, images: Tensor) -> Tensor:
        if self.channels_last and images.dim() == 4:
            images = images.contiguous(memory_format=torch.channels_last)
        return self.head(self.backbone(images))

    def forward(self, images: Tensor) -> Tensor:
        """Logits ``(B, num_classes)``."""
        return self._compiled(images) if self._compiled is not None else self._logits(images)

    def probabilities(self, logits: Tensor) -> Tensor:
        logits = logits.float()
        return logits.sigmoid() if self.multi_label else logits.softmax(dim=-1)

    def loss(self, logits: Tensor, targets: Tensor) -> Tensor:
        if self.criterion is not None:
            return self.criterion(logits, targets.float() if self.multi_label else targets)
        if self.multi_label:
            targets = targets.float()
            if self.label_smoothing:
                targets = targets * (1 - self.label_smoothing) + 0.5 * self.label_smoothing
            return F.binary_cross_entropy_with_logits(logits, targets)
        return F.cross_entropy(logits, targets, label_smoothing=self.label_smoothing)

    def _step(self, batch: tuple[Tensor, Tensor], stage: str) -> Tensor:
        images, targets = batch[0], batch[1]
        if stage == "train" and self.mixup_alpha > 0:
            lam = torch.distributions.Beta(self.mixup_alpha, self.mixup_alpha).sample().to(images.device)
            shuffled = torch.randperm(len(images), device=images.device)
            logits = self(lam * images + (1 - lam) * images[shuffled])
            loss = lam * self.loss(logits, targets) + (1 - lam) * self.loss(logits, targets[shuffled])
        else:
            logits = self(images)
            loss = self.loss(logits, targets)
        batch_size = len(images)
        self.log(f"{stage}/loss", loss, on_step=stage == "train", on_epoch=True, prog_bar=True, batch_size=batch_size)
        self.metrics.update(stage, self.probabilities(logits.detach()), targets.long() if self.multi_label else targets)
        self.metrics.log(self, stage, batch_size=batch_size)
        return loss

    def predict_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> Tensor:
        """Probabilities ``(B, num_classes)``; the batch may be images or ``(images, labels)``."""
        images = batch[0] if isinstance(batch, (tuple, list)) else batch
        return self.probabilities(self(images))

    @torch.no_grad()
    def predict(self, images: Tensor) -> Tensor:
        """Probabilities for a batch of preprocessed images, computed in eval mode."""
        was_training = self.training
        self.eval()
        try:
            return self.probabilities(self(images))
        finally:
            self.train(was_training)

    @torch.no_grad()
    def predict_images(self, images: list[Any], *, top_k: int = 5) -> list[dict[str, Any]]:
        """``{"label", "score", "labels": [{"label", "score"}, ...]}`` per image: the best class, then the ``top_k``
        classes by probability."""
        transform = self.eval_transform()
        batch = torch.stack([transform(image.convert("RGB")) for image in images]).to(self.device)
        probs = self.predict(batch).float().cpu()
        scores, indices = probs.topk(min(top_k, probs.shape[-1]), dim=-1)
        out = []
        for row_s, row_i in zip(scores.tolist(), indices.tolist()):
            labels = [{"label": self.class_names[i], "score": round(float(p), 6)} for p, i in zip(row_s, row_i)]
            out.append({"label": labels[0]["label"], "score": labels[0]["score"], "labels": labels})
        return out

    def library_format(self) -> Any:
        """The backbone and the linear head as timm's or transformers' own classifier (``LibraryClassifier``), or
        None where the backbone's library has none; ``save_pretrained`` writes that format when it gives the same
        logits, so the library's own loader reads the folder without hubtrain."""
        make = getattr(self.backbone, "library_classifier", None)
        fmt = make(self.head[1], self.class_names, self.preprocessing) if make is not None else None
        if fmt is not None:
            fmt.keys = {("head.1." + k[5:] if k.startswith("head.") else k): v for k, v in fmt.keys.items()}
        return fmt

    def hub_config(self) -> dict[str, Any]:
        config = super().hub_config()
        config.update(num_classes=self.num_classes, multi_label=self.multi_label)
        return config
