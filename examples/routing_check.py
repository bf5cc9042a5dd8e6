"""How well `--category auto` routes: a calibrated model's router on a prepared test split, on large
synthetic defects, and on images of no trained product.

    python examples/routing_check.py RUN PREPARED [--foreign DIR ...] [--blob-fraction 0.5]

Prints four tables:
1. per category, how many test images (good, defective, and good ones with a dark or a bright blob
   over half the frame, see `blob`) go to their own category, to another one, or to UNKNOWN_CATEGORY
   (and for how many of those their own category is still the nearest, where inspect scores them);
2. leave-one-out: per category, the router rebuilt without it (`CategoryRouter(embedder, the other
   profiles)`, as if the model had never been trained on it) must reject its test images;
3. per foreign source (each DIR searched recursively, plus generated uniform frames and noise
   frames), how many are rejected as UNKNOWN_CATEGORY;
4. verdicts: per category, the defective and blob images judged as `inspect --category auto` judges
   them (routed, far images scored under their nearest product) against the verdict the model gives
   them under their own category.

Exits 1 when routing costs a defect its verdict: a defective or blob image that its own category's
model calls DEFECT but that does not end as DEFECT with --category auto. (Defects the model itself
misses are the model's, not routing's: table 4 counts them, the exit code does not.)
"""

import argparse
from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

from adcli.data.manifest import load_manifest
from adcli.inference.detector import Detector
from adcli.commands.inspect.intake import list_files
from adcli.core.io import read_image
from adcli.model.routing import CategoryRouter


def blob(image: Image.Image, rng: np.random.Generator, bright: bool, fraction: float = 0.5) -> Image.Image:
    """`image` with a dark (grey 20) or bright (grey 235) ellipse over `fraction` of the frame, soft-edged,
    at a random place inside it: a defect that covers about half of a part that fills the frame."""
    rgb = np.asarray(image.convert("RGB"), np.float32)
    h, w = rgb.shape[:2]
    a, b = w * np.sqrt(fraction / np.pi), h * np.sqrt(fraction / np.pi)  # semi-axes: pi*a*b = fraction*w*h
    cx, cy = rng.uniform(a, w - a), rng.uniform(b, h - b)
    yy, xx = np.mgrid[0:h, 0:w]
    inside = Image.fromarray(((((xx - cx) / a) ** 2 + ((yy - cy) / b) ** 2 <= 1) * 255).astype(np.uint8))
    soft = np.asarray(inside.filter(ImageFilter.GaussianBlur(max(1.0, w / 150))), np.float32)[..., None] / 255
    fill = (235.0 if bright else 20.0) + rng.normal(0, 4, rgb.shape)
    return Image.fromarray(np.clip(rgb * (1 - soft) + fill * soft, 0, 255).astype(np.uint8))


def foreign_frames(rng: np.random.Generator) -> dict[str, list[Image.Image]]:
    """Frames of no product: 20 uniform colours (empty fixture, covered lens) and 20 noise frames."""
    return {"uniform frames": [Image.new("RGB", (256, 256), tuple(int(v) for v in rng.integers(0, 256, 3)))
                               for _ in range(20)],
            "noise frames": [Image.fromarray(rng.integers(0, 256, (256, 256, 3), dtype=np.uint8)) for _ in range(10)] +
                            [Image.fromarray(np.clip(rng.normal(128, 30, (256, 256, 3)), 0, 255).astype(np.uint8))
                             for _ in range(10)]}


def _route(router, paths_or_images):
    """-> each image's category, None for UNKNOWN_CATEGORY; and its nearest category."""
    out = []
    for i in range(0, len(paths_or_images), 32):
        out += router.nearest([read_image(p) if isinstance(p, (str, Path)) else p for p in paths_or_images[i:i + 32]])
    return [r.category if r.known else None for r in out], [r.category for r in out]


