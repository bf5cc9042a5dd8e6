"""How much one defect type decides a category's numbers: an `adcli report`'s metrics again, with
the images of the named defect types left out (no model runs; it reads the report's saved outputs).

    python examples/metrics_without_type.py prepared reports/tn uneven
    python examples/metrics_without_type.py prepared reports/tn uneven fray --category magnetic_tile

Pixel AUROC pools every pixel of a category's test images, so a defect type with large masks can
outweigh all the others; this prints each category with and without those types side by side.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from adcli.data.manifest import load_manifest
from adcli.core.errors import AdcliError, DataError
from adcli.core.io import load_tensors
from adcli.stats.metrics import METRIC_NAMES, category_metrics
from adcli.inference.predictions import ground_truth

SHORT = {"image_auroc": "I-AUROC", "image_ap": "I-AP", "image_f1_max": "I-F1max", "pixel_auroc": "P-AUROC",
         "pixel_ap": "P-AP", "pixel_f1_max": "P-F1max", "aupro": "AUPRO"}


def metrics_without(prepared: str | Path, report: str | Path, left_out: set[str],
                    categories: set[str] | None = None) -> list[dict]:
    """Rows {category, images, left_out, **metrics}: each category of the report twice, all its test
    images (as the report) and without `left_out`'s. Pixel metrics skip defective images without a
    mask, as `adcli report` does."""
    report = Path(report)
    if not (report / "metrics.json").is_file() or not (report / "outputs.safetensors").is_file():
        raise DataError(f"{report} is not an `adcli report` folder (metrics.json and outputs.safetensors expected)")
    meta = json.loads((report / "metrics.json").read_text())
    reported = [r["category"] for r in meta["categories"] if r["category"] != "mean"]
    # The report's outputs follow the manifest's order of its split, restricted to its categories.
    samples = [s for s in load_manifest(prepared) if s.split == meta["split"] and s.category in reported]
    outputs = load_tensors(report / "outputs.safetensors")
    scores, maps = outputs["scores"].numpy(), outputs["maps"].numpy()
    if len(samples) != len(scores):
        raise DataError(f"{report} holds {len(scores)} outputs but {prepared} has {len(samples)} "
                         f"'{meta['split']}' images of its categories: not the dataset it was made from")
    unknown = left_out - {s.defect for s in samples}
    if unknown:
        raise DataError(f"no '{meta['split']}' images of defect type {', '.join(sorted(unknown))} in {prepared} "
                        f"(types: {', '.join(sorted({s.defect for s in samples if s.label == 1}))})")
    rows = []
    for cat in reported:
        if categories and cat not in categories:
            continue
        for dropped in ((), tuple(sorted(left_out))):
            idx = [i for i, s in enumerate(samples) if s.category == cat and s.defect not in dropped]
            labels = np.array([samples[i].label == 1 for i in idx])
            known = [i for i in idx if samples[i].label == 0 or samples[i].mask is not None]
            with_pixels = any(samples[i].label == 1 for i in known)
            masks = np.stack([ground_truth(samples[i], maps.shape[-1]) for i in known]) if with_pixels else None
            m = category_metrics(scores[idx], labels, maps[known] if with_pixels else None, masks)
            rows.append({"category": cat, "images": len(idx), "left_out": ", ".join(dropped) or "-", **m})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("prepared", help="the prepared dataset the report was made on")
    parser.add_argument("report", help="an `adcli report` output folder")
    parser.add_argument("types", nargs="+", help="defect types (test folder names) to leave out")
    parser.add_argument("--category", action="append", help="only these categories (repeatable)")
    args = parser.parse_args()
    try:
        rows = metrics_without(args.prepared, args.report, set(args.types), set(args.category or ()))
    except AdcliError as error:  # one line and adcli's exit code for it (2), as the CLI would
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(error.exit_code) from None
    print(f"{'category':<16}{'left out':<18}{'images':>7}" + "".join(f"{SHORT[k]:>9}" for k in METRIC_NAMES))
    for r in rows:
        values = "".join(f"{'-' if r[k] != r[k] else f'{100 * r[k]:.1f}':>9}" for k in METRIC_NAMES)
        print(f"{r['category']:<16}{r['left_out']:<18}{r['images']:>7}{values}")


if __name__ == "__main__":
    main()
