"""Synthetic anomalies: Perlin-noise masks filled with a foreign texture (DRAEM / DiffusionAD style).

    S = N·(1 − M) + (1 − β)·A·M + β·N·M,   β ~ U[0.2, 0.8)        (DiffusionAD, eq. in §IV-D)

N is the normal image, M the binary Perlin mask (times the object foreground for object
categories), A the anomaly source: a texture image after three random colour/geometry operations,
or the normal image itself cut into shuffled strips ("self-augmentation"). All arrays are float32
(H, W, 3) in [0, 1]; randomness comes only from the numpy Generator passed in.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageEnhance, ImageOps

from adcli.data.manifest import IMAGE_EXTENSIONS
from adcli.core.errors import DataError
from adcli.core.io import ImageError, read_image


def perlin_noise(shape: tuple[int, int], res: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """2-D gradient (Perlin) noise in about [-1, 1]; `shape` must be a multiple of `res` per axis."""
    h, w = shape
    ry, rx = res
    dy, dx = h // ry, w // rx
    angles = rng.uniform(0, 2 * np.pi, (ry + 1, rx + 1))
    gradients = np.stack([np.cos(angles), np.sin(angles)], axis=-1)  # (ry+1, rx+1, 2)
    # Position of every pixel inside its lattice cell, in [0, 1).
    fy = (np.arange(h) % dy) / dy
    fx = (np.arange(w) % dx) / dx
    cy = np.arange(h) // dy
    cx = np.arange(w) // dx
    py, px = np.meshgrid(fy, fx, indexing="ij")
    iy, ix = np.meshgrid(cy, cx, indexing="ij")

    def corner(oy: int, ox: int) -> np.ndarray:
        g = gradients[iy + oy, ix + ox]  # (h, w, 2)
        return g[..., 0] * (py - oy) + g[..., 1] * (px - ox)

    def fade(t: np.ndarray) -> np.ndarray:
        return 6 * t**5 - 15 * t**4 + 10 * t**3

    uy, ux = fade(py), fade(px)
    top = corner(0, 0) * (1 - ux) + corner(0, 1) * ux
    bottom = corner(1, 0) * (1 - ux) + corner(1, 1) * ux
    return np.sqrt(2) * (top * (1 - uy) + bottom * uy)


def perlin_mask(size: tuple[int, int], rng: np.random.Generator, max_scale_log2: int = 5,
                threshold: float = 0.5) -> np.ndarray:
    """Binary mask (H, W) from Perlin noise of scale 2^k (k in 0..max per axis), rotated ±90°."""
    h, w = size
    period = 2**max_scale_log2
    ph, pw = -(-h // period) * period, -(-w // period) * period  # next multiple of the largest scale
    res = (2 ** int(rng.integers(0, max_scale_log2 + 1)), 2 ** int(rng.integers(0, max_scale_log2 + 1)))
    noise = perlin_noise((ph, pw), res, rng).astype(np.float32)
    angle = float(rng.uniform(-90, 90))
    rotated = np.asarray(Image.fromarray(noise, mode="F").rotate(angle, resample=Image.BILINEAR))
    return rotated[:h, :w] > threshold


def _border(image: np.ndarray) -> np.ndarray:
    return np.concatenate([image[0], image[-1], image[:, 0], image[:, -1]])  # (4·side, 3)


def foreground_mask(image: np.ndarray, threshold: float = 0.1) -> np.ndarray:
    """Object foreground (H, W): pixels whose colour differs from the border's median colour."""
    background = np.median(_border(image), axis=0)
    return np.abs(image - background).max(axis=-1) > threshold


def looks_like_object(image: np.ndarray, threshold: float = 0.1) -> bool:
    """An object on a plain background: 90 % of the border within `threshold` of its median colour,
    and a foreground that covers between 2 % and 90 % of the image. Textures fail the first test."""
    border = _border(image)
    spread = np.abs(border - np.median(border, axis=0)).max(axis=-1)
    covered = float(foreground_mask(image, threshold).mean())
    return bool(np.quantile(spread, 0.9) < threshold and 0.02 < covered < 0.9)


def is_object_category(images: np.ndarray) -> bool:
    """Whether a category's anomalies belong on the object only: most of its training images (N, H, W, 3)
    uint8 look like an object on a plain background."""
    votes = [looks_like_object(im.astype(np.float32) / 255.0) for im in images]
    return sum(votes) > len(votes) / 2


def _random_ops(img: Image.Image, rng: np.random.Generator, count: int = 3) -> Image.Image:
    """Three random colour/geometry operations, as in DRAEM's augmenter pool."""
    ops = [
        lambda im: ImageEnhance.Brightness(im).enhance(rng.uniform(0.5, 1.5)),
        lambda im: ImageEnhance.Contrast(im).enhance(rng.uniform(0.5, 2.0)),
        lambda im: ImageEnhance.Sharpness(im).enhance(rng.uniform(0.0, 2.0)),
        lambda im: ImageOps.solarize(im, int(rng.integers(32, 224))),
        lambda im: ImageOps.posterize(im, int(rng.integers(2, 6))),
        lambda im: ImageOps.invert(im),
        lambda im: ImageOps.autocontrast(im),
        lambda im: ImageOps.equalize(im),
        lambda im: Image.fromarray(np.roll(np.asarray(im), int(rng.integers(1, 3)), axis=-1)),  # channel swap ~ hue shift
        lambda im: im.rotate(float(rng.uniform(-90, 90)), resample=Image.BILINEAR, fillcolor=(0, 0, 0)),
    ]
    for i in rng.choice(len(ops), size=count, replace=False):
        img = ops[i](img)
    return img


