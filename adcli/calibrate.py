"""`adcli calibrate`: per-category thresholds from the held-out calibration normals.

Reads only the `calib` split (never training images' scores, never test labels). Stores in the run
folder, atomically, `calibration.json` (adcli/calibration.py; the previous one kept as
`calibration.prev.json`): per category the image threshold (adcli/thresholds.py), a pixel threshold
for defect contours, the normal-score summary for drift detection, and exemplar thumbnails for
`--category auto` (adcli/routing.py).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
from rich.table import Table

from adcli import __version__
from adcli.calibration import FORMAT_VERSION, Calibration, CategoryCalibration
from adcli.data.manifest import load_manifest
from adcli.detector import Detector
from adcli.errors import AdcliError, DataError
from adcli.io import read_image
from adcli.predictions import predict_samples
from adcli.routing import EXEMPLARS, exemplar_radius, thumbnail
from adcli.thresholds import fit_threshold, score_summary

PIXEL_QUANTILE = 0.999  # of all calibration-normal pixels: the contour level on heatmaps


def calibrate(run: str | Path, prepared: str | Path, target_fpr: float = 0.01, device: str = "auto",
              console: Console | None = None, batch_size: int | None = None) -> Calibration:
    console = console or Console(stderr=True)
    if not 0 < target_fpr < 1:
        raise AdcliError(f"--target-fpr must be between 0 and 1, got {target_fpr}")
    detector = Detector.load(run, device, batch_size)
    categories = detector.categories
    manifest = load_manifest(prepared)
    calib = [s for s in manifest if s.split == "calib" and s.category in categories]
    missing = sorted(set(categories) - {s.category for s in calib})
    if missing:
        raise DataError(f"no calibration images for {', '.join(missing)} in {prepared} "
                        "(prepare with --calib-fraction > 0)")
    with Progress(TextColumn("calibrate"), BarColumn(), MofNCompleteColumn(), console=console, transient=True) as bar:
        task = bar.add_task("calibrate", total=len(calib))
        outputs = predict_samples(detector, calib, detector.run.calibration_cache, lambda: bar.advance(task))
    train_by_cat: dict[str, list[str]] = {}
    for s in manifest:
        if s.split == "train" and s.category in categories:
            train_by_cat.setdefault(s.category, []).append(s.path)
    rng = np.random.default_rng(0)
    exemplars = {}
    for cat, paths in sorted(train_by_cat.items()):
        chosen = sorted(rng.choice(len(paths), size=min(EXEMPLARS, len(paths)), replace=False))
        exemplars[cat] = np.stack([thumbnail(read_image(paths[i])) for i in chosen])

    per_category = {}
    for cat in categories:
        idx = [i for i, s in enumerate(calib) if s.category == cat]
        scores = outputs.scores[idx]
        th = fit_threshold(scores, target_fpr)
        held_out = np.stack([thumbnail(read_image(calib[i].path)) for i in idx])
        per_category[cat] = CategoryCalibration(
            threshold=th.threshold, target_fpr=target_fpr, expected_fpr=th.expected_fpr, fpr_upper_95=th.fpr_upper_95,
            n_normals=th.n_normals, n_above=th.n_above, normals_needed=th.normals_needed,
            pixel_threshold=float(np.quantile(outputs.maps[idx], PIXEL_QUANTILE)),
            pixel_median=float(np.median(outputs.maps[idx])), scores=score_summary(scores, th.transform),
            exemplars=exemplars[cat].tolist(), exemplar_radius=exemplar_radius(exemplars[cat], held_out))
        if th.too_few:
            console.print(f"[yellow]warning:[/] {cat}: {th.n_normals} calibration normals are too few to confirm a "
                          f"{target_fpr:.1%} false-alarm rate; {th.normals_needed} would be needed (95% confidence). "
                          f"The threshold comes from a fitted distribution; the bound shown is what the data support.",
                          highlight=False)
    calibration = Calibration(format_version=FORMAT_VERSION, adcli_version=__version__, model_id=detector.model_id,
                              created=time.strftime("%Y-%m-%dT%H:%M:%S%z"), target_fpr=target_fpr,
                              prepared=str(Path(prepared).resolve()), categories=per_category)
    detector.run.write_calibration(calibration)

    table = Table(title=f"calibration at target false-alarm rate {target_fpr:.1%}")
    for col in ("category", "normals", "threshold", "expected FPR", "FPR upper 95%", "pixel threshold"):
        table.add_column(col, justify="left" if col == "category" else "right")
    for cat, c in per_category.items():
        table.add_row(cat, str(c.n_normals), f"{c.threshold:.5g}", f"{c.expected_fpr:.2%}",
                      f"{c.fpr_upper_95:.1%}", f"{c.pixel_threshold:.4g}")
    console.print(table)
    console.print(f"calibration written to {detector.run.path / detector.run.CALIBRATION}")
    return calibration
