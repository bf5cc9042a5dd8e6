"""Small building blocks shared by the networks."""

from __future__ import annotations

import math

import torch
from torch import nn


def group_norm(channels: int, max_groups: int = 32, min_per_group: int = 4) -> nn.GroupNorm:
    """GroupNorm32 where the width allows it. Narrow CPU profiles use fewer groups so that each keeps
    at least `min_per_group` channels: with one channel a group, GroupNorm is InstanceNorm and would
    erase any per-channel signal added before it."""
    groups = max(g for g in range(1, max_groups + 1) if channels % g == 0 and (channels // g >= min_per_group or g == 1))
    return nn.GroupNorm(groups, channels)


def zero_module(module: nn.Module) -> nn.Module:
    """Zero a layer's parameters so a residual branch starts as the identity."""
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of (possibly fractional) timesteps. t (B,) -> (B, dim)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb
