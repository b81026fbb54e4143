"""FCOS (Tian et al. 2019, with the "improvements" of its v2 paper): an anchor-free, per-pixel detector.

Every location on every pyramid level predicts class scores, the four distances (l, t, r, b) to the sides of
its box, and a centerness. Training assigns a location to the smallest ground-truth box that contains it
(within ``center_sampling_radius`` strides of the box centre) and whose largest side distance lies in the
level's regression range; every other location is background and is learned as such by the sigmoid focal loss.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import batched_nms, clip_boxes_to_image, generalized_box_iou_loss, sigmoid_focal_loss

from hubtrain.tasks.losses import centerness_target

INF = float("inf")
DEFAULT_REGRESSION_RANGES = ((0.0, 64.0), (64.0, 128.0), (128.0, 256.0), (256.0, 512.0), (512.0, INF))


def _num_groups(channels: int) -> int:
    """FCOS's 32 groups at 256 channels, i.e. at least 8 channels per group: on the 1x1 maps of P6/P7 a group
    of one channel would normalise its single value to zero."""
    return max(g for g in range(1, 33) if channels % g == 0 and channels // g >= min(8, channels))


def _tower(channels: int, num_convs: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for _ in range(num_convs):
        layers += [nn.Conv2d(channels, channels, 3, padding=1), nn.GroupNorm(_num_groups(channels), channels), nn.ReLU(inplace=True)]
    return nn.Sequential(*layers)


class FCOSHead(nn.Module):
    """Shared classification and box towers over all levels, with a learnable scale per level."""

    def __init__(self, in_channels: int, num_classes: int, strides: Sequence[int], num_convs: int = 4,
                 prior_prob: float = 0.01) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.strides = list(strides)
        self.cls_tower = _tower(in_channels, num_convs)
        self.box_tower = _tower(in_channels, num_convs)
        self.cls_logits = nn.Conv2d(in_channels, num_classes, 3, padding=1)
        self.box_pred = nn.Conv2d(in_channels, 4, 3, padding=1)
        self.centerness = nn.Conv2d(in_channels, 1, 3, padding=1)
        self.scales = nn.Parameter(torch.ones(len(self.strides)))
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.normal_(module.weight, std=0.01)
                nn.init.zeros_(module.bias)
        # Start every location at "background with probability 1 - prior_prob" so the focal loss is stable.
        nn.init.constant_(self.cls_logits.bias, -math.log((1 - prior_prob) / prior_prob))

    def forward(self, features: Sequence[Tensor]) -> dict[str, Tensor]:
        """Per-location predictions flattened over levels: cls (B, P, C), ltrb in pixels (B, P, 4), ctr (B, P)."""
        cls, box, ctr = [], [], []
        for level, (x, stride) in enumerate(zip(features, self.strides)):
            c, b = self.cls_tower(x), self.box_tower(x)
            cls.append(self.cls_logits(c).flatten(2).transpose(1, 2))
            ltrb = F.relu(self.scales[level] * self.box_pred(b)) * stride
            box.append(ltrb.flatten(2).transpose(1, 2))
            ctr.append(self.centerness(b).flatten(1))
        return {"cls": torch.cat(cls, 1), "ltrb": torch.cat(box, 1), "ctr": torch.cat(ctr, 1)}


def make_points(feature_sizes: Sequence[tuple[int, int]], strides: Sequence[int],
                regression_ranges: Sequence[tuple[float, float]], device: torch.device) -> dict[str, Tensor]:
    """Centres of every feature location in input pixels, with the stride and regression range of its level."""
    points, point_strides, ranges = [], [], []
    for (h, w), stride, (lo, hi) in zip(feature_sizes, strides, regression_ranges):
        ys = (torch.arange(h, device=device, dtype=torch.float32) + 0.5) * stride
        xs = (torch.arange(w, device=device, dtype=torch.float32) + 0.5) * stride
        yy, xx = torch.meshgrid(ys, xs, indexing="ij")
        points.append(torch.stack([xx.flatten(), yy.flatten()], dim=1))
        point_strides.append(torch.full((h * w,), float(stride), device=device))
        ranges.append(torch.tensor([lo, hi], device=device).expand(h * w, 2))
    return {"xy": torch.cat(points), "stride": torch.cat(point_strides), "range": torch.cat(ranges)}


def distances_to_boxes(xy: Tensor, ltrb: Tensor) -> Tensor:
    return torch.cat([xy - ltrb[..., :2], xy + ltrb[..., 2:]], dim=-1)


@torch.no_grad()
def assign_targets(points: dict[str, Tensor], boxes: Tensor, labels: Tensor,
                   center_sampling_radius: float = 1.5) -> tuple[Tensor, Tensor]:
    """For one image: the matched ground-truth index per location (-1 for background) and its ltrb target."""
    num_points = points["xy"].shape[0]
    if boxes.numel() == 0:
        return torch.full((num_points,), -1, dtype=torch.long, device=boxes.device), boxes.new_zeros(num_points, 4)
    x, y = points["xy"][:, 0:1], points["xy"][:, 1:2]
    x1, y1, x2, y2 = boxes.T[:, None, :].unbind(0)
    ltrb = torch.stack([x - x1, y - y1, x2 - x, y2 - y], dim=-1)  # (P, G, 4)
    candidate = ltrb.min(-1).values > 0
    if center_sampling_radius > 0:
        radius = points["stride"][:, None] * center_sampling_radius
        cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
        near_centre = (
            (x > torch.maximum(cx - radius, x1)) & (x < torch.minimum(cx + radius, x2))
            & (y > torch.maximum(cy - radius, y1)) & (y < torch.minimum(cy + radius, y2))
        )
        candidate &= near_centre
    max_dist = ltrb.max(-1).values
    lo, hi = points["range"][:, 0:1], points["range"][:, 1:2]
    candidate &= (max_dist >= lo) & (max_dist <= hi)
    area = ((x2 - x1) * (y2 - y1)).expand(num_points, -1).clone()
    area[~candidate] = INF
    min_area, matched = area.min(dim=1)
    matched[min_area == INF] = -1
    target_ltrb = ltrb[torch.arange(num_points, device=boxes.device), matched.clamp_min(0)]
    return matched, target_ltrb


def fcos_loss(outputs: dict[str, Tensor], points: dict[str, Tensor], targets: Sequence[dict[str, Tensor]],
              num_classes: int, focal_alpha: float = 0.25, focal_gamma: float = 2.0,
              center_sampling_radius: float = 1.5) -> dict[str, Tensor]:
    """Focal classification + centerness-weighted GIoU + centerness BCE, each normalised by the positives."""
    cls_targets, box_targets, pos_masks = [], [], []
    for target in targets:
        matched, ltrb = assign_targets(points, target["boxes"], target["labels"], center_sampling_radius)
        positive = matched >= 0
        one_hot = torch.zeros(matched.shape[0], num_classes, device=matched.device)
        one_hot[positive, target["labels"][matched[positive]]] = 1.0
        cls_targets.append(one_hot)
        box_targets.append(ltrb)
        pos_masks.append(positive)
    cls_targets, box_targets, positive = torch.stack(cls_targets), torch.stack(box_targets), torch.stack(pos_masks)
    num_pos = positive.sum().clamp_min(1).float()

    loss_cls = sigmoid_focal_loss(outputs["cls"], cls_targets, focal_alpha, focal_gamma, reduction="sum") / num_pos
    xy = points["xy"].expand_as(outputs["ltrb"][..., :2])[positive]
    pred_boxes = distances_to_boxes(xy, outputs["ltrb"][positive])
    true_boxes = distances_to_boxes(xy, box_targets[positive])
    ctr_targets = centerness_target(box_targets[positive])
    if positive.any():
        giou = generalized_box_iou_loss(pred_boxes, true_boxes, reduction="none")
        loss_box = (giou * ctr_targets).sum() / ctr_targets.sum().clamp_min(1e-6)
    else:  # keep the graph connected so every parameter gets a (zero) gradient
        loss_box = outputs["ltrb"].sum() * 0.0
    loss_ctr = F.binary_cross_entropy_with_logits(outputs["ctr"][positive], ctr_targets, reduction="sum") / num_pos
    return {"loss_cls": loss_cls, "loss_box": loss_box, "loss_ctr": loss_ctr, "num_pos": positive.sum()}


@torch.no_grad()
def decode(outputs: dict[str, Tensor], points: dict[str, Tensor], level_sizes: Sequence[int],
           image_size: tuple[int, int], score_thresh: float = 0.05, nms_thresh: float = 0.6,
           max_detections: int = 100, pre_nms_top_n: int = 1000) -> list[dict[str, Tensor]]:
    """Scores ``sqrt(sigmoid(cls) * sigmoid(ctr))``, top-k per level, boxes clipped to the image, class-wise NMS."""
    results = []
    num_classes = outputs["cls"].shape[-1]
    for b in range(outputs["cls"].shape[0]):
        scores_all = (outputs["cls"][b].sigmoid() * outputs["ctr"][b].sigmoid()[:, None]).sqrt()
        boxes, scores, labels = [], [], []
        for level_scores, level_ltrb, level_xy in zip(
            scores_all.split(level_sizes), outputs["ltrb"][b].split(level_sizes), points["xy"].split(level_sizes)
        ):
            flat = level_scores.flatten()
            keep = torch.nonzero(flat > score_thresh).squeeze(1)
            if keep.numel() > pre_nms_top_n:
                keep = keep[flat[keep].topk(pre_nms_top_n).indices]
            point_idx, label = keep // num_classes, keep % num_classes
            boxes.append(distances_to_boxes(level_xy[point_idx], level_ltrb[point_idx]))
            scores.append(flat[keep])
            labels.append(label)
        boxes = clip_boxes_to_image(torch.cat(boxes), image_size)
        scores, labels = torch.cat(scores), torch.cat(labels)
        keep = batched_nms(boxes, scores, labels, nms_thresh)[:max_detections]
        results.append({"boxes": boxes[keep], "scores": scores[keep], "labels": labels[keep]})
    return results


__all__ = ["FCOSHead", "make_points", "assign_targets", "fcos_loss", "decode", "distances_to_boxes",
           "DEFAULT_REGRESSION_RANGES"]
