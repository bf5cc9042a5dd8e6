"""Heatmap overlays: an anomaly map coloured with a jet-like colormap over the original image."""

from __future__ import annotations

import numpy as np
from PIL import Image


def jet(values: np.ndarray) -> np.ndarray:
    """values (H, W) in [0, 1] -> uint8 (H, W, 3), blue (low) to red (high)."""
    v = np.clip(values, 0.0, 1.0)[..., None]
    r = np.clip(1.5 - np.abs(4 * v - 3), 0, 1)
    g = np.clip(1.5 - np.abs(4 * v - 2), 0, 1)
    b = np.clip(1.5 - np.abs(4 * v - 1), 0, 1)
    return (np.concatenate([r, g, b], axis=-1) * 255).round().astype(np.uint8)


JET_TABLE = jet(np.linspace(0.0, 1.0, 256))  # (256, 3): one colour per 8-bit level, looked up per pixel


def overlay(image: Image.Image, anomaly_map: np.ndarray, value_range: tuple[float, float] | None,
            alpha: float = 0.5) -> Image.Image:
    """Blend the map (model resolution, resized bilinearly to the image) over the RGB image.

    value_range: (low, high) drawn as blue..red; None scales each map by its own min..max. Colours
    come from a 256-level table and the blend is integer arithmetic (inspect draws one per image).
    """
    lo, hi = value_range if value_range is not None else (float(anomaly_map.min()), float(anomaly_map.max()))
    scaled = (anomaly_map - lo) / max(hi - lo, 1e-12)
    resized = np.asarray(Image.fromarray(scaled.astype(np.float32), mode="F").resize(image.size, Image.BILINEAR))
    levels = np.clip(resized * 255.0 + 0.5, 0, 255).astype(np.uint8)
    colour = JET_TABLE[levels].astype(np.uint16)  # (H, W, 3)
    base = np.asarray(image.convert("RGB"), dtype=np.uint16)
    weight = int(round(alpha * 256))
    return Image.fromarray(((colour * weight + base * (256 - weight) + 128) >> 8).astype(np.uint8))
