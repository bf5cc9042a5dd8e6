"""Pure functions that turn anomaly maps into scores."""

from __future__ import annotations

import torch


def top_k_mean(anomaly_map: torch.Tensor, k: int) -> torch.Tensor:
    """Image score = mean of the k largest pixels. anomaly_map (B, H, W) -> (B,)."""
    flat = anomaly_map.flatten(1)  # (B, H, W) -> (B, H*W)
    k = min(k, flat.shape[1])
    return flat.topk(k, dim=1).values.mean(dim=1)
