"""A finely patterned product with small defects, in the MVTec layout: a check of a recipe on a kind of
category that ../shared/data lacks (a thin-line mesh, each image at its own small angle and phase).

    python examples/fine_pattern.py OUT [--period 12] [--size 1024] [--seed 0]
    adcli prepare OUT --out OUT_prepared && adcli train --recipe knn --profile cpu --data OUT_prepared ...

OUT/fine<period>_<size>/: 200 train/good, 40 test/good and 15 test images per defect type with masks:
`broken` (a small patch without lines), `glue` (a dark spot), `bent` (a patch whose lines are shifted by
half a period), each 8-17 of 384 px across and scaled with --size, and `thread` (a bright curve 2 px wide
and 40 px long at any size: at 1024 px, under one pixel wide for a 256-px model).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

DEFECT_TYPES = ("broken", "glue", "bent", "thread")
TRAIN, TEST_GOOD, PER_DEFECT = 200, 40, 15


def mesh(rng: np.random.Generator, size: int, period: int) -> np.ndarray:
    """A grey image of thin dark lines every `period` px, at a random angle within 1° and a random phase."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    angle = np.deg2rad(rng.uniform(-1.0, 1.0))
    u = xx * np.cos(angle) + yy * np.sin(angle) + rng.uniform(0, period)
    v = -xx * np.sin(angle) + yy * np.cos(angle) + rng.uniform(0, period)

    def lines(w):
        return np.clip(1.5 - 1.2 * np.abs(w % period - period / 2), 0, 1)

    image = 200 - 120 * np.maximum(lines(u), lines(v))
    return image * rng.uniform(0.93, 1.07) + rng.normal(0, 3, image.shape)


def add_defect(rng: np.random.Generator, image: np.ndarray, period: int, kind: str) -> np.ndarray:
    """Draws one defect of `kind` into `image` (in place) -> its mask (bool)."""
    size = image.shape[0]
    cy, cx = rng.integers(size // 10, size - size // 10, 2)
    radius = int(rng.integers(4, 9)) * size // 384
    yy, xx = np.mgrid[0:size, 0:size]
    disc = (yy - cy) ** 2 + (xx - cx) ** 2 <= radius ** 2
    if kind == "broken":
        image[disc] = 200 + rng.normal(0, 3, int(disc.sum()))
        return disc
    if kind == "glue":
        image[disc] *= 0.55
        return disc
    if kind == "bent":
        box = (slice(cy - radius, cy + radius), slice(cx - radius, cx + radius))
        image[box] = np.roll(image, (period // 2, period // 2), axis=(0, 1))[box]
        mask = np.zeros(image.shape, bool)
        mask[box] = True
        return mask
    canvas = Image.new("L", (size, size))  # thread: 2 px wide whatever the image size, as a real one
    ImageDraw.Draw(canvas).line([(cx + 4 * k, cy + 6 * np.sin(k / 2.0)) for k in range(-5, 6)], fill=255, width=2)
    image[np.asarray(canvas) > 0] = 245
    return np.asarray(canvas.filter(ImageFilter.MaxFilter(3))) > 0


def save(image: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).convert("RGB").save(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--period", type=int, default=12, help="line spacing in px")
    parser.add_argument("--size", type=int, default=1024, help="image side in px")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.period < 3 or args.size < 96:
        parser.error("--period must be >= 3 and --size >= 96")
    rng = np.random.default_rng(args.seed)
    root = args.out / f"fine{args.period}_{args.size}"
    for split, count in (("train", TRAIN), ("test", TEST_GOOD)):
        for i in range(count):
            save(mesh(rng, args.size, args.period), root / split / "good" / f"{i:03d}.png")
    for kind in DEFECT_TYPES:
        for i in range(PER_DEFECT):
            image = mesh(rng, args.size, args.period)
            mask = add_defect(rng, image, args.period, kind)
            save(image, root / "test" / kind / f"{i:03d}.png")
            (root / "ground_truth" / kind).mkdir(parents=True, exist_ok=True)
            Image.fromarray((mask * 255).astype(np.uint8)).save(root / "ground_truth" / kind / f"{i:03d}_mask.png")
    print(f"wrote {root}")


if __name__ == "__main__":
    main()
