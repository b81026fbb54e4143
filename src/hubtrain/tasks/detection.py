"""``ObjectDetector``: FCOS on an FPN (P3-P7) over any backbone, scored with COCO mAP.

Batches are ``(images (B, 3, H, W), [{"boxes": (N, 4) xyxy pixels, "labels": (N,)}, ...])`` as produced by
``hubtrain.data.detection.detection_collate``. Predictions use the same box convention, in the input's pixels.
"""
from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import Tensor

from hubtrain.backbones import create_backbone
from hubtrain.metrics import MetricConfig, MetricManager
from hubtrain.tasks.base import BaseTask, apply_seed, compile_modules, reject_autotimm_only
from hubtrain.tasks.heads.fcos import DEFAULT_REGRESSION_RANGES, FCOSHead, decode, fcos_loss, make_points
from hubtrain.tasks.heads.fpn import FPN

DETECTION_ARCHS = ("fcos",)
Targets = Sequence[dict[str, Tensor]]


def default_detection_metrics() -> list[MetricConfig]:
    """COCO mAP (pycocotools backend) on val and test; its scalars are logged as ``{stage}/map``, ``map_50``..."""
    return [MetricConfig("map", metric_class="torchmetrics.detection.MeanAveragePrecision",
                         params={"box_format": "xyxy", "iou_type": "bbox", "backend": "pycocotools"},
                         stages=["val", "test"])]


