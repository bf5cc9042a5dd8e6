"""TimeNet's timestep-perceptive network (TPN): a per-pixel timestep map and features that steer a
frozen denoiser.

The TPN is a UNet like the denoiser without the time input, conditioned on class. From the noisy
image X_t it predicts
  (a) T, a per-pixel timestep in (0, 1) at input size, which replaces t in the one-step update
      X̂ = X_t + (1 − T) ⊙ v(X_t, t, c); and
  (b) per-scale features, each through an adapter (GroupNorm → SiLU → 1×1 conv) and adaptive average
      pooling to the denoiser's feature-map size at that scale.

Where the features enter (the paper leaves it open; its conclusion says they steer the denoiser's
intermediate time-embedding features): each adapter outputs the denoiser's embedding width, and the
result is added to the denoiser's time + class embedding for every residual block at that feature-map
size (UNet `emb_maps`). The embedding thus becomes a per-pixel one, which is what a per-pixel
timestep needs: a region the TPN sees as anomalous can be denoised as if it were noisier. The adapters'
convs start at zero and T starts at a constant, so an untrained TPN leaves the denoiser's output
unchanged (ControlNet's zero-init idea).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from adcli.model.nets.blocks import group_norm, zero_module
from adcli.model.nets.unet import UNet, UNetConfig


class Adapter(nn.Module):
    """GroupNorm → SiLU → 1×1 conv (zero-initialised), then adaptive average pooling to `side`."""

    def __init__(self, in_channels: int, out_channels: int, side: int):
        super().__init__()
        self.side = side
        self.norm = group_norm(in_channels)
        self.conv = zero_module(nn.Conv2d(in_channels, out_channels, 1))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return nn.functional.adaptive_avg_pool2d(self.conv(nn.functional.silu(self.norm(features))), self.side)


def denoiser_sides(image_size: int, levels: int) -> list[int]:
    """Feature-map sides of a UNet with `levels` levels at `image_size`: [256, 128, ...]."""
    return [image_size // 2**i for i in range(levels)]


class TimestepPerceptiveNet(nn.Module):
    """x_t (B, 3, H, W) in [-1, 1], y (B,) -> (T (B, 1, H, W) in (0, 1), {side: (B, emb_dim, side, side)})."""

    def __init__(self, config: UNetConfig, image_size: int, num_classes: int, denoiser_emb_dim: int,
                 denoiser_levels: int, initial_t: float):
        super().__init__()
        if not 0 < initial_t < 1:
            raise ValueError("the TPN's initial timestep must be in (0, 1)")
        self.body = UNet(config, image_size, in_channels=3, out_channels=1, num_classes=num_classes, time_input=False)
        # T = sigmoid(out + bias): the zero-initialised output conv plus a bias at logit(initial_t) makes
        # an untrained TPN predict initial_t everywhere.
        self.t_logit_bias = nn.Parameter(torch.tensor(math.log(initial_t / (1 - initial_t))))
        tpn_sides = denoiser_sides(image_size, len(config.channel_mults))
        tpn_channels = {side: mult * config.base_channels for side, mult in zip(tpn_sides, config.channel_mults)}
        # Denoiser side -> the TPN side it is fed from: the nearest at or above it (pooling only shrinks).
        self.sources = {side: min((s for s in tpn_sides if s >= side), default=min(tpn_sides))
                        for side in denoiser_sides(image_size, denoiser_levels)}
        self.adapters = nn.ModuleDict({str(side): Adapter(tpn_channels[source], denoiser_emb_dim, side)
                                       for side, source in self.sources.items()})

    def forward(self, x_t: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
        out, features = self.body(x_t, None, y, return_features=True)
        t_map = torch.sigmoid(out + self.t_logit_bias)
        emb_maps = {side: self.adapters[str(side)](features[source]) for side, source in self.sources.items()}
        return t_map, emb_maps