def _rate(k: int, n: int) -> str:
    return f"{k} ({k / max(n, 1):.1%})"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run")
    ap.add_argument("prepared")
    ap.add_argument("--foreign", nargs="*", default=[], help="folders of images of no trained product")
    ap.add_argument("--blob-fraction", type=float, default=0.5, help="share of the frame each blob covers")
    args = ap.parse_args()
    detector = Detector.load(args.run, "cpu")
    router = detector.router
    if router is None:
        raise SystemExit("this run has no router: calibrate it first (with MobileNetV2 weights available)")
    test = [s for s in load_manifest(args.prepared) if s.split == "test" and s.category in router.categories]
    rng = np.random.default_rng(0)
    rows = [(s.category, "defect" if s.label else "good", s.path) for s in test]
    rows += [(s.category, f"{tone} blob", blob(read_image(s.path), rng, tone == "bright", args.blob_fraction))
             for tone in ("dark", "bright") for s in test if s.label == 0]
    routed, nearest = _route(router, [item for _, _, item in rows])
    print("| category | kind | images | to its category | to another | UNKNOWN | UNKNOWN, own category nearest |\n"
          "|---|---|---|---|---|---|---|")
    for cat in router.categories:
        for kind in ("good", "defect", "dark blob", "bright blob"):
            got = Counter("own" if r == cat else ("unknown" + "-own" * (near == cat) if r is None else "other")
                          for (c, k, _), r, near in zip(rows, routed, nearest) if c == cat and k == kind)
            n, unknown = sum(got.values()), got["unknown"] + got["unknown-own"]
            print(f"| {cat} | {kind} | {n} | {_rate(got['own'], n)} | {got['other']} | {unknown} | {got['unknown-own']} |")

    print("\n| left out (router without it) | images | rejected (UNKNOWN) | accepted as |\n|---|---|---|---|")
    total = rejected = 0
    for cat in router.categories:
        without = CategoryRouter(router.embedder, {c: p for c, p in router.profiles.items() if c != cat})
        out = _route(without, [s.path for s in test if s.category == cat])[0]
        n_rej = sum(r is None for r in out)
        total, rejected = total + len(out), rejected + n_rej
        accepted = Counter(r for r in out if r is not None)
        print(f"| {cat} | {len(out)} | {_rate(n_rej, len(out))} | {', '.join(f'{c} {k}' for c, k in accepted.items()) or '-'} |")
    print(f"| all left out | {total} | {_rate(rejected, total)} | |")

    sources = {"/".join(Path(d).resolve().parts[-2:]): list_files(Path(d)) for d in args.foreign}
    sources.update(foreign_frames(np.random.default_rng(123)))
    print("\n| foreign source | images | rejected (UNKNOWN) | accepted as |\n|---|---|---|---|")
    total = rejected = 0
    for name, items in sources.items():
        out = _route(router, items)[0]
        n_rej = sum(r is None for r in out)
        total, rejected = total + len(out), rejected + n_rej
        accepted = Counter(r for r in out if r is not None)
        print(f"| {name} | {len(out)} | {_rate(n_rej, len(out))} | "
              f"{', '.join(f'{c} {k}' for c, k in accepted.items()) or '-'} |")
    print(f"| all foreign | {total} | {_rate(rejected, total)} | |")

    lost = verdict_table(detector, [r for r in rows if r[1] != "good"])
    if lost:
        print(f"\nrouting cost {len(lost)} defect(s) their DEFECT verdict:", *lost[:20], sep="\n  ")
        raise SystemExit(1)


def verdict_table(detector: Detector, rows: list[tuple[str, str, object]]) -> list[str]:
    """rows (category, kind, path or image) of defective images -> prints their verdicts with --category
    auto and under their own category; returns the images routing cost a DEFECT verdict."""
    items = [item for _, _, item in rows]
    auto = [p for i in range(0, len(items), 32) for p in detector.predict(items[i:i + 32])]
    own: list = [None] * len(rows)
    for cat in detector.categories:
        idx = [i for i, (c, _, _) in enumerate(rows) if c == cat]
        for start in range(0, len(idx), 32):
            chunk = idx[start:start + 32]
            for i, p in zip(chunk, detector.predict([items[i] for i in chunk], category=cat)):
                own[i] = p
    print("\n| category | kind | images | DEFECT (auto) | UNKNOWN_CATEGORY | OK | scored under another | "
          "DEFECT under its own | lost by routing |\n|---|---|---|---|---|---|---|---|---|")
    lost = []
    for cat in detector.categories:
        for kind in sorted({k for c, k, _ in rows if c == cat}):
            idx = [i for i, (c, k, _) in enumerate(rows) if c == cat and k == kind]
            verdicts = Counter(auto[i].verdict for i in idx)
            lost_here = [i for i in idx if own[i].verdict == "DEFECT" and auto[i].verdict != "DEFECT"]
            lost += [f"{cat} {kind} {rows[i][2] if isinstance(rows[i][2], str) else f'#{i}'}: {auto[i].verdict} "
                     f"under {auto[i].category}" for i in lost_here]
            print(f"| {cat} | {kind} | {len(idx)} | {verdicts['DEFECT']} | {verdicts['UNKNOWN_CATEGORY']} | "
                  f"{verdicts['OK']} | {sum(auto[i].category != cat for i in idx)} | "
                  f"{sum(own[i].verdict == 'DEFECT' for i in idx)} | {len(lost_here)} |")
    return lost


if __name__ == "__main__":
    main()
