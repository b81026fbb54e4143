"""Segmentation heads: DeepLabV3+ (ASPP + low-level decoder) and FCN.

Both take the backbone's feature maps (finest first) and return logits at the head's own ``output_stride``;
the task upsamples them to the mask's full resolution, so losses and metrics never compare at a coarse scale.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def _conv_bn_relu(in_ch: int, out_ch: int, kernel: int = 3, dilation: int = 1) -> nn.Sequential:
    padding = 0 if kernel == 1 else dilation
    return nn.Sequential(
        nn.Conv2d(in_ch, out_ch, kernel, padding=padding, dilation=dilation, bias=False),
        nn.BatchNorm2d(out_ch),
        nn.ReLU(inplace=True),
    )


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling (Chen et al. 2018): a 1x1 branch, atrous 3x3 branches and image pooling.

    The pooling branch has no BatchNorm: its output is 1x1, so BatchNorm over it would fail for a batch of one.
    """

    def __init__(self, in_channels: int, out_channels: int = 256, rates: Sequence[int] = (6, 12, 18),
                 dropout: float = 0.1) -> None:
        super().__init__()
        self.branches = nn.ModuleList([_conv_bn_relu(in_channels, out_channels, 1)])
        self.branches.extend(_conv_bn_relu(in_channels, out_channels, 3, rate) for rate in rates)
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(in_channels, out_channels, 1), nn.ReLU(inplace=True))
        self.project = nn.Sequential(
            _conv_bn_relu(out_channels * (len(rates) + 2), out_channels, 1), nn.Dropout(dropout)
        )

    def forward(self, x: Tensor) -> Tensor:
        outs = [branch(x) for branch in self.branches]
        outs.append(self.pool(x).expand(-1, -1, *x.shape[-2:]))
        return self.project(torch.cat(outs, dim=1))


class DeepLabV3PlusHead(nn.Module):
    """DeepLabV3+ decoder: ASPP on the deepest features, fused with 1x1-reduced low-level (stride ~4) features.

    Atrous rates are (6, 12, 18) at high-level stride 16 and scale inversely with it (doubled at stride 8,
    halved at 32), which keeps their field of view fixed in input pixels.
    """

    def __init__(self, in_channels: Sequence[int], in_strides: Sequence[int], num_classes: int,
                 low_level_index: int, aspp_channels: int = 256, low_level_channels: int = 48,
                 decoder_channels: int = 256, dropout: float = 0.1) -> None:
        super().__init__()
        self.low_level_index = low_level_index
        high_stride = in_strides[-1]
        rates = tuple(max(1, round(r * 16 / high_stride)) for r in (6, 12, 18))
        self.aspp = ASPP(in_channels[-1], aspp_channels, rates, dropout)
        self.low_level = _conv_bn_relu(in_channels[low_level_index], low_level_channels, 1)
        self.decoder = nn.Sequential(
            _conv_bn_relu(aspp_channels + low_level_channels, decoder_channels, 3),
            _conv_bn_relu(decoder_channels, decoder_channels, 3),
        )
        self.classifier = nn.Conv2d(decoder_channels, num_classes, 1)
        self.output_stride = in_strides[low_level_index]
        self.atrous_rates = rates

    def forward(self, features: Sequence[Tensor]) -> Tensor:
        low = self.low_level(features[self.low_level_index])
        high = F.interpolate(self.aspp(features[-1]), size=low.shape[-2:], mode="bilinear", align_corners=False)
        return self.classifier(self.decoder(torch.cat([high, low], dim=1)))


class FCNHead(nn.Module):
    """FCN head (Long et al. 2015, torchvision's variant): 3x3 conv + BN + ReLU, dropout, 1x1 classifier."""

    def __init__(self, in_channels: Sequence[int], in_strides: Sequence[int], num_classes: int,
                 channels: int | None = None, dropout: float = 0.1) -> None:
        super().__init__()
        channels = channels or max(in_channels[-1] // 4, 16)
        self.block = nn.Sequential(_conv_bn_relu(in_channels[-1], channels, 3), nn.Dropout(dropout))
        self.classifier = nn.Conv2d(channels, num_classes, 1)
        self.output_stride = in_strides[-1]

    def forward(self, features: Sequence[Tensor]) -> Tensor:
        return self.classifier(self.block(features[-1]))
