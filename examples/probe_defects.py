"""Where does a model lose? Per category and defect type, how much larger its anomaly map (and, for
reconstruction methods, the pixel error ‖X − X̂‖²) is inside the ground-truth masks than outside.

    python examples/probe_defects.py runs/tn prepared/ [--split test] [--batch-size 8] [--threads 2]

Per defect type: images, mask area (% of their pixels), the anomaly map's mean inside / outside the
masks and their ratio, and the same for the reconstruction error where `predict` returns a
reconstruction (TimeNet, DiffusionAD, DiAD), and for TimeNet's per-pixel timestep T where it has a TPN
(lower T inside = the TPN sees the defect and regenerates it). "good" rows give the mean on normal
test images.
A ratio near 1 means the model does not see that defect at all: a reconstruction that copies it
(error inside ≈ outside) or a map that normal texture lights up as much. Reads a prepared split with
masks; scores every image once at the model's resolution (no calibration needed).
"""

import collections

import numpy as np
import torch

from adcli.data.batches import resized, to_tensor
from adcli.core.io import read_image
from adcli.inference.predictions import ground_truth
from split_args import model_and_split


def inside_outside(values: np.ndarray, masks: np.ndarray) -> tuple[float, float]:
    """Mean of values (N, H, W) where masks (N, H, W) are set, and where they are not (nan if empty)."""
    inside, outside = values[masks], values[~masks]
    return (float(inside.mean()) if inside.size else float("nan"), float(outside.mean()) if outside.size else float("nan"))


def main() -> None:
    args, detector, samples = model_and_split(__doc__.splitlines()[0])
    size = detector.image_size
    groups: dict[tuple[str, str], dict[str, list]] = collections.defaultdict(lambda: collections.defaultdict(list))
    model = detector.model
    with torch.inference_mode():
        for i in range(0, len(samples), args.batch_size):
            chunk = samples[i:i + args.batch_size]
            pixels = np.stack([resized(read_image(s.path), size) for s in chunk])
            images = to_tensor(pixels)
            ids = torch.tensor([detector.categories.index(s.category) for s in chunk])
            out = model.predict(images, ids)
            error = None if out.reconstruction is None else (images - out.reconstruction.float()).pow(2).sum(1).numpy()
            timestep = model.timestep_map(images, ids) if hasattr(model, "timestep_map") else None
            for j, s in enumerate(chunk):
                g = groups[(s.category, s.defect)]
                g["map"].append(out.anomaly_map[j].float().numpy())
                g["mask"].append(ground_truth(s, size) > 0)
                if error is not None:
                    g["error"].append(error[j])
                if timestep is not None:
                    g["timestep"].append(timestep[j].float().numpy())
            print(f"{min(i + args.batch_size, len(samples))}/{len(samples)}", end="\r", flush=True)
    print(f"{detector.meta.get('method', '')} {args.run}: {args.split} split, {len(samples)} images at {size} px")
    extras = [(key, label) for key, label in (("error", "error"), ("timestep", "T"))
              if any(key in g for g in groups.values())]
    header = "| category | defect type | images | mask area % | map inside | map outside | ratio |"
    header += "".join(f" {label} inside | {label} outside | ratio |" for _, label in extras)
    print(header)
    print("|" + "---|" * (header.count("|") - 1))
    for (cat, defect), g in sorted(groups.items()):
        masks = np.stack(g["mask"])
        row = f"| {cat} | {defect} | {len(masks)} | {100 * float(masks.mean()):.1f} |"
        for key in ["map"] + [key for key, _ in extras]:
            if not g.get(key):
                row += " – | – | – |"
            elif defect == "good" or not masks.any():
                row += f" – | {float(np.stack(g[key]).mean()):.4g} | – |"
            else:
                a, b = inside_outside(np.stack(g[key]), masks)
                row += f" {a:.4g} | {b:.4g} | {a / b if b else float('nan'):.2f} |"
        print(row)

if __name__ == "__main__":
    main()
