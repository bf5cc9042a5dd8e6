"""Segmentation UNet of DiffusionAD: (image ‖ reconstruction) -> per-pixel anomaly probability.

Encoder of conv3×3-BN-ReLU pairs with max-pooling (widths 64-128-256-512-512-512 in the paper),
decoder with bilinear upsampling and skip connections, sigmoid output.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import nn


@dataclasses.dataclass(frozen=True)
class SegNetConfig:
    widths: tuple[int, ...] = (64, 128, 256, 512, 512, 512)


def _double_conv(in_ch: int, out_ch: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_ch, out_ch, 3, padding=1, bias=False), nn.BatchNorm2d(out_ch), nn.ReLU(inplace=True),
        nn.Conv2d(out_ch, out_ch, 3, padding=1, bias=False), nn.BatchNorm2d(out_ch), nn.ReLU(inplace=True),
    )


class SegNet(nn.Module):
    """x (B, in_channels, H, W) -> logits (B, 1, H, W); H, W divisible by 2^(len(widths)-1)."""

    def __init__(self, config: SegNetConfig, in_channels: int = 6):
        super().__init__()
        widths = config.widths
        self.encoders = nn.ModuleList()
        prev = in_channels
        for w in widths:
            self.encoders.append(_double_conv(prev, w))
            prev = w
        self.decoders = nn.ModuleList()
        for skip_w in reversed(widths[:-1]):
            self.decoders.append(_double_conv(prev + skip_w, skip_w))
            prev = skip_w
        self.head = nn.Conv2d(prev, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for i, enc in enumerate(self.encoders):
            x = enc(x if i == 0 else F.max_pool2d(x, 2))
            skips.append(x)
        skips.pop()
        for dec in self.decoders:
            skip = skips.pop()
            x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            x = dec(torch.cat([x, skip], dim=1))
        return self.head(x)
