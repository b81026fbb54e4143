"""Feature pyramid P3-P7 for FCOS, built on torchvision's reference FPN.

torchvision's `FeaturePyramidNetwork` with `LastLevelP6P7` is the implementation RetinaNet and FCOS use there:
lateral 1x1 convs, a nearest-neighbour top-down pathway, 3x3 output convs, then P6 and P7 by stride-2 convs
(from P5 when the channel counts agree, as in FCOS).
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Sequence

from torch import Tensor, nn
from torchvision.ops import FeaturePyramidNetwork
from torchvision.ops.feature_pyramid_network import LastLevelP6P7


class FPN(nn.Module):
    """Maps backbone features C3, C4, C5 (strides s, 2s, 4s) to P3-P7 with ``out_channels`` each."""

    def __init__(self, in_channels: Sequence[int], in_strides: Sequence[int], out_channels: int = 256) -> None:
        super().__init__()
        if len(in_channels) != 3:
            raise ValueError(f"FPN expects 3 input levels (C3, C4, C5), got {len(in_channels)}: {list(in_channels)}.")
        self.fpn = FeaturePyramidNetwork(list(in_channels), out_channels, extra_blocks=LastLevelP6P7(out_channels, out_channels))
        self.out_channels = out_channels
        base = in_strides[0]
        self.strides = [base * 2**i for i in range(5)]

    def forward(self, features: Sequence[Tensor]) -> list[Tensor]:
        named = OrderedDict((f"c{i + 3}", f) for i, f in enumerate(features))
        return list(self.fpn(named).values())
