"""Deterministic procedural demo data in MVTec layout, with exact defect masks.

Two categories: `weave` (a texture) and `disc` (an object on a dark background). Defects:
`scratch` (a thin bright or dark line), `spot` (a blob of foreign colour) and `missing` (a piece
of the pattern or object gone). Also writes a small folder of procedural textures for anomaly
synthesis. Seconds to generate at 128 px.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from adcli.core.io import atomic_write_bytes

CATEGORIES = ("weave", "disc")
DEFECTS = ("scratch", "spot", "missing")


def _png_bytes(arr: np.ndarray) -> bytes:
    import io

    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def _weave(rng: np.random.Generator, size: int) -> np.ndarray:
    y, x = np.mgrid[0:size, 0:size].astype(np.float64)
    period = size / 8
    phase = rng.uniform(0, 2 * np.pi, 2)
    pattern = np.sin(2 * np.pi * x / period + phase[0]) * np.sin(2 * np.pi * y / period + phase[1])
    base = np.array([0.55, 0.45, 0.30]) + 0.18 * pattern[..., None] * np.array([1.0, 0.9, 0.6])
    base += rng.normal(0, 0.02, (size, size, 3))
    return base


def _disc(rng: np.random.Generator, size: int) -> tuple[np.ndarray, tuple[float, float, float]]:
    y, x = np.mgrid[0:size, 0:size].astype(np.float64)
    cx, cy = size / 2 + rng.uniform(-size * 0.03, size * 0.03, 2)
    r = size * 0.36
    d = np.hypot(x - cx, y - cy)
    img = np.zeros((size, size, 3)) + 0.08
    inside = d < r
    rings = 0.5 + 0.08 * np.cos(2 * np.pi * d / (size / 10))
    img[inside] = (rings[inside, None] * np.array([0.35, 0.55, 0.9]))
    img += rng.normal(0, 0.015, img.shape)
    return img, (cx, cy, r)


def _defect(rng: np.random.Generator, img: np.ndarray, kind: str, category: str, geom) -> tuple[np.ndarray, np.ndarray]:
    size = img.shape[0]
    mask_im = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(mask_im)
    if category == "disc":
        cx, cy, r = geom
        c = np.array([cx, cy])
    else:
        c, r = np.array([size / 2, size / 2]), size * 0.35
    centre = c + rng.uniform(-0.5, 0.5, 2) * r
    if kind == "scratch":
        angle = rng.uniform(0, np.pi)
        half = rng.uniform(0.25, 0.45) * r * np.array([np.cos(angle), np.sin(angle)])
        draw.line([tuple(centre - half), tuple(centre + half)], fill=255, width=max(2, size // 40))
        colour = np.array([0.95, 0.95, 0.9]) if rng.random() < 0.5 else np.array([0.02, 0.02, 0.05])
    elif kind == "spot":
        rad = rng.uniform(0.07, 0.14) * size
        draw.ellipse([tuple(centre - rad), tuple(centre + rad * rng.uniform(0.6, 1.0))], fill=255)
        colour = np.array([0.75, 0.15, 0.1])
    else:  # missing: a wedge of the object, or a patch of the texture, is gone
        if category == "disc":
            start = rng.uniform(0, 360)
            draw.pieslice([cx - r - 1, cy - r - 1, cx + r + 1, cy + r + 1], start, start + rng.uniform(25, 50), fill=255)
            disc_mask = Image.new("L", (size, size), 0)
            ImageDraw.Draw(disc_mask).ellipse([cx - r, cy - r, cx + r, cy + r], fill=255)
            mask_im = Image.fromarray(np.minimum(np.asarray(mask_im), np.asarray(disc_mask)))
            colour = np.array([0.08, 0.08, 0.08])
        else:
            half = rng.uniform(0.1, 0.16) * size
            draw.rectangle([tuple(centre - half), tuple(centre + half)], fill=255)
            colour = img.reshape(-1, 3).mean(0)
    mask = np.asarray(mask_im) > 127
    out = img.copy()
    out[mask] = colour + rng.normal(0, 0.01, (int(mask.sum()), 3))
    return out, mask


def _image(rng: np.random.Generator, category: str, size: int):
    if category == "weave":
        return _weave(rng, size), None
    return _disc(rng, size)


def _to_uint8(img: np.ndarray) -> np.ndarray:
    return (np.clip(img, 0, 1) * 255).round().astype(np.uint8)


def generate_textures(out: Path, seed: int = 0, count: int = 6, size: int = 96) -> None:
    """Procedural source textures (stripes, checks, noise) for anomaly synthesis."""
    rng = np.random.default_rng([seed, 999])
    y, x = np.mgrid[0:size, 0:size].astype(np.float64)
    for i in range(count):
        colour_a, colour_b = rng.uniform(0, 1, 3), rng.uniform(0, 1, 3)
        period = rng.uniform(4, 16)
        if i % 3 == 0:
            t = (np.sin(2 * np.pi * (x * np.cos(i) + y * np.sin(i)) / period) > 0).astype(float)
        elif i % 3 == 1:
            t = ((x // period + y // period) % 2).astype(float)
        else:
            t = rng.uniform(0, 1, (size // 8, size // 8)).repeat(8, 0).repeat(8, 1)
        img = colour_a * t[..., None] + colour_b * (1 - t[..., None])
        atomic_write_bytes(out / f"texture_{i:02d}.png", _png_bytes(_to_uint8(img)))


def generate_demo(out: str | Path, size: int = 128, n_train: int = 30, n_test_good: int = 6,
                  n_per_defect: int = 4, seed: int = 0, n_validation: int = 24) -> Path:
    """Write `out/mvtec/<category>/...` and `out/textures/`. Returns the MVTec root.

    `validation/good` (as MVTec 3D-AD and LOCO have) holds the normals that calibration uses: enough
    of them (24) for thresholds `adcli calibrate` accepts, without making training slower."""
    out = Path(out)
    root = out / "mvtec"
    for ci, cat in enumerate(CATEGORIES):
        rng = np.random.default_rng([seed, ci])
        for i in range(n_train):
            img, _ = _image(rng, cat, size)
            atomic_write_bytes(root / cat / "train" / "good" / f"{i:03d}.png", _png_bytes(_to_uint8(img)))
        for i in range(n_test_good):
            img, _ = _image(rng, cat, size)
            atomic_write_bytes(root / cat / "test" / "good" / f"{i:03d}.png", _png_bytes(_to_uint8(img)))
        for kind in DEFECTS:
            for i in range(n_per_defect):
                img, geom = _image(rng, cat, size)
                bad, mask = _defect(rng, img, kind, cat, geom)
                atomic_write_bytes(root / cat / "test" / kind / f"{i:03d}.png", _png_bytes(_to_uint8(bad)))
                atomic_write_bytes(root / cat / "ground_truth" / kind / f"{i:03d}_mask.png",
                                   _png_bytes((mask * 255).astype(np.uint8)))
        for i in range(n_validation):  # drawn last: train and test images stay those of earlier versions
            img, _ = _image(rng, cat, size)
            atomic_write_bytes(root / cat / "validation" / "good" / f"{i:03d}.png", _png_bytes(_to_uint8(img)))
    generate_textures(out / "textures", seed=seed)
    return root


# `make demo` calls a recipe's demo model good when both its mean image and pixel AUROC on the demo's
# test images reach this (%); below it, the run is labelled a smoke run: it shows the commands work,
# not what the method can find.
GOOD_DEMO_AUROC = 80.0


def demo_verdict(report: str | Path, recipe: str, floor: float = GOOD_DEMO_AUROC) -> str:
    """One line on a demo model from its `adcli report` folder (metrics.json): its mean image and pixel
    AUROC, and whether it is a demonstration of the method or only a smoke run."""
    import json

    metrics = json.loads((Path(report) / "metrics.json").read_text(encoding="utf-8"))
    mean = next(row for row in metrics["categories"] if row["category"] == "mean")
    image, pixel = 100 * mean["image_auroc"], 100 * mean["pixel_auroc"]
    numbers = f"{recipe} demo model: image AUROC {image:.1f}, pixel AUROC {pixel:.1f}"
    if image >= floor and pixel >= floor:
        return f"{numbers}: good (both >= {floor:.0f})"
    return (f"{numbers}: a SMOKE RUN only (below {floor:.0f}): the commands work, but this small demo model does "
            "not show what the method finds; see docs/recipes.md")


if __name__ == "__main__":  # `python -m adcli.data.demo OUT`: what `make demo` uses;
    import sys              # `python -m adcli.data.demo --verdict REPORT RECIPE`: its line per recipe

    if len(sys.argv) == 4 and sys.argv[1] == "--verdict":
        try:
            print(demo_verdict(sys.argv[2], sys.argv[3]))
        except (OSError, ValueError, KeyError, StopIteration) as exc:  # no report there, or not adcli's
            print(f"error: {sys.argv[2]} is not an adcli report folder with metrics.json ({type(exc).__name__}: {exc})",
                  file=sys.stderr)
            sys.exit(2)
    else:
        target = Path(sys.argv[1] if len(sys.argv) > 1 else "demo/data")
        print(f"demo data: {generate_demo(target)}, textures: {target / 'textures'}")
