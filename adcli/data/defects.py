"""Synthetic defects for the calibration self-check: families no recipe trains on.

Training synthesis (adcli/data/synth.py) pastes foreign textures into Perlin-shaped masks. A model that
learnt to spot exactly that would pass a self-check made of it, so the self-check uses other kinds
of damage, each a pure function of (image, rng):

    patch       a disc cut from another good image of the category, at another place (misplaced material)
    scratch     a thin straight line in a colour that contrasts with the surface under it
    spot        a disc of a saturated colour far from the surface's colour (stain, foreign particle)
    blur        a disc of the image Gaussian-blurred (smear, out-of-focus dent), where blurring changes most
    brightness  a disc made darker or brighter by 60 levels, edges feathered (discolouration, dent)

Every defect spans `extent` pixels: the disc's diameter, the line's length. `SIZES` gives the extents
as a share of the image side. Defects lie inside `region` (the object's foreground for object
categories, `defect_region`; anywhere away from the border for textures). Images are uint8 (H, W, 3);
masks bool (H, W); randomness only from the numpy Generator passed in.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw, ImageFilter
from scipy import ndimage

from adcli.data.synth import foreground_mask

FAMILIES = ("patch", "scratch", "spot", "blur", "brightness")
# A defect's extent (disc diameter, scratch length) as a share of the image side. On MVTec bottle at
# 256 px: 15 px (a small chip or contamination spot) and 38 px (a broken_large region is ~40-80 px).
SIZES = {"small": 0.06, "large": 0.15}
SCRATCH_WIDTH = 0.01  # share of the side (at least 1 px): thin against every extent above
BRIGHTNESS_SHIFT = 60  # grey levels: clearly visible, far from sensor noise (a few levels)
BLUR_CANDIDATES = 8  # places tried for a blur; the one it changes most is kept (blur on a flat area is no defect)


def defect_region(image: np.ndarray, is_object: bool) -> np.ndarray:
    """Where defects may go (H, W) bool: the object's foreground (synth.py's border-colour estimate,
    the one training uses) for object categories, else everywhere."""
    if not is_object:
        return np.ones(image.shape[:2], bool)
    region = foreground_mask(image.astype(np.float32) / 255.0)
    return region if region.any() else np.ones(image.shape[:2], bool)


def extent_pixels(size: str, side: int) -> int:
    """`SIZES[size]` of an image side, in pixels (at least 3: a defect must cover something)."""
    return max(3, int(round(SIZES[size] * side)))


def _centre(region: np.ndarray, radius: float, rng: np.random.Generator) -> tuple[int, int]:
    """A random point whose disc of `radius` lies inside `region` and the image; the deepest point of
    the region when none has room (a small object: the defect is then clipped to the region)."""
    depth = ndimage.distance_transform_edt(np.pad(region, 1))[1:-1, 1:-1]  # outside and the frame count as 0
    room = np.flatnonzero(depth.ravel() > radius)
    flat = int(rng.choice(room)) if room.size else int(np.argmax(depth))
    return divmod(flat, region.shape[1])


def _disc(shape: tuple[int, int], centre: tuple[int, int], diameter: int) -> np.ndarray:
    """(H, W) bool: the pixels within diameter/2 of `centre`."""
    yy, xx = np.ogrid[: shape[0], : shape[1]]
    return (yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 <= (diameter / 2) ** 2


def _local_colour(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    return image[mask].mean(axis=0) if mask.any() else image.reshape(-1, 3).mean(axis=0)


def patch(image, rng, extent, region, donor):
    """A disc of `donor` (another good image) from a place at least one extent away, pasted here."""
    h, w, _ = image.shape
    cy, cx = _centre(region, extent / 2, rng)
    mask = _disc((h, w), (cy, cx), extent) & region
    far = np.ones((h, w), bool)
    far[max(0, cy - extent):cy + extent + 1, max(0, cx - extent):cx + extent + 1] = False
    sy, sx = _centre(far, extent / 2, rng)  # source: anywhere in the donor except near here
    dy, dx = sy - cy, sx - cx
    ys, xs = np.nonzero(mask)
    out = image.copy()
    out[ys, xs] = donor[np.clip(ys + dy, 0, h - 1), np.clip(xs + dx, 0, w - 1)]
    return out, mask


def scratch(image, rng, extent, region, donor=None):
    """A straight line `extent` long at a random angle, ~1 % of the side wide, dark on a bright surface
    and bright on a dark one."""
    h, w, _ = image.shape
    cy, cx = _centre(region, extent / 2, rng)
    angle = rng.uniform(0, np.pi)
    dy, dx = np.sin(angle) * (extent - 1) / 2, np.cos(angle) * (extent - 1) / 2
    canvas = Image.new("L", (w, h), 0)
    width = max(1, int(round(SCRATCH_WIDTH * max(h, w))))
    ImageDraw.Draw(canvas).line([(cx - dx, cy - dy), (cx + dx, cy + dy)], fill=255, width=width)
    mask = (np.asarray(canvas) > 0) & region
    luminance = float(_local_colour(image, _disc((h, w), (cy, cx), extent) & region).mean())
    level = rng.uniform(0, 40) if luminance > 127 else rng.uniform(215, 255)
    out = image.copy()
    out[mask] = np.clip(level + rng.uniform(-10, 10, 3), 0, 255).astype(np.uint8)
    return out, mask


def spot(image, rng, extent, region, donor=None):
    """A disc of one saturated colour: of six random hues, the farthest from the surface's mean colour."""
    h, w, _ = image.shape
    mask = _disc((h, w), _centre(region, extent / 2, rng), extent) & region
    hues = Image.fromarray(np.stack([rng.integers(0, 256, 6), np.full(6, 220), np.full(6, 210)], -1)[None].astype(np.uint8),
                           mode="HSV").convert("RGB")
    colours = np.asarray(hues)[0].astype(np.float64)  # (6, 3)
    colour = colours[np.argmax(np.abs(colours - _local_colour(image, mask)).sum(axis=1))]
    out = image.copy()
    out[mask] = colour.astype(np.uint8)
    return out, mask


