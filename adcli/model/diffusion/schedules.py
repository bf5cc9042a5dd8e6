"""DDPM noise schedules and the closed-form forward process (Ho et al. 2020), in float64.

Notation (code name -> paper symbol):
    betas            β_t            per-step noise variance, t = 0..T-1
    alphas_cumprod   ᾱ_t = ∏_{s≤t} (1 − β_s)
    q_sample         x_t = √ᾱ_t·x_0 + √(1 − ᾱ_t)·ε                 (eq. 1)
    predict_x0       x̂_0 = (x_t − √(1 − ᾱ_t)·ε̂) / √ᾱ_t            (eq. 6 of DiffusionAD)
"""

from __future__ import annotations

import dataclasses

import torch


def linear_betas(num_timesteps: int, beta_start: float, beta_end: float) -> torch.Tensor:
    """β_t linearly spaced from beta_start to beta_end, float64 (T,)."""
    return torch.linspace(beta_start, beta_end, num_timesteps, dtype=torch.float64)


def scaled_linear_betas(num_timesteps: int, beta_start: float, beta_end: float) -> torch.Tensor:
    """Stable Diffusion's schedule: linear in √β, float64 (T,)."""
    return torch.linspace(beta_start**0.5, beta_end**0.5, num_timesteps, dtype=torch.float64) ** 2


BETA_SCHEDULES = {"linear": linear_betas, "scaled_linear": scaled_linear_betas}


@dataclasses.dataclass(frozen=True)
class ScheduleConfig:
    """A recipe's `schedule:` section."""

    kind: str = "linear"  # a key of BETA_SCHEDULES
    num_timesteps: int = 1000
    beta_start: float = 1e-4
    beta_end: float = 0.02

    def make(self) -> "NoiseSchedule":
        return NoiseSchedule.make(self.kind, self.num_timesteps, self.beta_start, self.beta_end)


@dataclasses.dataclass(frozen=True)
class NoiseSchedule:
    """ᾱ_t of a discrete schedule; lookups return float32 tensors on the query's device."""

    betas: torch.Tensor  # (T,) float64
    alphas_cumprod: torch.Tensor  # (T,) float64

    def __post_init__(self):
        # Also as Python floats: DDIM's per-step coefficients are numbers, never read back from a tensor
        # (which an exported graph cannot do).
        object.__setattr__(self, "alpha_bar_values", tuple(self.alphas_cumprod.tolist()))

    @classmethod
    def make(cls, kind: str, num_timesteps: int, beta_start: float, beta_end: float) -> "NoiseSchedule":
        if kind not in BETA_SCHEDULES:
            raise ValueError(f"unknown beta schedule '{kind}' (choose {', '.join(BETA_SCHEDULES)})")
        betas = BETA_SCHEDULES[kind](num_timesteps, beta_start, beta_end)
        return cls(betas, torch.cumprod(1.0 - betas, dim=0))

    @property
    def num_timesteps(self) -> int:
        return int(self.betas.shape[0])

    def sqrt_alpha_bar(self, t: torch.Tensor, ndim: int = 4) -> torch.Tensor:
        """√ᾱ_t for integer timesteps t (B,), shaped (B, 1, ..., 1) for broadcasting."""
        return _gather(self.alphas_cumprod.sqrt(), t, ndim)

    def sqrt_one_minus_alpha_bar(self, t: torch.Tensor, ndim: int = 4) -> torch.Tensor:
        return _gather((1.0 - self.alphas_cumprod).sqrt(), t, ndim)

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """x_t = √ᾱ_t·x_0 + √(1 − ᾱ_t)·ε."""
        return self.sqrt_alpha_bar(t, x0.ndim) * x0 + self.sqrt_one_minus_alpha_bar(t, x0.ndim) * noise

    def predict_x0(self, x_t: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """x̂_0 = (x_t − √(1 − ᾱ_t)·ε̂) / √ᾱ_t."""
        return (x_t - self.sqrt_one_minus_alpha_bar(t, x_t.ndim) * eps) / self.sqrt_alpha_bar(t, x_t.ndim)


def _gather(values: torch.Tensor, t: torch.Tensor, ndim: int) -> torch.Tensor:
    out = values.to(t.device)[t.long()].float()
    return out.reshape(-1, *([1] * (ndim - 1)))
