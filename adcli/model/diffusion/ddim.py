"""DDIM sampling (Song et al., ICLR 2021) over any decreasing list of timesteps.

Notation (code name -> paper symbol), for one step from t to t' < t (t' = −1 means ᾱ = 1, the data):
    x_t       x_t
    eps       ε̂ = ε_θ(x_t, t)
    x0_hat    x̂_0 = (x_t − √(1 − ᾱ_t)·ε̂) / √ᾱ_t
    sigma     σ = η·√((1 − ᾱ_t') / (1 − ᾱ_t))·√(1 − ᾱ_t / ᾱ_t')
    x_prev    x_t' = √ᾱ_t'·x̂_0 + √(1 − ᾱ_t' − σ²)·ε̂ + σ·z          (eq. 12)
η = 0 is deterministic (the probability-flow ODE discretised); η = 1 is DDPM-like ancestral sampling.
The network is passed in; nothing here holds weights. `model(x, t, **kwargs)` returns ε̂ for
integer timesteps t (B,). Every step runs the whole batch through one call.
"""

from __future__ import annotations

from typing import Callable

import torch

from adcli.model.diffusion.schedules import NoiseSchedule


def ddim_timesteps(num_timesteps: int, steps: int, start: int | None = None) -> list[int]:
    """`steps` evenly spaced integer timesteps from `start` (default T − 1) down towards 0, decreasing."""
    start = num_timesteps - 1 if start is None else start
    if not 0 <= start < num_timesteps or not 1 <= steps <= start + 1:
        raise ValueError(f"need 0 <= start < {num_timesteps} and 1 <= steps <= start + 1 (start {start}, steps {steps})")
    stride = (start + 1) / steps
    return [int(round(start - i * stride)) for i in range(steps)]


def _alpha_bar(schedule: NoiseSchedule, t: int) -> float:
    return 1.0 if t < 0 else schedule.alpha_bar_values[t]


def ddim_step(schedule: NoiseSchedule, x_t: torch.Tensor, t: int, t_prev: int, eps: torch.Tensor, eta: float = 0.0,
              generator: torch.Generator | None = None, clip_x0: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """One DDIM step from t to t_prev (< t; −1 = the end). -> (x_{t_prev}, x̂_0)."""
    a_t, a_prev = _alpha_bar(schedule, t), _alpha_bar(schedule, t_prev)
    x0_hat = (x_t - (1 - a_t) ** 0.5 * eps) / a_t ** 0.5
    if clip_x0 is not None:
        x0_hat = x0_hat.clamp(-clip_x0, clip_x0)
    sigma = eta * ((1 - a_prev) / (1 - a_t)) ** 0.5 * (1 - a_t / a_prev) ** 0.5 if eta > 0 else 0.0
    x_prev = a_prev ** 0.5 * x0_hat + max(1 - a_prev - sigma ** 2, 0.0) ** 0.5 * eps
    if sigma > 0:
        x_prev = x_prev + sigma * torch.randn(x_t.shape, generator=generator, device=x_t.device, dtype=x_t.dtype)
    return x_prev, x0_hat


@torch.no_grad()
def ddim_sample(model, x_t: torch.Tensor, timesteps: list[int], schedule: NoiseSchedule, eta: float = 0.0,
                generator: torch.Generator | None = None, clip_x0: float | None = None,
                before_step: Callable[[int, int, torch.Tensor], torch.Tensor] | None = None,
                after_step: Callable[[int, int, torch.Tensor, torch.Tensor], None] | None = None,
                **model_kwargs) -> torch.Tensor:
    """Run DDIM from x_t (at timesteps[0]) through `timesteps` (strictly decreasing) to the data.

    before_step(i, t, x_t) -> x_t may replace the state before step i (RePaint: known regions set to the
    real image noised to t); after_step(i, t, x_prev, x0_hat) sees each step's prediction. -> x̂ at the end.
    """
    if not timesteps or any(b >= a for a, b in zip(timesteps, timesteps[1:])) or timesteps[-1] < 0 \
            or timesteps[0] >= schedule.num_timesteps:
        raise ValueError(f"timesteps must be strictly decreasing within [0, {schedule.num_timesteps}): {timesteps}")
    x = x_t
    for i, t in enumerate(timesteps):
        if before_step is not None:
            x = before_step(i, t, x)
        t_prev = timesteps[i + 1] if i + 1 < len(timesteps) else -1
        eps = model(x, torch.full((x.shape[0],), t, device=x.device, dtype=torch.long), **model_kwargs)
        x, x0_hat = ddim_step(schedule, x, t, t_prev, eps, eta, generator, clip_x0)
        if after_step is not None:
            after_step(i, t, x, x0_hat)
    return x