def blur(image, rng, extent, region, donor=None):
    """A disc Gaussian-blurred (sigma a sixth of the extent), at the candidate place it changes most."""
    h, w, _ = image.shape
    blurred = np.asarray(Image.fromarray(image).filter(ImageFilter.GaussianBlur(max(1.0, extent / 6))))
    change = np.abs(blurred.astype(np.int16) - image).sum(axis=-1)
    best, best_change = None, -1.0
    for _ in range(BLUR_CANDIDATES):
        mask = _disc((h, w), _centre(region, extent / 2, rng), extent) & region
        if (c := float(change[mask].mean()) if mask.any() else 0.0) > best_change:
            best, best_change = mask, c
    out = image.copy()
    out[best] = blurred[best]
    return out, best


def brightness(image, rng, extent, region, donor=None):
    """A disc shifted by BRIGHTNESS_SHIFT grey levels (darker on a bright surface, brighter on a dark
    one), fading to nothing over its outer quarter."""
    h, w, _ = image.shape
    cy, cx = _centre(region, extent / 2, rng)
    mask = _disc((h, w), (cy, cx), extent) & region
    yy, xx = np.ogrid[:h, :w]
    radius = extent / 2
    weight = np.clip((radius - np.hypot(yy - cy, xx - cx)) / (0.25 * radius), 0, 1) * mask  # (H, W)
    sign = -1.0 if float(_local_colour(image, mask).mean()) > 127 else 1.0
    out = np.clip(image + sign * BRIGHTNESS_SHIFT * weight[..., None], 0, 255).astype(np.uint8)
    return out, mask


MAKERS = {"patch": patch, "scratch": scratch, "spot": spot, "blur": blur, "brightness": brightness}


def make_defect(image: np.ndarray, family: str, size: str, rng: np.random.Generator, region: np.ndarray,
                donor: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """One defect of `family` (FAMILIES) and `size` (SIZES) inside `region`. image uint8 (H, W, 3);
    donor: another good image of the category, the same shape (patch only; else the image itself)
    -> (defective copy uint8 (H, W, 3), mask bool (H, W))."""
    extent = extent_pixels(size, max(image.shape[:2]))
    return MAKERS[family](image, rng, extent, region, image if donor is None else donor)