class ObjectDetector(BaseTask):
    """Anchor-free FCOS detector.

    Args:
        backbone: anything ``create_backbone`` takes; it must offer feature maps at three consecutive
            doubling strides (C3-C5, normally 8, 16, 32), the last three of which feed the FPN.
        num_classes: object classes, background excluded (FCOS learns background as "no class fires").
        detection_arch: ``"fcos"`` (AutoTimm's ``"yolox"`` is not implemented: a one-line error says so).
        cls_loss_fn, reg_loss_fn, logging_config, transform_config: AutoTimm-only; accepted as ``None``.
        max_detections_per_image, regress_ranges: AutoTimm's names for ``max_detections`` and
            ``regression_ranges``; when given, they win.
        fpn_channels: width of the FPN and of the head towers.
        cls_loss_weight, reg_loss_weight, centerness_loss_weight: weights of the three FCOS losses in the total.
        regression_ranges (AutoTimm: ``regress_ranges``): per-level ``(min, max)`` of a location's largest
            box-side distance (FCOS defaults).
        strides: AutoTimm's FPN strides; hubtrain takes them from the backbone (P3-P7: 8 ... 128 for the usual
            stride-32 backbones) and checks that they agree.
        score_thresh, nms_thresh, max_detections (AutoTimm: ``max_detections_per_image``): decoding; NMS is
            class-wise (``torchvision.ops.batched_nms``).
        metrics: ``MetricConfig`` list (or a ``MetricManager``) of detection metrics updated with
            ``(predictions, targets)`` lists; ``None`` gives COCO mAP. A metric returning a dict has each scalar
            logged as ``{stage}/<key>``.
        compile_model, compile_kwargs: ``torch.compile`` backbone, FPN and head in place (off by default;
            AutoTimm: on).
        seed, deterministic: as in ``ImageClassifier``.
        lr, weight_decay, optimizer, scheduler, optimizer_kwargs, scheduler_kwargs: see ``BaseTask``.
        freeze_backbone: train FPN and head only; the frozen backbone stays in eval mode.
        class_names: written to ``config.json`` (``id2label``).
        pretrained: override the backbone's ``pretrained`` flag (``None`` keeps it).
    """

    pipeline_tag = "object-detection"
    usage_call = "model.predict(images)"  # boxes, labels and scores per image
    export_tolerance = 1e-5  # dense outputs: no argmax to compare

    def __init__(
        self,
        backbone: Any = "resnet18",
        num_classes: int = 80,
        detection_arch: str = "fcos",
        cls_loss_fn: Any = None,
        reg_loss_fn: Any = None,
        metrics: Sequence[MetricConfig | dict] | MetricManager | None = None,
        logging_config: Any = None,
        transform_config: Any = None,
        lr: float = 1e-4,
        weight_decay: float = 1e-4,
        optimizer: str | dict = "adamw",
        optimizer_kwargs: dict[str, Any] | None = None,
        scheduler: str | dict | None = "cosine",
        scheduler_kwargs: dict[str, Any] | None = None,
        fpn_channels: int = 256,
        head_num_convs: int = 4,
        focal_alpha: float = 0.25,
        focal_gamma: float = 2.0,
        cls_loss_weight: float = 1.0,
        reg_loss_weight: float = 1.0,
        centerness_loss_weight: float = 1.0,
        score_thresh: float = 0.05,
        nms_thresh: float = 0.5,
        max_detections_per_image: int | None = None,
        freeze_backbone: bool = False,
        strides: Sequence[int] | None = None,
        regress_ranges: Sequence[Sequence[float]] | None = None,
        compile_model: bool = False,
        compile_kwargs: dict[str, Any] | None = None,
        seed: int | None = None,
        deterministic: bool = True,
        max_detections: int = 100,
        regression_ranges: Sequence[Sequence[float]] | None = None,
        center_sampling_radius: float = 1.5,
        pre_nms_top_n: int = 1000,
        class_names: Sequence[str] | None = None,
        pretrained: bool | None = None,
    ) -> None:
        if detection_arch not in DETECTION_ARCHS:
            raise ValueError(f"detection_arch={detection_arch!r}: AutoTimm also offers 'yolox', hubtrain implements "
                             f"{list(DETECTION_ARCHS)} only; use detection_arch='fcos'.")
        reject_autotimm_only("ObjectDetector", cls_loss_fn=cls_loss_fn, reg_loss_fn=reg_loss_fn,
                             logging_config=logging_config, transform_config=transform_config)
        # AutoTimm's names for two of ours: when given, they win.
        max_detections = max_detections_per_image if max_detections_per_image is not None else max_detections
        regression_ranges = regress_ranges if regress_ranges is not None else regression_ranges
        if num_classes < 1:
            raise ValueError(f"num_classes={num_classes}: need at least one object class.")
        if class_names is not None and len(class_names) != num_classes:
            raise ValueError(f"class_names has {len(class_names)} names but num_classes={num_classes}.")
        ranges = [tuple(float(v) for v in r) for r in (regression_ranges or DEFAULT_REGRESSION_RANGES)]
        if len(ranges) != 5:
            raise ValueError(f"regression_ranges needs 5 (min, max) pairs, one per level P3-P7; got {len(ranges)}.")
        apply_seed(seed, deterministic)
        super().__init__(lr=lr, weight_decay=weight_decay, optimizer=optimizer, scheduler=scheduler,
                         optimizer_kwargs=optimizer_kwargs, scheduler_kwargs=scheduler_kwargs)
        self.freeze_backbone = freeze_backbone
        self.num_classes = num_classes
        self.loss_weights = {"loss_cls": cls_loss_weight, "loss_box": reg_loss_weight, "loss_ctr": centerness_loss_weight}
        self.class_names = list(class_names) if class_names is not None else [str(i) for i in range(num_classes)]
        self.regression_ranges = ranges
        self.center_sampling_radius, self.focal_alpha, self.focal_gamma = center_sampling_radius, focal_alpha, focal_gamma
        self.score_thresh, self.nms_thresh = score_thresh, nms_thresh
        self.max_detections, self.pre_nms_top_n = max_detections, pre_nms_top_n

        self.backbone = create_backbone(backbone, pretrained=pretrained, features_only=True)
        channels, levels = list(self.backbone.feature_channels), list(self.backbone.feature_strides)
        if len(levels) < 3 or levels[-1] != 2 * levels[-2] or levels[-2] != 2 * levels[-3]:
            raise ValueError(
                f"backbone feature strides {levels}: FCOS needs three levels at doubling strides (e.g. 8, 16, 32); "
                "use a hierarchical backbone (ResNet, ConvNeXt, EfficientNet, Swin...)."
            )
        self.fpn = FPN(channels[-3:], levels[-3:], fpn_channels)
        if strides is not None and list(strides) != list(self.fpn.strides):
            raise ValueError(f"ObjectDetector(strides={tuple(strides)}): hubtrain's FPN takes its strides from the "
                             f"backbone, here {tuple(self.fpn.strides)}; leave strides=None or pick a backbone with those.")
        self.head = FCOSHead(fpn_channels, num_classes, self.fpn.strides, head_num_convs)
        metrics = metrics.configs if isinstance(metrics, MetricManager) else metrics
        metric_configs = [MetricConfig(**m) if isinstance(m, dict) else m
                          for m in (metrics if metrics is not None else default_detection_metrics())]
        self.metric_configs = metric_configs
        self.detection_metrics = torch.nn.ModuleDict(
            {f"{stage}_{cfg.name}": cfg.build() for cfg in metric_configs for stage in cfg.stages if stage != "train"}
        )
        if freeze_backbone:
            self.backbone.requires_grad_(False)
        if compile_model:
            compile_modules([self.backbone, self.fpn, self.head], compile_kwargs)
        self.save_hyperparameters()

    @property
    def monitor(self) -> tuple[str, str]:
        has_map = any(c.name == "map" and "val" in c.stages for c in self.metric_configs)
        return ("val/map", "max") if has_map else ("val/loss", "min")

    def _raw(self, images: Tensor) -> tuple[dict[str, Tensor], dict[str, Tensor], list[int]]:
        levels = self.fpn(self.backbone(images)[-3:])
        outputs = self.head(levels)
        sizes = [tuple(level.shape[-2:]) for level in levels]
        points = make_points(sizes, self.fpn.strides, self.regression_ranges, images.device)
        return outputs, points, [h * w for h, w in sizes]

    def forward(self, images: Tensor) -> dict[str, Tensor]:
        """Raw per-location outputs flattened over P3-P7: ``cls`` logits (B, P, K), ``ltrb`` (B, P, 4), ``ctr`` (B, P)."""
        return self._raw(images)[0]

    def _decode(self, outputs: dict[str, Tensor], points: dict[str, Tensor], level_sizes: list[int],
                image_size: tuple[int, int]) -> list[dict[str, Tensor]]:
        return decode({k: v.float() for k, v in outputs.items()}, points, level_sizes, image_size,
                      self.score_thresh, self.nms_thresh, self.max_detections, self.pre_nms_top_n)

    def _step(self, batch: tuple[Tensor, Targets], stage: str) -> Tensor:
        images, targets = batch
        outputs, points, level_sizes = self._raw(images)
        losses = fcos_loss({k: v.float() for k, v in outputs.items()}, points, targets, self.num_classes,
                           self.focal_alpha, self.focal_gamma, self.center_sampling_radius)
        loss = sum(weight * losses[key] for key, weight in self.loss_weights.items())
        on_step = stage == "train"
        self.log(f"{stage}/loss", loss, on_step=on_step, on_epoch=True, prog_bar=True, batch_size=len(images))
        for key in ("loss_cls", "loss_box", "loss_ctr"):
            self.log(f"{stage}/{key}", losses[key], on_step=False, on_epoch=True, batch_size=len(images))
        if stage != "train":
            preds = self._decode(outputs, points, level_sizes, tuple(images.shape[-2:]))
            for cfg in self.metric_configs:
                if stage in cfg.stages:
                    self.detection_metrics[f"{stage}_{cfg.name}"].update(preds, list(targets))
        return loss

    def _log_metrics(self, stage: str) -> None:
        for cfg in self.metric_configs:
            metric = self.detection_metrics[f"{stage}_{cfg.name}"] if stage in cfg.stages else None
            if metric is None or not metric.update_called:
                continue
            result = metric.compute()
            if isinstance(result, dict):
                for key, value in result.items():
                    if isinstance(value, Tensor) and value.numel() == 1 and key != "classes" and not key.endswith("per_class"):
                        self.log(f"{stage}/{key}", value.float(), prog_bar=key in ("map", "map_50"))
            else:
                self.log(f"{stage}/{cfg.name}", result, prog_bar=cfg.prog_bar)
            metric.reset()

    def on_validation_epoch_end(self) -> None:
        self._log_metrics("val")

    def on_test_epoch_end(self) -> None:
        self._log_metrics("test")

    def predict_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> list[dict[str, Tensor]]:
        images = batch[0] if isinstance(batch, (tuple, list)) else batch
        outputs, points, level_sizes = self._raw(images)
        return self._decode(outputs, points, level_sizes, tuple(images.shape[-2:]))

    def eval_transform(self) -> Any:
        from hubtrain.data.segmentation import dense_eval_transform

        return dense_eval_transform(self)

    def predict_images(self, images: list[Any], *, top_k: int = 5) -> list[dict[str, Any]]:
        """``{"detections": [{"label", "score", "box": [x0, y0, x1, y1]}]}`` per image, boxes in the image's own
        pixels, best first."""
        transform = self.eval_transform()
        batch = torch.stack([transform(image.convert("RGB")) for image in images])
        out = []
        for image, found in zip(images, self.predict(batch)):
            sx, sy = image.width / batch.shape[-1], image.height / batch.shape[-2]
            scale = torch.tensor([sx, sy, sx, sy])
            order = found["scores"].float().cpu().argsort(descending=True)
            out.append({"detections": [
                {"label": self.class_names[int(found["labels"][i])], "score": round(float(found["scores"][i]), 6),
                 "box": [round(float(v), 2) for v in (found["boxes"][i].float().cpu() * scale).tolist()]}
                for i in order.tolist()]})
        return out

    @torch.no_grad()
    def predict(self, images: Tensor | Sequence[Tensor]) -> list[dict[str, Tensor]]:
        """One ``{"boxes" (N, 4) xyxy, "scores" (N,), "labels" (N,)}`` per normalised image, in eval mode."""
        if not isinstance(images, Tensor):
            images = list(images)
            sizes = sorted({tuple(image.shape[-2:]) for image in images})
            if len(sizes) > 1:
                raise ValueError(f"predict() got images of sizes {sizes}; resize them to one size first "
                                 "(the data module's evaluation transform does).")
            images = torch.stack(images)
        if images.ndim == 3:
            images = images.unsqueeze(0)
        was_training = self.training
        self.eval()
        try:
            return self.predict_step(images.to(self.device), 0)
        finally:
            self.train(was_training)
