"""Greedy (k-center) coreset selection, as in PatchCore (Roth et al. 2022)."""

from __future__ import annotations

import torch


def greedy_coreset(features: torch.Tensor, count: int, projection_dim: int | None = 128,
                   generator: torch.Generator | None = None) -> torch.Tensor:
    """Indices of `count` rows of `features` (N, D): row 0, then each the farthest from those already chosen.

    Distances are measured after a random Gaussian projection to `projection_dim` dimensions
    (Johnson–Lindenstrauss; None or ≥ D keeps the full space). Deterministic given the generator.

    Exact, but most rows are skipped at each step (the triangle inequality): a row whose nearest chosen
    centre a lies at distance r cannot come closer to the new centre c when |a − c| ≥ 2r. So each
    step computes the distances of the new centre to the earlier centres (count × D) and reads only
    the rows that may move, instead of all N × D values — the plain loop is memory-bound on N × D.
    Measured on knn `cpu` banks (128-d projections, 2 % kept): object patches (bottle, 192 k rows) leave
    2 % of the rows to read per step, 3.6× faster; uniform texture (magnetic_tile) about half, so there
    it reads every row as the plain loop does, testing again every 16 steps.
    """
    n = features.shape[0]
    count = min(count, n)
    x = features.float()
    if projection_dim is not None and projection_dim < x.shape[1]:
        proj = torch.randn(x.shape[1], projection_dim, generator=generator) / projection_dim**0.5
        x = x @ proj.to(x.device)  # (N, D) -> (N, projection_dim)
    x = x.contiguous()
    sq_norms = x.pow(2).sum(dim=1)  # (N,)
    chosen = torch.empty(count, dtype=torch.long, device=x.device)
    chosen[0] = 0
    centres = x.new_empty(count, x.shape[1])
    centres[0] = x[0]
    # ‖x − c‖² = ‖x‖² − 2·x·c + ‖c‖²: one matrix-vector product instead of an (N, D) temporary
    min_dist = (sq_norms - 2 * (x @ x[0]) + sq_norms[0]).clamp_min(0)  # squared distance to the nearest centre
    nearest = torch.zeros(n, dtype=torch.long, device=x.device)  # which centre (position in `chosen`)
    # A row may move when |a − c|² < 4 r²; the margin keeps rows whose test is a rounding error from the bound.
    margin = 4.0 * (1 + 1e-4)
    bound = margin * min_dist + 1e-12
    dense = False  # most rows may move (uniform texture): read them all, test again every 16 steps
    for i in range(1, count):
        nxt = int(torch.argmax(min_dist))
        chosen[i] = nxt
        c = x[nxt]
        centres[i] = c
        if not dense or i % 16 == 0:
            if dense:
                bound = margin * min_dist + 1e-12  # not kept up while reading all rows
            centre_sq = (sq_norms[chosen[:i]] - 2 * (centres[:i] @ c) + sq_norms[nxt]).clamp_min(0)  # |a − c|² per centre
            rows = torch.nonzero(centre_sq[nearest] <= bound).squeeze(1)
            dense = rows.numel() > n // 8  # gathering that many rows would cost more than reading all
        if dense:
            dist = (sq_norms - 2 * (x @ c) + sq_norms[nxt]).clamp_min(0)
            nearest = torch.where(dist < min_dist, i, nearest)
            min_dist = torch.minimum(min_dist, dist)
            continue
        dist = (sq_norms[rows] - 2 * (x.index_select(0, rows) @ c) + sq_norms[nxt]).clamp_min(0)
        closer = dist < min_dist[rows]
        moved = rows[closer]
        min_dist[moved] = dist[closer]
        bound[moved] = margin * dist[closer] + 1e-12
        nearest[moved] = i
    return chosen.cpu()
