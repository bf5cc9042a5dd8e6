"""Segmentation UNet of DiffusionAD: (image ‖ reconstruction) -> per-pixel anomaly probability.

Encoder of conv3×3-BN-ReLU pairs with max-pooling (widths 64-128-256-512-512-512 in the paper),
decoder with bilinear upsampling and skip connections, sigmoid output (applied by the loss/caller).

With `up_conv` (the authors' models/Seg_subnetwork.py, DecoderSegmentation) each upsampling is followed
by a conv3×3-BN-ReLU that narrows to the next shallower encoder width before the concatenation, the
level then ends at that narrower width, and the head is a 3×3 conv (`head_kernel`). Without it (the
small profiles) the upsampled features are concatenated as they are and each level ends at its skip's
width; head 1×1.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import nn


@dataclasses.dataclass(frozen=True)
class SegNetConfig:
    widths: tuple[int, ...] = (64, 128, 256, 512, 512, 512)
    # Defaults are the decoder of bundles made before these keys existed; recipes/diffusionad.yaml sets
    # the authors' (up_conv true, head_kernel 3) as the paper settings.
    up_conv: bool = False  # conv3×3-BN-ReLU after each upsampling (authors' decoder)
    head_kernel: int = 1  # 3 = the authors' final conv; 1 = a per-pixel linear head

    def __post_init__(self):
        if self.head_kernel not in (1, 3):
            raise ValueError("segnet.head_kernel must be 1 or 3")


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
        self.up_convs = nn.ModuleList()
        self.decoders = nn.ModuleList()
        for level in reversed(range(len(widths) - 1)):
            skip_w = widths[level]
            if config.up_conv:  # narrows to the next shallower width (the shallowest keeps its own)
                out_w = widths[max(level - 1, 0)]
                self.up_convs.append(nn.Sequential(nn.Conv2d(prev, out_w, 3, padding=1, bias=False),
                                                   nn.BatchNorm2d(out_w), nn.ReLU(inplace=True)))
                self.decoders.append(_double_conv(out_w + skip_w, out_w))
                prev = out_w
            else:
                self.up_convs.append(nn.Identity())
                self.decoders.append(_double_conv(prev + skip_w, skip_w))
                prev = skip_w
        self.head = nn.Conv2d(prev, 1, config.head_kernel, padding=config.head_kernel // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for i, enc in enumerate(self.encoders):
            x = enc(x if i == 0 else F.max_pool2d(x, 2))
            skips.append(x)
        skips.pop()
        for up_conv, dec in zip(self.up_convs, self.decoders):
            skip = skips.pop()
            x = up_conv(F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False))
            x = dec(torch.cat([x, skip], dim=1))
        return self.head(x)
