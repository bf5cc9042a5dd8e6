"""What every method shares: the batch it trains on and the output it predicts."""

from __future__ import annotations

import dataclasses

import torch


@dataclasses.dataclass
class TrainBatch:
    """One training batch. The first `num_normal` rows are normal; the rest carry synthetic anomalies."""

    images: torch.Tensor  # (B, 3, H, W) in [0, 1]: the network input (normal or synthetic anomaly)
    masks: torch.Tensor  # (B, 1, H, W) in {0, 1}: synthetic anomaly masks (zeros for normal rows)
    category_ids: torch.Tensor  # (B,) int64
    is_anomaly: torch.Tensor  # (B,) bool


@dataclasses.dataclass
class AnomalyOutput:
    """The one output type of every method."""

    anomaly_map: torch.Tensor  # (B, H, W) at the model's resolution; larger = more anomalous
    score: torch.Tensor  # (B,) image-level score
    reconstruction: torch.Tensor | None = None  # (B, 3, H, W) in [0, 1], where the method has one
