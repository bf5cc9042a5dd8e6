"""Anomaly source textures made in code: no dataset needed, the same images for the same seed.

DRAEM and DiffusionAD paste DTD textures into Perlin masks. What matters for synthesis is that the
source differs from the product in colour, frequency and structure; these families cover that range:
fractal (multi-octave Perlin) noise, marble veins, oriented stripes, checks and grids, cells/spots,
and smooth colour gradients, each in random colours. All arrays are uint8 (H, W, 3).
"""

from __future__ import annotations

import numpy as np

from adcli.data.synth import perlin_noise

FAMILIES = ("fractal", "marble", "stripes", "checks", "cells", "gradient")


def _colourise(field: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A scalar field (H, W) in about [0, 1] -> RGB (H, W, 3) through a ramp of 3 random colours."""
    stops = rng.uniform(0, 1, (3, 3))
    v = np.clip(field, 0, 1)[..., None] * 2  # position on the ramp, [0, 2]
    low = stops[0] * (1 - np.clip(v, 0, 1)) + stops[1] * np.clip(v, 0, 1)
    return np.where(v <= 1, low, stops[1] * (2 - v) + stops[2] * (v - 1))


def _fractal(size: int, rng: np.random.Generator, octaves: int = 4) -> np.ndarray:
    """Sum of Perlin octaves, normalised to [0, 1] (H, W)."""
    base = int(2 ** rng.integers(1, 4))
    side = base * 2 ** (octaves - 1)
    side = -(-size // side) * side  # perlin_noise needs a multiple of every octave's lattice
    total = np.zeros((side, side))
    for octave in range(octaves):
        res = base * 2**octave
        total += perlin_noise((side, side), (res, res), rng) / 2**octave
    total = total[:size, :size]
    return (total - total.min()) / max(float(np.ptp(total)), 1e-6)


def _coords(size: int) -> tuple[np.ndarray, np.ndarray]:
    return np.meshgrid(np.arange(size) / size, np.arange(size) / size, indexing="ij")


def _field(family: str, size: int, rng: np.random.Generator) -> np.ndarray:
    """A scalar pattern (H, W) in [0, 1] of the given family."""
    y, x = _coords(size)
    angle = rng.uniform(0, np.pi)
    along = x * np.cos(angle) + y * np.sin(angle)
    if family == "fractal":
        return _fractal(size, rng)
    if family == "marble":
        return 0.5 + 0.5 * np.sin(2 * np.pi * rng.uniform(2, 8) * along + 6 * _fractal(size, rng))
    if family == "stripes":
        wave = np.sin(2 * np.pi * rng.uniform(3, 24) * along)
        return (wave > rng.uniform(-0.5, 0.5)).astype(float) if rng.random() < 0.5 else 0.5 + 0.5 * wave
    if family == "checks":
        across = -x * np.sin(angle) + y * np.cos(angle)
        f = rng.uniform(3, 16)
        return ((np.floor(f * along) + np.floor(f * across)) % 2).astype(float)
    if family == "cells":
        n = int(rng.integers(8, 64))
        centres = rng.uniform(0, 1, (n, 2))
        d = np.sqrt((y[..., None] - centres[:, 0]) ** 2 + (x[..., None] - centres[:, 1]) ** 2).min(axis=-1)
        return np.clip(d * np.sqrt(n) * rng.uniform(0.8, 2.0), 0, 1)
    if family == "gradient":
        return np.clip(along / max(float(along.max()), 1e-6) + 0.3 * _fractal(size, rng), 0, 1)
    raise ValueError(f"unknown texture family {family!r}")


def procedural_texture(family: str, size: int, rng: np.random.Generator) -> np.ndarray:
    """One texture of a family: uint8 (size, size, 3)."""
    rgb = _colourise(_field(family, size, rng), rng)
    grain = rng.normal(0, rng.uniform(0, 0.06), rgb.shape)  # sensor-like grain on some
    return (np.clip(rgb + grain, 0, 1) * 255).round().astype(np.uint8)


def procedural_textures(count: int, size: int, seed: int) -> list[np.ndarray]:
    """`count` textures cycling through the families, each drawn from (seed, index): uint8 (size, size, 3)."""
    return [procedural_texture(FAMILIES[i % len(FAMILIES)], size, np.random.default_rng([seed, i])) for i in range(count)]
