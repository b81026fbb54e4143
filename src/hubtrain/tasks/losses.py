"""Losses for dense prediction: segmentation (cross-entropy, dice, focal) and FCOS detection targets.

Detection reuses torchvision's reference implementations (`sigmoid_focal_loss`, `generalized_box_iou_loss`)
rather than re-deriving them; what torchvision lacks (multi-class softmax focal loss and dice with an ignore
label, FCOS centerness targets) is written here and unit-tested against hand-computed values.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

SEGMENTATION_LOSSES = ("ce", "dice", "focal", "combined")


def _valid_one_hot(logits: Tensor, target: Tensor, ignore_index: int | None) -> tuple[Tensor, Tensor]:
    """One-hot target (B, C, H, W) and a validity mask (B, 1, H, W); ignored pixels are zero in both."""
    num_classes = logits.shape[1]
    valid = torch.ones_like(target, dtype=torch.bool) if ignore_index is None else target != ignore_index
    safe = torch.where(valid, target, torch.zeros_like(target))
    one_hot = F.one_hot(safe, num_classes).permute(0, 3, 1, 2).to(logits.dtype)
    valid = valid.unsqueeze(1).to(logits.dtype)
    return one_hot * valid, valid


def dice_loss(
    logits: Tensor, target: Tensor, ignore_index: int | None = 255, smooth: float = 1.0, eps: float = 1e-7
) -> Tensor:
    """Soft multi-class dice loss, ``1 - mean_c (2|P_c T_c| + s) / (|P_c| + |T_c| + s)``.

    Probabilities come from a softmax over classes; ignored pixels count neither in P nor in T, so a region
    labelled ``ignore_index`` has no effect on the value or the gradient.
    """
    probs = logits.softmax(dim=1)
    one_hot, valid = _valid_one_hot(logits, target, ignore_index)
    probs = probs * valid
    dims = (0, 2, 3)
    intersection = (probs * one_hot).sum(dims)
    cardinality = probs.sum(dims) + one_hot.sum(dims)
    dice = (2 * intersection + smooth) / (cardinality + smooth).clamp_min(eps)
    return 1 - dice.mean()


def softmax_focal_loss(
    logits: Tensor,
    target: Tensor,
    gamma: float = 2.0,
    alpha: Tensor | None = None,
    ignore_index: int | None = 255,
) -> Tensor:
    """Multi-class focal loss ``-alpha_t (1 - p_t)^gamma log p_t``, averaged over non-ignored pixels.

    With ``gamma=0`` and no ``alpha`` this is exactly cross-entropy; ``alpha`` (one weight per class) plays the
    role of ``class_weights`` and is normalised the way ``F.cross_entropy(weight=...)`` normalises.
    """
    ignore = -100 if ignore_index is None else ignore_index
    log_pt_all = -F.cross_entropy(logits, target, reduction="none", ignore_index=ignore)
    valid = target != ignore
    log_pt = log_pt_all[valid]
    pt = log_pt.exp()
    loss = -((1 - pt) ** gamma) * log_pt
    if alpha is None:
        return loss.sum() / valid.sum().clamp_min(1)
    weights = alpha.to(logits.dtype)[target[valid]]
    return (weights * loss).sum() / weights.sum().clamp_min(1e-12)


class SegmentationLoss(nn.Module):
    """One of ``ce | dice | focal | combined`` (``ce_weight * CE + dice_weight * dice``), all honouring ignore_index."""

    def __init__(
        self,
        loss_type: str = "ce",
        ignore_index: int | None = 255,
        class_weights: Sequence[float] | None = None,
        focal_gamma: float = 2.0,
        ce_weight: float = 1.0,
        dice_weight: float = 1.0,
    ) -> None:
        super().__init__()
        if loss_type not in SEGMENTATION_LOSSES:
            raise ValueError(f"loss_type={loss_type!r} is not supported; use one of {SEGMENTATION_LOSSES}.")
        self.loss_type = loss_type
        self.ignore_index = ignore_index
        self.focal_gamma = focal_gamma
        self.ce_weight = ce_weight
        self.dice_weight = dice_weight
        weight = None if class_weights is None else torch.as_tensor(list(class_weights), dtype=torch.float32)
        self.register_buffer("class_weights", weight, persistent=False)

    def _ce(self, logits: Tensor, target: Tensor) -> Tensor:
        ignore = -100 if self.ignore_index is None else self.ignore_index
        return F.cross_entropy(logits, target, weight=self.class_weights, ignore_index=ignore)

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        if logits.shape[-2:] != target.shape[-2:]:
            raise ValueError(
                f"logits {tuple(logits.shape[-2:])} and mask {tuple(target.shape[-2:])} differ in size; "
                "upsample the logits to the mask's resolution before the loss."
            )
        if self.loss_type == "ce":
            return self._ce(logits, target)
        if self.loss_type == "dice":
            return dice_loss(logits, target, self.ignore_index)
        if self.loss_type == "focal":
            return softmax_focal_loss(logits, target, self.focal_gamma, self.class_weights, self.ignore_index)
        return self.ce_weight * self._ce(logits, target) + self.dice_weight * dice_loss(
            logits, target, self.ignore_index
        )


def centerness_target(ltrb: Tensor) -> Tensor:
    """FCOS centerness ``sqrt(min(l,r)/max(l,r) * min(t,b)/max(t,b))`` of distances (..., 4) to the box sides."""
    left_right = ltrb[..., [0, 2]]
    top_bottom = ltrb[..., [1, 3]]
    ratio = (left_right.min(-1).values / left_right.max(-1).values) * (
        top_bottom.min(-1).values / top_bottom.max(-1).values
    )
    return ratio.sqrt()
