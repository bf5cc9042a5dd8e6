"""`adcli calibrate`: per-category thresholds from the held-out calibration normals.

Reads only the `calib` split (never training images' scores, never test labels). Stores in the
bundle, atomically, `calibration.json` (the previous one kept as `calibration.prev.json`):
per category the image threshold (adcli/thresholds.py), a pixel threshold for defect contours, the
normal-score summary for drift detection, and exemplar thumbnails for `--category auto`.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import numpy as np
from PIL import Image
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
from rich.table import Table

from adcli import __version__
from adcli.bundle import load_bundle
from adcli.data.manifest import load_manifest
from adcli.errors import AdcliError, BundleError, DataError
from adcli.io import atomic_write_json, read_image
from adcli.predictions import predict_samples
from adcli.runtime import resolve_device
from adcli.thresholds import fit_threshold, score_summary
from adcli.weights_id import bundle_id

CALIBRATION = "calibration.json"
BACKUP = "calibration.prev.json"
CALIBRATION_VERSION = 1
PIXEL_QUANTILE = 0.999  # of all calibration-normal pixels: the contour level on heatmaps
PROTOTYPE_SIZE = 16
# `--category auto` compares an image's thumbnail with up to EXEMPLARS training thumbnails per
# category (nearest neighbour: products with several looks stay one category). UNKNOWN_CATEGORY
# beyond PROTOTYPE_MARGIN × the 99th-percentile nearest-exemplar distance of that category's normal
# images: wide enough that a defect does not make a part "unknown", narrow enough that another
# product or a covered lens is.
EXEMPLARS = 64
PROTOTYPE_MARGIN = 3.0


def prototype_features(image: Image.Image) -> np.ndarray:
    """A coarse appearance signature: the image at 16×16 RGB, uint8, flattened (768,)."""
    return np.asarray(image.convert("RGB").resize((PROTOTYPE_SIZE, PROTOTYPE_SIZE), Image.BILINEAR), dtype=np.uint8).ravel()


def nearest_distances(queries: np.ndarray, exemplars: np.ndarray) -> np.ndarray:
    """Euclidean distance (in [0, 1] pixel units) from each query (Q, D) to its nearest exemplar (E, D) -> (Q,)."""
    q = queries.astype(np.float32)[:, None] / 255.0
    e = exemplars.astype(np.float32)[None] / 255.0
    return np.sqrt(((q - e) ** 2).sum(-1)).min(axis=1)


def _exemplar_radius(exemplars: np.ndarray, calib_feats: np.ndarray) -> float:
    """PROTOTYPE_MARGIN × the 99th percentile of held-out nearest-exemplar distances: the calibration
    images, and each exemplar against the others (leave one out)."""
    loo = [nearest_distances(exemplars[i:i + 1], np.delete(exemplars, i, axis=0))[0] for i in range(len(exemplars))] \
        if len(exemplars) > 1 else []
    held_out = np.concatenate([nearest_distances(calib_feats, exemplars), np.asarray(loo, np.float32)])
    return PROTOTYPE_MARGIN * float(np.quantile(held_out, 0.99))


def load_calibration(run: str | Path) -> dict | None:
    path = Path(run) / CALIBRATION
    if not path.is_file():
        return None
    try:
        cal = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BundleError(f"{path}: unreadable ({exc}); run `adcli calibrate` again") from None
    if cal.get("format_version", 0) > CALIBRATION_VERSION:
        raise BundleError(f"{path} was written by a newer adcli; upgrade adcli")
    return cal


def calibrate(run: str | Path, prepared: str | Path, target_fpr: float = 0.01, device: str = "auto",
              console: Console | None = None) -> dict:
    console = console or Console(stderr=True)
    run = Path(run)
    if not 0 < target_fpr < 1:
        raise AdcliError(f"--target-fpr must be between 0 and 1, got {target_fpr}")
    dev = resolve_device(device)
    model, meta = load_bundle(run, dev)
    categories, size = meta["categories"], meta["image_size"]
    manifest = load_manifest(prepared)
    calib = [s for s in manifest if s.split == "calib" and s.category in categories]
    missing = sorted(set(categories) - {s.category for s in calib})
    if missing:
        raise DataError(f"no calibration images for {', '.join(missing)} in {prepared} "
                        "(prepare with --calib-fraction > 0)")
    with Progress(TextColumn("calibrate"), BarColumn(), MofNCompleteColumn(), console=console, transient=True) as bar:
        task = bar.add_task("calibrate", total=len(calib))
        outputs = predict_samples(model, categories, calib, size, dev, run, run / ".calibration-cache",
                                  lambda: bar.advance(task))
    train_by_cat: dict[str, list[str]] = {}
    for s in manifest:
        if s.split == "train" and s.category in categories:
            train_by_cat.setdefault(s.category, []).append(s.path)
    rng = np.random.default_rng(0)
    exemplars = {}
    for cat, paths in sorted(train_by_cat.items()):
        chosen = sorted(rng.choice(len(paths), size=min(EXEMPLARS, len(paths)), replace=False))
        exemplars[cat] = np.stack([prototype_features(read_image(paths[i])) for i in chosen])

    per_category = {}
    for cat in categories:
        idx = [i for i, s in enumerate(calib) if s.category == cat]
        scores = outputs.scores[idx]
        th = fit_threshold(scores, target_fpr)
        calib_feats = np.stack([prototype_features(read_image(calib[i].path)) for i in idx])
        per_category[cat] = {
            "threshold": th.threshold, "target_fpr": target_fpr, "expected_fpr": th.expected_fpr,
            "fpr_upper_95": th.fpr_upper_95, "n_normals": th.n_normals, "n_above": th.n_above,
            "normals_needed": th.normals_needed,
            "pixel_threshold": float(np.quantile(outputs.maps[idx], PIXEL_QUANTILE)),
            "pixel_median": float(np.median(outputs.maps[idx])),
            "scores": score_summary(scores, th.transform),
            "exemplars": exemplars[cat].tolist(),
            "exemplar_radius": _exemplar_radius(exemplars[cat], calib_feats),
        }
        if th.too_few:
            console.print(f"[yellow]warning:[/] {cat}: {th.n_normals} calibration normals are too few to confirm a "
                          f"{target_fpr:.1%} false-alarm rate; {th.normals_needed} would be needed (95% confidence). "
                          f"The threshold comes from a fitted distribution; the bound shown is what the data support.",
                          highlight=False)
    calibration = {"format_version": CALIBRATION_VERSION, "adcli_version": __version__, "model_id": bundle_id(run),
                   "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "target_fpr": target_fpr,
                   "prepared": str(Path(prepared).resolve()), "categories": per_category}
    if (run / CALIBRATION).is_file():
        shutil.copy2(run / CALIBRATION, run / BACKUP)
    atomic_write_json(run / CALIBRATION, calibration)

    table = Table(title=f"calibration at target false-alarm rate {target_fpr:.1%}")
    for col in ("category", "normals", "threshold", "expected FPR", "FPR upper 95%", "pixel threshold"):
        table.add_column(col, justify="left" if col == "category" else "right")
    for cat, c in per_category.items():
        table.add_row(cat, str(c["n_normals"]), f"{c['threshold']:.5g}", f"{c['expected_fpr']:.2%}",
                      f"{c['fpr_upper_95']:.1%}", f"{c['pixel_threshold']:.4g}")
    console.print(table)
    console.print(f"calibration written to {run / CALIBRATION}")
    return calibration
