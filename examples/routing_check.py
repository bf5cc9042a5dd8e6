"""How well `--category auto` routes: a calibrated model's router on a prepared test split and on
images of no trained product.

    python examples/routing_check.py RUN PREPARED --foreign DIR [DIR ...]

Prints, per category, how many test images (good and defective) go to their own category, to
another one, or to UNKNOWN_CATEGORY; then, per foreign source (each DIR searched recursively, plus
generated uniform frames and noise frames), how many are rejected as UNKNOWN_CATEGORY.
"""

import argparse
from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image

from adcli.data.manifest import load_manifest
from adcli.detector import Detector
from adcli.inspect.intake import list_files
from adcli.io import read_image


def _route(router, paths_or_images):
    images = [read_image(p) if isinstance(p, (str, Path)) else p for p in paths_or_images]
    return [r for i in range(0, len(images), 32) for r in router.route(images[i:i + 32])]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run")
    ap.add_argument("prepared")
    ap.add_argument("--foreign", nargs="*", default=[], help="folders of images of no trained product")
    args = ap.parse_args()
    router = Detector.load(args.run, "cpu").router
    if router is None:
        raise SystemExit("this run has no router: calibrate it first (with MobileNetV2 weights available)")
    test = [s for s in load_manifest(args.prepared) if s.split == "test" and s.category in router.categories]
    routed = _route(router, [s.path for s in test])
    print("| category | kind | images | to its category | to another | UNKNOWN |\n|---|---|---|---|---|---|")
    for cat in router.categories:
        for kind, label in (("good", 0), ("defect", 1)):
            got = Counter("own" if r == cat else ("unknown" if r is None else "other")
                          for s, r in zip(test, routed) if s.category == cat and s.label == label)
            n = sum(got.values())
            print(f"| {cat} | {kind} | {n} | {got['own']} ({got['own'] / max(n, 1):.1%}) | {got['other']} | {got['unknown']} |")
    rng = np.random.default_rng(123)
    sources = {"/".join(Path(d).resolve().parts[-2:]): list_files(Path(d)) for d in args.foreign}
    sources["uniform frames"] = [Image.new("RGB", (256, 256), tuple(int(v) for v in rng.integers(0, 256, 3)))
                                 for _ in range(20)]
    sources["noise frames"] = [Image.fromarray(rng.integers(0, 256, (256, 256, 3), dtype=np.uint8)) for _ in range(10)] + \
                              [Image.fromarray(np.clip(rng.normal(128, 30, (256, 256, 3)), 0, 255).astype(np.uint8))
                               for _ in range(10)]
    print("\n| foreign source | images | rejected (UNKNOWN) | accepted as |\n|---|---|---|---|")
    total = rejected = 0
    for name, items in sources.items():
        out = _route(router, items)
        n_rej = sum(r is None for r in out)
        total, rejected = total + len(out), rejected + n_rej
        accepted = Counter(r for r in out if r is not None)
        print(f"| {name} | {len(out)} | {n_rej} ({n_rej / max(len(out), 1):.1%}) | "
              f"{', '.join(f'{c} {k}' for c, k in accepted.items()) or '-'} |")
    print(f"| all foreign | {total} | {rejected} ({rejected / max(total, 1):.1%}) | |")


if __name__ == "__main__":
    main()
