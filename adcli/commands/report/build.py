"""Run a bundle on a prepared split and write metrics.json, metrics.csv, report.html."""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from adcli.bundle.calibration import Calibration
from adcli.data.manifest import SPLITS, load_manifest
from adcli.inference.detector import Detector
from adcli.core.errors import DataError
from adcli.core.io import atomic_write_json, atomic_write_text, read_image
from adcli.stats.metrics import METRIC_NAMES, category_metrics, defect_type_metrics
from adcli.commands.report.html import histogram_plot, render, roc_plot, triptych
from adcli.core.progress import print_table, track
from adcli.inference.predictions import ground_truth, predict_samples

GALLERY_SIZE = 3


def _gallery(outputs, idx: np.ndarray, labels: np.ndarray, masks: np.ndarray, value_range) -> dict:
    scores = outputs.scores[idx]
    order = np.argsort(scores)
    bad = [i for i in order if labels[i]]
    good = [i for i in order if not labels[i]]
    # Named for what they are: below a threshold or not, these are the likeliest misses and false alarms.
    groups = {"lowest-scoring defective images (likeliest misses)": bad[:GALLERY_SIZE],
              "highest-scoring good images (likeliest false alarms)": good[::-1][:GALLERY_SIZE],
              "highest-scoring defective images": bad[::-1][:GALLERY_SIZE]}
    gallery = {}
    for name, members in groups.items():
        cases = []
        for i in members:
            sample = outputs.samples[idx[i]]
            pictures = triptych(read_image(sample.path), outputs.maps[idx[i]], masks[i], value_range)
            cases.append({"pictures": pictures, "caption": f"{Path(sample.path).name} ({sample.defect}) score {scores[i]:.4f}"})
        gallery[name] = cases
    return gallery


CALIBRATED_FIELDS = ("threshold", "target_fpr", "expected_fpr", "fpr_upper_95", "observed_fpr", "detection_rate",
                     "self_check_auroc", "synthetic_large_found", "self_check_weak")


def _at_threshold(calibration: Calibration | None, cat: str, scores: np.ndarray, labels: np.ndarray) -> dict:
    """With a calibration: its threshold and bound, the false-alarm and detection rates seen on this split, and
    beside them its self-check: the AUROC on synthetic defects and the share of large ones found."""
    cal = calibration.categories.get(cat) if calibration else None
    if cal is None:
        return {k: None for k in CALIBRATED_FIELDS}
    flagged = cal.is_defect(scores)
    return {"threshold": cal.threshold, "target_fpr": cal.target_fpr, "expected_fpr": cal.expected_fpr,
            "fpr_upper_95": cal.fpr_upper_95,
            "observed_fpr": float(flagged[~labels].mean()) if (~labels).any() else None,
            "detection_rate": float(flagged[labels].mean()) if labels.any() else None,
            **_self_check_fields(cal.self_check)}


def _self_check_fields(check) -> dict:
    if check is None:
        return {"self_check_auroc": None, "synthetic_large_found": None, "self_check_weak": None}
    found, copies = check.count("large")
    return {"self_check_auroc": check.auroc, "synthetic_large_found": found / copies if copies else None,
            "self_check_weak": check.weak}


def _csv(rows: list[dict]) -> str:
    return _csv_of(rows, ["category", "images", "defects_without_mask", *METRIC_NAMES, *CALIBRATED_FIELDS, "ms_per_image", "device"])


def _csv_of(rows: list[dict], fields: list[str]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=fields)
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def _self_check_note(row: dict) -> str:
    """'; self-check: synthetic AUROC 0.94, large synthetic defects found 80.0%' (nothing when not run)."""
    if row.get("self_check_auroc") is None:
        return "; no self-check (calibrated with --no-self-check or by an older adcli)"
    weak = " [red](weak)[/]" if row["self_check_weak"] else ""
    return (f"; self-check: synthetic AUROC {row['self_check_auroc']:.2f}{weak}, large synthetic defects found "
            f"{_pct(row['synthetic_large_found'])}")


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{value:.1%}"


