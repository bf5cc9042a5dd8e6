"""What every method shares: the batch it trains on and the output it predicts."""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import torch


@dataclasses.dataclass
class TrainBatch:
    """One training batch. The first `num_normal` rows are normal; the rest carry synthetic anomalies."""

    images: torch.Tensor  # (B, 3, H, W) in [0, 1]: the network input (normal or synthetic anomaly)
    masks: torch.Tensor  # (B, 1, H, W) in {0, 1}: synthetic anomaly masks (zeros for normal rows)
    category_ids: torch.Tensor  # (B,) int64
    is_anomaly: torch.Tensor  # (B,) bool
    originals: torch.Tensor  # (B, 3, H, W) in [0, 1]: the images before synthesis (= images for normal rows)


@dataclasses.dataclass
class AnomalyOutput:
    """The one output type of every method."""

    anomaly_map: torch.Tensor  # (B, H, W) at the model's resolution; larger = more anomalous
    score: torch.Tensor  # (B,) image-level score
    reconstruction: torch.Tensor | None = None  # (B, 3, H, W) in [0, 1], where the method has one


@dataclasses.dataclass
class Stage:
    """One stage of a multi-stage method (TimeNet: flow, reflow rounds, TPN). Each stage has its own
    optimizer, data and epochs; when it ends, the weights it trained are kept in RUN/stages/NAME.safetensors."""

    name: str
    epochs: int
    batch_size: int
    param_groups: Callable[[int], tuple[list[dict], list]]  # total steps -> (optimizer groups, lr factor per group)
    losses: Callable[[Any, torch.Generator], dict[str, torch.Tensor]]  # (batch, generator) -> {"loss": ..., ...}
    keeps: tuple[str, ...]  # state-dict key prefixes this stage trains: its output
    settings: dict  # the recipe values the stage depends on (with the previous stages: its fingerprint)
    synthetic: bool = False  # half of each batch of training images gets a synthetic anomaly
    # (training images, device, checkpoint folder, console) -> the stage's data: len() and
    # batch(indices, rng, textures, synth). None = the training images themselves.
    make_data: Callable | None = None
