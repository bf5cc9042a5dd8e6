"""Probe how DiffusionAD (or any recipe trained on synthetic anomalies) learns to segment them.

    python examples/probe_diffusionad.py PREPARED [--recipe diffusionad] [--profile cpu] [--steps 300]
        [--every 50] [--eval-images 32] [--set KEY=VALUE ...] [--json FILE]

Trains the recipe's synthetic-anomaly stage for --steps steps (no run folder) and prints, every
--every steps: mean training loss, mean map inside / outside the masks of a fixed held-out set of
synthetic anomalies on the calib split's normals, its pixel AUROC, and image AUROC (normal vs
anomalous copies). Try one --set at a time against the same command without it (see adcli/commands/probe.py).
"""

import argparse
import dataclasses
import json
from pathlib import Path

from adcli.commands.probe import probe
from adcli.model.recipe import load_recipe


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("prepared")
    ap.add_argument("--recipe", default="diffusionad")
    ap.add_argument("--profile", default="cpu")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--every", type=int, default=50)
    ap.add_argument("--eval-images", type=int, default=32)
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--json", type=Path, help="also write the points here")
    args = ap.parse_args()
    recipe = load_recipe(args.recipe, args.profile, args.overrides)
    print(f"{args.recipe} ({args.profile}) {' '.join(args.overrides) or '(recipe as is)'}")
    print("| step | loss | inside | outside | pixel AUROC | image AUROC | train s |\n|---|---|---|---|---|---|---|")
    show = lambda p: print(f"| {p.step} | {p.loss:.4f} | {p.inside:.3f} | {p.outside:.3f} | {100 * p.pixel_auroc:.1f} "
                           f"| {100 * p.image_auroc:.1f} | {p.seconds:.0f} |", flush=True)
    points = probe(args.prepared, recipe, args.steps, args.every, args.eval_images, args.device, report=show)
    if args.json:
        args.json.write_text(json.dumps({"recipe": args.recipe, "profile": args.profile, "overrides": args.overrides,
                                         "points": [dataclasses.asdict(p) for p in points]}, indent=1))


if __name__ == "__main__":
    main()