def shuffled_strips(image: np.ndarray, rng: np.random.Generator, pieces: int = 8) -> np.ndarray:
    """Self-augmentation source: the image cut into strips (rows or columns) in shuffled order."""
    axis = int(rng.integers(0, 2))
    strips = np.array_split(image, pieces, axis=axis)
    order = rng.permutation(len(strips))
    return np.concatenate([strips[i] for i in order], axis=axis)


def _interleaved_shuffle(parts: list, rng: np.random.Generator) -> list:
    """The even-numbered parts in shuffled order, then the odd-numbered ones in shuffled order."""
    evens, odds = parts[::2], parts[1::2]
    return [evens[i] for i in rng.permutation(len(evens))] + [odds[i] for i in rng.permutation(len(odds))]


def self_augmented(image: np.ndarray, rng: np.random.Generator, pieces: int = 8) -> np.ndarray:
    """Self-augmentation source as the authors' data/dataset_beta_thresh.py (perlin_synthetic) makes it:
    three random colour/geometry operations on the image, then its columns cut into `pieces` strips
    and re-laid (even strips shuffled, then odd ones), then the same for rows after a full shuffle.
    image (H, W, 3) float in [0, 1] -> same shape."""
    changed = np.asarray(_random_ops(Image.fromarray((image * 255).round().astype(np.uint8)), rng), np.float32) / 255.0
    columns = _interleaved_shuffle(np.array_split(changed, pieces, axis=1), rng)
    rows = np.array_split(np.concatenate(columns, axis=1), pieces, axis=0)
    rows = [rows[i] for i in rng.permutation(len(rows))]
    return np.concatenate(_interleaved_shuffle(rows, rng), axis=0)


def intensity_changed(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Anomaly source for a region that is darker or brighter than it should be: the image itself times a
    gain in [0.5, 0.8] or [1.25, 2] (either side equally likely), clipped to [0, 1]. The blend with β
    in `synthesize` keeps part of the original, so the region's brightness changes by 10-80 %.
    image (H, W, 3) float in [0, 1] -> same shape."""
    gain = rng.uniform(0.5, 0.8) if rng.random() < 0.5 else rng.uniform(1.25, 2.0)
    return np.clip(image * gain, 0.0, 1.0).astype(np.float32)


def load_textures(folder: str | Path, size: int) -> list[np.ndarray]:
    """All images under `folder` (recursively), resized to size×size, as uint8 (H, W, 3)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"texture folder not found: {folder} (set synth.texture_dir to a folder of images, or null for textures made in code)")
    textures = []
    for p in sorted(folder.rglob("*")):
        if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS:
            try:
                textures.append(np.asarray(read_image(p).resize((size, size), Image.BILINEAR)))
            except ImageError:
                continue  # one bad texture must not stop training; the rest are enough
    if not textures:
        raise DataError(f"no readable texture images in {folder}")
    return textures


def synthesize(image: np.ndarray, rng: np.random.Generator, textures: list[np.ndarray], is_object: bool,
               max_scale_log2: int = 5, beta_range: tuple[float, float] = (0.2, 0.8),
               retries: int = 50, self_aug: str = "strips", intensity_fraction: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """One synthetic anomaly. image (H, W, 3) float in [0, 1] -> (anomalous image, mask (H, W) float).
    The mask may come back empty (every one of `retries` Perlin draws missed the object): the caller
    then treats the row as normal. (The authors keep the Perlin scale between draws; we redraw it.)"""
    h, w, _ = image.shape
    region = foreground_mask(image) if is_object else np.ones((h, w), bool)
    mask = np.zeros((h, w), bool)
    for _ in range(retries):
        mask = perlin_mask((h, w), rng, max_scale_log2) & region
        if mask.any():
            break
    # No draw when the share is 0, so runs without it get the anomalies they always got.
    if intensity_fraction > 0 and rng.random() < intensity_fraction:
        source = intensity_changed(image, rng)
    elif bool(textures) and (not is_object or rng.random() < 0.5):
        tex = textures[int(rng.integers(0, len(textures)))]
        source = np.asarray(_random_ops(Image.fromarray(tex).resize((w, h)), rng), dtype=np.float32) / 255.0
    else:  # "strips": the image in shuffled strips along one axis, colours unchanged (subtler)
        source = self_augmented(image, rng) if self_aug == "authors" else shuffled_strips(image, rng)
    beta = float(rng.uniform(*beta_range))
    m = mask[..., None].astype(np.float32)
    out = image * (1 - m) + (1 - beta) * source * m + beta * image * m
    return out.astype(np.float32), mask.astype(np.float32)
