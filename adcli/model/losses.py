"""Segmentation losses on probabilities (DRAEM / DiffusionAD)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def binary_focal_loss(logits: torch.Tensor, target: torch.Tensor, alpha: float = 0.5, gamma: float = 4.0) -> torch.Tensor:
    """Mean of −α_t·(1 − p_t)^γ·log p_t (Lin et al. 2017). logits, target (B, 1, H, W); target in {0, 1}."""
    log_p = F.logsigmoid(logits)
    log_1mp = F.logsigmoid(-logits)
    log_pt = target * log_p + (1 - target) * log_1mp
    pt = log_pt.exp()
    alpha_t = target * alpha + (1 - target) * (1 - alpha)
    return (-alpha_t * (1 - pt) ** gamma * log_pt).mean()


def smooth_l1_on_probabilities(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return F.smooth_l1_loss(torch.sigmoid(logits), target)
