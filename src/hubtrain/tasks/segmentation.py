"""``SemanticSegmentor``: any backbone + DeepLabV3+ (or FCN) head, trained and scored at the mask's resolution.

The head predicts at its own output stride (4 for DeepLabV3+, the encoder stride for FCN). Logits are then
upsampled bilinearly to the *mask's* height and width before the loss and before every metric, so nothing
is ever compared at a coarse scale. Pixels equal to ``ignore_index`` count in neither.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics.classification import MulticlassJaccardIndex

from hubtrain.backbones import BackboneConfig, create_backbone
from hubtrain.metrics import MetricConfig, MetricManager
from hubtrain.tasks.base import BaseTask, apply_seed, compile_modules, reject_autotimm_only
from hubtrain.tasks.heads.segmentation import DeepLabV3PlusHead, FCNHead
from hubtrain.tasks.losses import SegmentationLoss

HEAD_TYPES = ("deeplabv3plus", "fcn")
# AutoTimm's loss-registry names for segmentation -> hubtrain's loss_type
LOSSES = {"cross_entropy": "ce", "ce": "ce", "dice": "dice", "focal_pixelwise": "focal", "focal": "focal",
          "combined_segmentation": "combined", "combined": "combined"}


def _is_timm_spec(spec: Any) -> bool:
    """Whether ``spec`` names a timm model, the family that can dilate its last stages (``output_stride``)."""
    if isinstance(spec, dict):
        spec = spec.get("model_name")
    if isinstance(spec, BackboneConfig):
        spec = spec.model_name
    if not isinstance(spec, str) or spec.startswith("hf:"):
        return False
    if spec.startswith(("hf-hub:", "local-dir:")):
        return True
    config = Path(spec).expanduser() / "config.json"
    if config.is_file():  # a timm save_for_hf folder has "architecture"; a transformers one has "model_type"
        return "architecture" in json.loads(config.read_text(encoding="utf-8"))
    import timm

    return timm.is_model(spec)


def default_segmentation_metrics(num_classes: int, ignore_index: int | None) -> list[MetricConfig]:
    """mIoU (macro over classes present in prediction or target) and pixel accuracy (micro), on val and test."""
    common = {"task": "multiclass", "num_classes": num_classes, "ignore_index": ignore_index}
    return [
        MetricConfig("mIoU", metric_class="JaccardIndex", params={**common, "average": "macro"},
                     stages=["val", "test"], prog_bar=True),
        MetricConfig("pixel_accuracy", metric_class="Accuracy", params={**common, "average": "micro"},
                     stages=["train", "val", "test"]),
    ]


class SemanticSegmentor(BaseTask):
    """Semantic segmentation with a timm / transformers backbone.

    Args:
        backbone: anything ``hubtrain.backbones.create_backbone`` takes (timm name, ``hf-hub:``, ``local-dir:``,
            ``BackboneConfig``, transformers model / config / ``hf:`` name).
        num_classes: number of classes, background included.
        head_type: ``"deeplabv3plus"`` (ASPP + stride-4 decoder) or ``"fcn"``.
        loss_fn: AutoTimm's custom loss: an ``nn.Module`` called as ``loss_fn(logits, masks)`` (not saved in the
            hyperparameters, as in AutoTimm), or a name of ``LOSSES``, which replaces ``loss_type``.
        loss_type: ``"ce"``, ``"dice"``, ``"focal"`` or ``"combined"`` (``ce_weight`` * CE + ``dice_weight`` * dice;
            the default, as in AutoTimm).
        ignore_index: mask value excluded from loss and metrics (``None`` for none).
        class_weights: per-class weights for CE / focal.
        logging_config, transform_config: AutoTimm-only; accepted as ``None`` (see ``base.AUTOTIMM_ONLY``).
        compile_model, compile_kwargs: ``torch.compile`` backbone and head in place (off by default; AutoTimm: on).
        seed, deterministic: as in ``ImageClassifier``.
        output_stride: encoder stride for timm backbones (16 dilates the last stage, as in DeepLabV3+);
            transformers backbones keep their own strides, and the head adapts to the stride they report.
            ``model.encoder_stride`` is the stride obtained, ``model.decoder_stride`` that of the logits.
        metrics: ``MetricConfig`` list; ``None`` gives mIoU and pixel accuracy. Per-class IoU is always logged
            on val/test as ``{stage}/IoU_<class>``.
        lr, weight_decay, optimizer, scheduler, optimizer_kwargs, scheduler_kwargs: see ``BaseTask``.
        freeze_backbone: train the head only; the frozen backbone stays in eval mode.
        aspp_channels, decoder_channels, low_level_channels, head_dropout: DeepLabV3+ widths (FCN: dropout only).
        class_names: written to ``config.json`` (``id2label``) and used for the per-class IoU keys.
        pretrained: override the backbone's ``pretrained`` flag (``None`` keeps it).
    """

    pipeline_tag = "image-segmentation"
    export_tolerance = 1e-5  # dense outputs: no argmax to compare

    def __init__(
        self,
        backbone: Any = "resnet18",
        num_classes: int = 2,
        head_type: str = "deeplabv3plus",
        loss_fn: str | nn.Module | None = None,
        loss_type: str = "combined",
        dice_weight: float = 1.0,
        ce_weight: float = 1.0,
        ignore_index: int | None = 255,
        class_weights: Sequence[float] | None = None,
        metrics: Sequence[MetricConfig | dict] | MetricManager | None = None,
        logging_config: Any = None,
        transform_config: Any = None,
        lr: float = 1e-4,
        weight_decay: float = 1e-4,
        optimizer: str | dict = "adamw",
        optimizer_kwargs: dict[str, Any] | None = None,
        scheduler: str | dict | None = "cosine",
        scheduler_kwargs: dict[str, Any] | None = None,
        freeze_backbone: bool = False,
        compile_model: bool = False,
        compile_kwargs: dict[str, Any] | None = None,
        seed: int | None = None,
        deterministic: bool = True,
        focal_gamma: float = 2.0,
        output_stride: int = 16,
        aspp_channels: int = 256,
        decoder_channels: int = 256,
        low_level_channels: int = 48,
        head_dropout: float = 0.1,
        class_names: Sequence[str] | None = None,
        pretrained: bool | None = None,
    ) -> None:
        reject_autotimm_only("SemanticSegmentor", logging_config=logging_config, transform_config=transform_config)
        if isinstance(loss_fn, str):
            if loss_fn.lower() not in LOSSES:
                raise ValueError(f"SemanticSegmentor(loss_fn={loss_fn!r}): hubtrain knows {sorted(LOSSES)} of AutoTimm's "
                                 "loss names; pass any other loss as an nn.Module instance.")
            loss_type = LOSSES[loss_fn.lower()]
        if head_type not in HEAD_TYPES:
            raise ValueError(f"head_type={head_type!r} is not supported; use one of {HEAD_TYPES}.")
        if num_classes < 2:
            raise ValueError(f"num_classes={num_classes}: segmentation needs at least 2 classes (background included).")
        if class_weights is not None and len(class_weights) != num_classes:
            raise ValueError(f"class_weights has {len(class_weights)} entries but num_classes={num_classes}.")
        if class_names is not None and len(class_names) != num_classes:
            raise ValueError(f"class_names has {len(class_names)} names but num_classes={num_classes}.")
        if output_stride not in (8, 16, 32):
            raise ValueError(f"output_stride={output_stride}: use 8, 16 or 32.")
        apply_seed(seed, deterministic)
        super().__init__(lr=lr, weight_decay=weight_decay, optimizer=optimizer, scheduler=scheduler,
                         optimizer_kwargs=optimizer_kwargs, scheduler_kwargs=scheduler_kwargs)
        self.freeze_backbone = freeze_backbone
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.class_names = list(class_names) if class_names is not None else [str(i) for i in range(num_classes)]

        dilate = output_stride != 32 and _is_timm_spec(backbone)
        self.backbone = create_backbone(backbone, pretrained=pretrained, features_only=True,
                                        **({"output_stride": output_stride} if dilate else {}))
        channels, strides = list(self.backbone.feature_channels), list(self.backbone.feature_strides)
        if head_type == "deeplabv3plus":
            # The low-level branch uses the finest map at stride >= 4 (stride 4 for CNNs; ViTs may only have 16).
            low = next((i for i, s in enumerate(strides) if s >= 4), len(strides) - 1)
            self.head = DeepLabV3PlusHead(channels, strides, num_classes, low, aspp_channels, low_level_channels,
                                          decoder_channels, head_dropout)
        else:
            self.head = FCNHead(channels, strides, num_classes, dropout=head_dropout)
        self.encoder_stride = strides[-1]
        self.criterion = (loss_fn if isinstance(loss_fn, nn.Module)
                          else SegmentationLoss(loss_type, ignore_index, class_weights, focal_gamma, ce_weight, dice_weight))
        self.metrics = MetricManager(
            metrics if metrics is not None else default_segmentation_metrics(num_classes, ignore_index), num_classes
        )
        self.per_class_iou = nn.ModuleDict({
            stage: MulticlassJaccardIndex(num_classes, average="none", ignore_index=ignore_index) for stage in ("val", "test")
        })
        if freeze_backbone:
            self.backbone.requires_grad_(False)
        if compile_model:
            compile_modules([self.backbone, self.head], compile_kwargs)
        self.save_hyperparameters(ignore=["loss_fn"] if isinstance(loss_fn, nn.Module) else None)

    @property
    def monitor(self) -> tuple[str, str]:
        has_miou = any(c.name == "mIoU" for c in self.metrics.configs_for("val"))
        return ("val/mIoU", "max") if has_miou else ("val/loss", "min")

    @property
    def decoder_stride(self) -> int:
        """Stride of the head's logits relative to the input, before upsampling (4 for DeepLabV3+)."""
        return self.head.output_stride

    def forward_logits(self, images: Tensor) -> Tensor:
        """Logits at the head's stride, ``(B, C, H / decoder_stride, W / decoder_stride)``."""
        return self.head(self.backbone(images))

    def forward(self, images: Tensor, output_size: Sequence[int] | None = None) -> Tensor:
        """Logits ``(B, C, H, W)`` upsampled to ``output_size`` (default: the input's size)."""
        size = tuple(output_size) if output_size is not None else tuple(images.shape[-2:])
        return F.interpolate(self.forward_logits(images), size=size, mode="bilinear", align_corners=False)

    def _step(self, batch: tuple[Tensor, Tensor], stage: str) -> Tensor:
        images, masks = batch
        logits = self(images, output_size=masks.shape[-2:])
        loss = self.criterion(logits, masks)
        self.log(f"{stage}/loss", loss, on_step=stage == "train", on_epoch=True, prog_bar=True, batch_size=len(images))
        probs = logits.detach().float().softmax(dim=1)
        self.metrics.update(stage, probs, masks)
        self.metrics.log(self, stage, batch_size=len(images))
        if stage in self.per_class_iou:
            self.per_class_iou[stage].update(probs, masks)
        return loss

    def _log_per_class(self, stage: str) -> None:
        metric = self.per_class_iou[stage]
        if not metric.update_called:
            return
        for name, iou in zip(self.class_names, metric.compute()):
            self.log(f"{stage}/IoU_{name}", iou)
        metric.reset()

    def on_validation_epoch_end(self) -> None:
        self._log_per_class("val")

    def on_test_epoch_end(self) -> None:
        self._log_per_class("test")

    def predict_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> Tensor:
        """Per-pixel class maps ``(B, H, W)`` at the input's (or the batch masks') resolution."""
        images = batch[0] if isinstance(batch, (tuple, list)) else batch
        size = batch[1].shape[-2:] if isinstance(batch, (tuple, list)) and len(batch) > 1 else images.shape[-2:]
        return self(images, output_size=size).argmax(dim=1)

    def eval_transform(self) -> Any:
        from ..data.segmentation import dense_eval_transform

        return dense_eval_transform(self)

    @torch.no_grad()
    def predict_images(self, images: list[Any], *, top_k: int = 5) -> list[dict[str, Any]]:
        """``{"mask": uint8 array (H, W) at the image's own size, "class_share": {class: fraction of pixels}}``."""
        transform = self.eval_transform()
        batch = torch.stack([transform(image.convert("RGB")) for image in images]).to(self.device)
        was_training = self.training
        self.eval()
        try:
            logits = self(batch)
        finally:
            self.train(was_training)
        out = []
        for image, row in zip(images, logits):
            mask = F.interpolate(row[None].float(), size=(image.height, image.width), mode="bilinear",
                                 align_corners=False).argmax(dim=1)[0]
            counts = torch.bincount(mask.flatten(), minlength=len(self.class_names)).float() / mask.numel()
            out.append({"mask": mask.to(torch.uint8).cpu().numpy(),
                        "class_share": {name: round(float(c), 6) for name, c in zip(self.class_names, counts) if c > 0}})
        return out

    @torch.no_grad()
    def predict(self, images: Tensor) -> Tensor:
        """Class maps ``(B, H, W)`` for normalised images ``(B, 3, H, W)``, in eval mode."""
        was_training = self.training
        self.eval()
        try:
            return self(images).argmax(dim=1)
        finally:
            self.train(was_training)
