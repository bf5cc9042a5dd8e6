"""Compare two `adcli report` output caches (REPORT/outputs.safetensors) of the same images.

Used to check that a change leaves scores alone: report the same model on the same prepared data
with two adcli versions (or two batch sizes, devices, dtypes) into two folders, then

    python examples/compare_outputs.py reports/old reports/new
"""

import argparse
import json
from pathlib import Path

import numpy as np
from safetensors import safe_open
from safetensors.torch import load_file


def _load(folder_or_file: str):
    path = Path(folder_or_file)
    path = path / "outputs.safetensors" if path.is_dir() else path
    with safe_open(str(path), framework="pt") as f:
        paths = json.loads(f.metadata()["paths"])
    tensors = load_file(str(path))
    return paths, tensors["scores"].double().numpy(), tensors["maps"].double().numpy()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("a")
    ap.add_argument("b")
    args = ap.parse_args()
    paths_a, scores_a, maps_a = _load(args.a)
    paths_b, scores_b, maps_b = _load(args.b)
    if paths_a != paths_b:
        raise SystemExit("the two caches hold different images (or a different order)")
    score_diff = np.abs(scores_a - scores_b)
    map_diff = np.abs(maps_a - maps_b)
    relative = score_diff / np.maximum(np.abs(scores_a), 1e-12)
    print(f"{len(paths_a)} images; scores bit-identical: {int((score_diff == 0).sum())}/{len(paths_a)}, "
          f"max |Δscore| {score_diff.max():.3g} (relative {relative.max():.3g}); maps bit-identical: "
          f"{bool((map_diff == 0).all())}, max |Δmap| {map_diff.max():.3g} (map range {maps_a.min():.4g}..{maps_a.max():.4g})")


if __name__ == "__main__":
    main()