def make_report(model_dir: str | Path, prepared: str | Path, out: str | Path, split: str = "test",
                device: str = "auto", console: Console | None = None, batch_size: int | None = None,
                backend: str = "torch") -> list[dict]:
    """The only place that reads test labels and masks. Returns per-category rows plus the mean."""
    console = console or Console(stderr=True)
    model_dir, out = Path(model_dir), Path(out)
    if split not in SPLITS:
        raise DataError(f"unknown split '{split}' (choose {', '.join(SPLITS)})")
    detector = Detector.load(model_dir, device, batch_size, backend)
    meta, categories, size = detector.meta, detector.categories, detector.image_size
    samples = [s for s in load_manifest(prepared) if s.split == split and s.category in categories]
    if not samples:
        raise DataError(f"no '{split}' images of this model's categories ({', '.join(categories)}) in {prepared}")
    out.mkdir(parents=True, exist_ok=True)
    with track(console, "report", len(samples)) as task:
        outputs = predict_samples(detector, samples, out, task.advance)

    calibration = detector.calibration
    rows, sections, type_rows = [], [], []
    for cat in sorted({s.category for s in samples}):
        idx = np.array([i for i, s in enumerate(samples) if s.category == cat])
        labels = np.array([samples[i].label == 1 for i in idx])
        masks = np.stack([ground_truth(samples[i], size) for i in idx])
        # One colour scale per category (its maps' range): pictures compare, and weak contrast shows.
        category_range = (float(outputs.maps[idx].min()), float(outputs.maps[idx].max()))
        # Pixel metrics on the images whose truth is known: a defective image without a mask (missing
        # or dropped by prepare) is left out, not counted as all-normal pixels.
        known = np.array([samples[i].label == 0 or samples[i].mask is not None for i in idx])
        unmasked = int((~known).sum())
        pixels = labels[known].any()
        m = category_metrics(outputs.scores[idx], labels, outputs.maps[idx][known] if pixels else None,
                             masks[known] if pixels else None)
        if unmasked:
            console.print(f"[yellow]note:[/] {cat}: {unmasked} defective image(s) without a mask left out of the pixel "
                          "metrics", highlight=False)
        row = {"category": cat, "images": len(idx), "defects_without_mask": unmasked, **m,
               "ms_per_image": round(outputs.ms_per_image, 1),
               "device": outputs.device, **_at_threshold(calibration, cat, outputs.scores[idx], labels)}
        rows.append(row)
        type_rows.extend({"category": cat, **r} for r in defect_type_metrics(
            outputs.scores[idx], labels, [samples[i].defect for i in idx], outputs.maps[idx], masks, known))
        sections.append({"category": cat, "roc": roc_plot(outputs.scores[idx], labels, cat),
                         "hist": histogram_plot(outputs.scores[idx], labels, cat, row["threshold"]),
                         "gallery": _gallery(outputs, idx, labels, masks, category_range)})
    mean = {"category": "mean", "images": len(samples), "defects_without_mask": sum(r["defects_without_mask"] for r in rows),
            **{k: None for k in CALIBRATED_FIELDS},
            **{k: float(np.nanmean([r[k] for r in rows])) if any(r[k] == r[k] for r in rows) else math.nan
               for k in METRIC_NAMES},
            "ms_per_image": round(outputs.ms_per_image, 1), "device": outputs.device}
    rows.append(mean)

    model_name = f"{meta['method']} ({meta.get('profile') or 'paper'}) {detector.model_id}"
    atomic_write_json(out / "metrics.json", {"model": str(model_dir), "model_id": detector.model_id,
                                             "method": meta["method"], "profile": meta.get("profile"),
                                             "split": split, "categories": rows, "defect_types": type_rows})
    atomic_write_text(out / "metrics.csv", _csv(rows))
    atomic_write_text(out / "defect_types.csv", _csv_of(type_rows, ["category", "defect_type", "images", "image_auroc", "pixel_auroc"]))
    header = {"model": model_name, "split": split, "images": len(samples), "ms/image": f"{outputs.ms_per_image:.1f}",
              "device": outputs.device}
    atomic_write_text(out / "report.html", render(f"adcli report: {model_name}", header, rows, sections))

    table = Table(title=f"{model_name} on {split}")
    table.add_column("category")
    table.add_column("images", justify="right")
    for name in ("I-AUROC", "I-AP", "I-F1max", "P-AUROC", "P-AP", "P-F1max", "AUPRO"):
        table.add_column(name, justify="right")
    for r in rows:
        table.add_row(r["category"], str(r["images"]), *("–" if r[k] != r[k] else f"{100 * r[k]:.1f}" for k in METRIC_NAMES))
    print_table(console, table)
    by_type = Table(title="by defect type (image AUROC: that type vs the category's good images; pixel AUROC: within its images)")
    for name in ("category", "defect type", "images", "I-AUROC", "P-AUROC"):
        by_type.add_column(name, justify="left" if "type" in name or name == "category" else "right")
    for r in type_rows:
        by_type.add_row(r["category"], r["defect_type"], str(r["images"]),
                        *("–" if r[k] != r[k] else f"{100 * r[k]:.1f}" for k in ("image_auroc", "pixel_auroc")))
    print_table(console, by_type)
    for r in rows:
        if r.get("threshold") is not None:
            console.print(f"{r['category']}: threshold {r['threshold']:.5g} (target {r['target_fpr']:.1%}, expected "
                          f"{r['expected_fpr']:.1%}, 95% bound {r['fpr_upper_95']:.1%}): false alarms on good "
                          f"{_pct(r['observed_fpr'])}, defects detected {_pct(r['detection_rate'])}" + _self_check_note(r),
                          highlight=False)
    console.print(f"report: {out / 'report.html'}  metrics: {out / 'metrics.csv'}  ({outputs.ms_per_image:.1f} ms/image, {outputs.device})")
    return rows
