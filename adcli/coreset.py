"""Greedy (k-center) coreset selection, as in PatchCore (Roth et al. 2022)."""

from __future__ import annotations

import torch


def greedy_coreset(features: torch.Tensor, count: int, projection_dim: int | None = 128,
                   generator: torch.Generator | None = None) -> torch.Tensor:
    """Indices of `count` rows of `features` (N, D): row 0, then each the farthest from those already chosen.

    Distances are measured after a random Gaussian projection to `projection_dim` dimensions
    (Johnson–Lindenstrauss; None or ≥ D keeps the full space). Deterministic given the generator.
    """
    n = features.shape[0]
    count = min(count, n)
    x = features.float()
    if projection_dim is not None and projection_dim < x.shape[1]:
        proj = torch.randn(x.shape[1], projection_dim, generator=generator) / projection_dim**0.5
        x = x @ proj.to(x.device)  # (N, D) -> (N, projection_dim)
    chosen = torch.empty(count, dtype=torch.long)
    chosen[0] = 0
    sq_norms = x.pow(2).sum(dim=1)  # (N,)

    def sq_dist_to(i: int) -> torch.Tensor:
        # ‖x − c‖² = ‖x‖² − 2·x·c + ‖c‖²: one matrix-vector product instead of an (N, D) temporary
        return (sq_norms - 2 * (x @ x[i]) + sq_norms[i]).clamp_min(0)

    min_dist = sq_dist_to(0)  # squared distance to the nearest chosen row
    for i in range(1, count):
        nxt = int(torch.argmax(min_dist))
        chosen[i] = nxt
        min_dist = torch.minimum(min_dist, sq_dist_to(nxt))
    return chosen
