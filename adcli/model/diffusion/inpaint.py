"""Grid-mask inpainting with a diffusion model (DRDC §4.2–4.3; RePaint, Lugmayr et al. 2022).

An image is cut into cells of `cell` × `cell` pixels; the cells are split at random into `sets`
disjoint sets of equal size (the last may hold the remainder). For set k the mask is 1 on known
pixels (every cell not in set k) and 0 on the cells to inpaint. Across the sets every cell is
inpainted exactly once, so Σ_k (1 − mask_k) = 1 everywhere.

Test-time conditioning (RePaint): before every reverse step, the known pixels of the state are
replaced by the real image noised to that step, x_t = √ᾱ_t·x + √(1 − ᾱ_t)·ε with one fixed ε; the
unknown pixels keep what the model made of them.
"""

from __future__ import annotations

import torch

from adcli.model.diffusion.schedules import NoiseSchedule


def grid_partition(height: int, width: int, cell: int, sets: int, generator: torch.Generator) -> torch.Tensor:
    """-> (sets, 1, H, W) float masks, 1 = known, 0 = to inpaint; each cell is 0 in exactly one set."""
    if cell < 1 or height % cell or width % cell:
        raise ValueError(f"grid cell {cell} must divide the image size {height}x{width}")
    rows, cols = height // cell, width // cell
    if not 1 <= sets <= rows * cols:
        raise ValueError(f"sets must be in [1, {rows * cols}] for {rows}x{cols} cells of {cell} px")
    order = torch.randperm(rows * cols, generator=generator)
    owner = torch.empty(rows * cols, dtype=torch.long)
    owner[order] = torch.arange(rows * cols) * sets // (rows * cols)  # equal shares in the permuted order
    owner = owner.reshape(rows, cols).repeat_interleave(cell, 0).repeat_interleave(cell, 1)
    return torch.stack([(owner != k).float() for k in range(sets)])[:, None]


def masked_condition(images: torch.Tensor, known: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """DRDC's model condition: the image with the cells to inpaint filled with Gaussian noise."""
    return images * known + noise * (1 - known)


def repaint_known(schedule: NoiseSchedule, x_t: torch.Tensor, images: torch.Tensor, known: torch.Tensor,
                  t: int, noise: torch.Tensor) -> torch.Tensor:
    """The state with its known pixels replaced by `images` noised to step t with `noise`."""
    noised = schedule.q_sample(images, torch.full((images.shape[0],), t, device=images.device, dtype=torch.long), noise)
    return noised * known + x_t * (1 - known)
