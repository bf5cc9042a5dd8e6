"""Greedy (k-center) coreset selection, as in PatchCore (Roth et al. 2022)."""

from __future__ import annotations

import torch

BLOCK_ROWS = 1024  # rows per block: 1024 × 128 float32 = 512 KiB, held in cache while several centres meet it
CENTRES_PER_PRODUCT = 2048  # pending centres per matrix product, to bound its (rows, centres) temporary


def greedy_coreset(features: torch.Tensor, count: int, projection_dim: int | None = 128,
                   generator: torch.Generator | None = None) -> torch.Tensor:
    """Indices of `count` rows of `features` (N, D): row 0, then each the farthest from those already chosen.

    Distances are measured after a random Gaussian projection to `projection_dim` dimensions
    (Johnson–Lindenstrauss; None or ≥ D keeps the full space). Deterministic given the generator.

    Exact, but lazy. The plain loop reads all N × D values once per chosen centre, a matrix-vector
    product that waits on memory. Here the rows are cut into blocks, each with an upper bound on its
    rows' distance to the nearest centre (distances only shrink as centres are added). The farthest
    row lies in the block with the largest bound once that block is brought up to date, so each step
    updates only blocks whose bound leads, and a block that waited meets all the centres it missed in
    one matrix product. Measured on the knn `cpu` banks (128-d, 2 % kept, 2-core CPU whose speed
    drifts): magnetic_tile (369 k rows) 18–35 s instead of 233–326 s, bottle (193 k) 8–9 s instead of
    15 s; the same rows chosen.
    """
    n = features.shape[0]
    count = min(count, n)
    x = features.float()
    if projection_dim is not None and projection_dim < x.shape[1]:
        proj = torch.randn(x.shape[1], projection_dim, generator=generator) / projection_dim**0.5
        x = x @ proj.to(x.device)  # (N, D) -> (N, projection_dim)
    x = x.contiguous()
    sq_norms = x.pow(2).sum(dim=1)  # (N,)
    chosen = torch.empty(count, dtype=torch.long)
    centres = x.new_empty(count, x.shape[1])
    centre_sq = x.new_empty(count)
    chosen[0], centres[0], centre_sq[0] = 0, x[0], sq_norms[0]

    starts = list(range(0, n, BLOCK_ROWS))
    min_dist = torch.full((n,), float("inf"), device=x.device)  # squared distance to the nearest centre met so far
    bound = torch.full((len(starts),), float("inf"), device=x.device)  # per block: the largest of its min_dist
    met = [0] * len(starts)  # per block: how many centres (chosen[:met]) its min_dist has met
    for i in range(1, count):
        while True:
            block = int(torch.argmax(bound))  # the first of equal bounds: ties go to the lowest row, as argmax over all rows
            if met[block] == i:  # up to date and leading every bound: it holds the farthest row
                break
            rows = slice(starts[block], min(starts[block] + BLOCK_ROWS, n))
            nearest = min_dist[rows]
            for first in range(met[block], i, CENTRES_PER_PRODUCT):
                new = slice(first, min(first + CENTRES_PER_PRODUCT, i))
                # ‖x − c‖² = ‖x‖² + (‖c‖² − 2·x·c): one fused product for all the centres this block
                # missed (3× faster than the same sum written out), ‖x‖² added after the minimum
                dist = torch.addmm(centre_sq[None, new], x[rows], centres[new].T, alpha=-2).amin(dim=1)
                nearest = torch.minimum(nearest, (dist + sq_norms[rows]).clamp_min(0))
            min_dist[rows] = nearest
            bound[block] = nearest.max()
            met[block] = i
        row = starts[block] + int(torch.argmax(min_dist[starts[block]:starts[block] + BLOCK_ROWS]))
        chosen[i], centres[i], centre_sq[i] = row, x[row], sq_norms[row]
    return chosen
