"""Source noise with low frequencies: white Gaussian noise plus a share of it blurred.

White noise at a diffusion model's inference level hides fine structure only: a large, faint change of
brightness survives the noising almost untouched, so the model learns to copy it and the anomaly map
misses it (TimeNet on magnetic_tile `uneven`, docs/benchmarks.md). AnoDDPM (Wyatt et al., 2022) made the
same point for large anomalies and noised with simplex noise instead. Here the source is
    X_0 = √(1 − s) · ε + √s · G_σ(ε'),   ε, ε' ~ N(0, I),
G_σ a Gaussian low-pass of width σ rescaled to unit variance, so every pixel stays N(0, 1) while
neighbouring pixels share a share s of their noise. Ours; s = 0 is plain white noise (the papers).
"""

from __future__ import annotations

import math

import torch

from adcli.core.device import fixed_noise

# The fixed inference noise's low-frequency part is drawn from a seed of its own.
_SECOND_SEED_OFFSET = 1_000_003


def check(share: float, scale: float, section: str = "train") -> None:
    """The recipe checks of `<section>.coarse_noise` and `.coarse_scale` (ValueError)."""
    if not 0 <= share < 1:
        raise ValueError(f"{section}.coarse_noise must be in [0, 1), not {share}")
    if scale <= 0:
        raise ValueError(f"{section}.coarse_scale must be > 0, not {scale}")


def lowpass_unit(white: torch.Tensor, sigma_px: float) -> torch.Tensor:
    """white (..., H, W) noise -> the same blurred by a Gaussian of `sigma_px` (circularly, in the frequency
    domain, so the result is stationary) and rescaled so each pixel has the variance the input's had."""
    h, w = white.shape[-2:]
    fy = torch.fft.fftfreq(h, device=white.device, dtype=torch.float64)
    fx = torch.fft.fftfreq(w, device=white.device, dtype=torch.float64)
    gain = torch.exp(-2 * math.pi ** 2 * sigma_px ** 2 * (fy[:, None] ** 2 + fx[None, :] ** 2))
    # Parseval: blurring white noise scales its per-pixel variance by the mean squared gain
    gain = gain / gain.pow(2).mean().sqrt()
    blurred = torch.fft.ifft2(torch.fft.fft2(white.double()) * gain).real
    return blurred.to(white.dtype)


def mix(white: torch.Tensor, second_white: torch.Tensor, share: float, sigma_px: float) -> torch.Tensor:
    """√(1 − share)·white + √share·lowpass_unit(second_white, sigma_px): unit variance per pixel."""
    if share == 0:
        return white
    return math.sqrt(1 - share) * white + math.sqrt(share) * lowpass_unit(second_white, sigma_px)


def source_noise(shape: tuple[int, ...], generator: torch.Generator | None, device, share: float,
                 scale: float) -> torch.Tensor:
    """X_0 of shape (B, C, H, W): white noise, then (only when share > 0, so s = 0 draws exactly what
    torch.randn alone drew) a second draw blurred with σ = scale · W px."""
    white = torch.randn(shape, generator=generator, device=device)
    if share == 0:
        return white
    return mix(white, torch.randn(shape, generator=generator, device=device), share, scale * shape[-1])


def fingerprint_settings(train_settings: dict) -> dict:
    """A `train` section's settings for a stage fingerprint: the coarse-noise keys only when the noise is on,
    so runs trained before the keys existed keep their stages."""
    if train_settings.get("coarse_noise"):
        return train_settings
    return {k: v for k, v in train_settings.items() if k not in ("coarse_noise", "coarse_scale")}


def fixed_source_noise(seed: int, shape: tuple[int, ...], device, share: float, scale: float) -> torch.Tensor:
    """The recipe's fixed inference noise (adcli.core.device.fixed_noise) with its low-frequency share mixed in."""
    white = fixed_noise(seed, shape, device)
    if share == 0:
        return white
    return mix(white, fixed_noise(seed + _SECOND_SEED_OFFSET, shape, device), share, scale * shape[-1])
