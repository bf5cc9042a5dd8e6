"""Inspect a folder: per image a heatmap overlay PNG and a row in results.csv.

Unreadable files become rows with verdict ERROR and a one-line reason; the rest are processed.
Until a model is calibrated its verdicts are "uncalibrated".
"""

from __future__ import annotations

import csv
import dataclasses
import io
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from adcli.bundle import load_bundle
from adcli.data.batches import load_model_input
from adcli.errors import AdcliError, DataError, ImageError
from adcli.heatmap import overlay
from adcli.io import atomic_write_bytes, atomic_write_text
from adcli.runtime import resolve_device
from adcli.weights_id import bundle_id

RESULT_FIELDS = ("path", "category", "score", "verdict", "ms", "heatmap", "error")


@dataclasses.dataclass
class InspectSummary:
    rows: list[dict]
    load_ms: float
    infer_ms: float
    write_ms: float

    @property
    def errors(self) -> int:
        return sum(r["verdict"] == "ERROR" for r in self.rows)


def list_files(folder: Path, exclude: Path | None = None) -> list[Path]:
    """Every non-hidden file below `folder`, sorted; the output folder is left out."""
    files = []
    for p in sorted(folder.rglob("*")):
        if any(part.startswith(".") for part in p.relative_to(folder).parts):
            continue
        if exclude is not None and exclude in p.parents:
            continue
        if p.is_file():
            files.append(p)
    return files


def choose_category(path: Path, categories: list[str], requested: str | None) -> str:
    if requested is not None:
        return requested
    if len(categories) == 1:
        return categories[0]
    matches = [c for c in categories if c in path.parts]
    if len(matches) == 1:
        return matches[0]
    raise ImageError(f"cannot tell the category of {path}: pass --category ({', '.join(categories)})")


def heatmap_name(path: Path, folder: Path) -> str:
    """A unique, flat file name for the heatmap of `path` (sub-folders joined with '__')."""
    rel = path.relative_to(folder)
    return "__".join(rel.parts[:-1] + (rel.stem,)) + "_heatmap.png"


def _results_csv(rows: list[dict]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=RESULT_FIELDS)
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def inspect_folder(folder: str | Path, model_dir: str | Path, out: str | Path, category: str | None = None,
                   device: str = "auto", console: Console | None = None) -> InspectSummary:
    console = console or Console(stderr=True)
    folder, out = Path(folder), Path(out)
    if not folder.is_dir():
        raise DataError(f"folder not found: {folder}")
    dev = resolve_device(device)
    model, meta = load_bundle(model_dir, dev)
    categories = meta["categories"]
    if category is not None and category not in categories:
        raise AdcliError(f"category '{category}' is not in this model ({', '.join(categories)})")
    size = meta["image_size"]
    model_id = bundle_id(model_dir)
    files = list_files(folder, exclude=out.resolve() if out.resolve() != folder.resolve() else None)
    if not files:
        raise DataError(f"no files in {folder}")
    (out / "heatmaps").mkdir(parents=True, exist_ok=True)
    rows: list[dict] = []
    load_ms = infer_ms = write_ms = 0.0
    n_ok = 0
    columns = (TextColumn("inspect"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, console=console, transient=True) as bar:
        task = bar.add_task("inspect", total=len(files))
        for path in files:
            bar.advance(task)
            t0 = time.perf_counter()
            try:
                cat = choose_category(path, categories, category)
                image, x = load_model_input(str(path), size)
            except ImageError as exc:
                rows.append({"path": str(path), "category": "", "score": "", "verdict": "ERROR", "ms": "",
                             "heatmap": "", "error": str(exc)})
                console.print(f"[yellow]skipped:[/] {exc}", highlight=False)
                continue
            t1 = time.perf_counter()
            output = model.predict(x.to(dev), torch.tensor([categories.index(cat)], device=dev))
            anomaly_map = output.anomaly_map[0].float().cpu().numpy()
            score = float(output.score[0])
            t2 = time.perf_counter()
            name = heatmap_name(path, folder)
            buf = io.BytesIO()
            overlay(image, anomaly_map, getattr(model, "map_range", None)).save(buf, format="PNG")
            atomic_write_bytes(out / "heatmaps" / name, buf.getvalue())
            t3 = time.perf_counter()
            load_ms += (t1 - t0) * 1e3
            infer_ms += (t2 - t1) * 1e3
            write_ms += (t3 - t2) * 1e3
            n_ok += 1
            rows.append({"path": str(path), "category": cat, "score": f"{score:.6f}", "verdict": "uncalibrated",
                         "ms": f"{(t3 - t0) * 1e3:.1f}", "heatmap": f"heatmaps/{name}", "error": ""})
            if len(rows) % 25 == 0:
                atomic_write_text(out / "results.csv", _results_csv(rows))
    atomic_write_text(out / "results.csv", _results_csv(rows))
    n = max(n_ok, 1)
    summary = InspectSummary(rows, load_ms / n, infer_ms / n, write_ms / n)
    errors = summary.errors
    console.print(f"{n_ok} image(s) inspected, {errors} error(s); model {model_id}; results: {out / 'results.csv'}, "
                  f"heatmaps: {out / 'heatmaps'}")
    console.print(f"Speed: {summary.load_ms:.1f}ms load, {summary.infer_ms:.1f}ms infer, "
                  f"{summary.write_ms:.1f}ms write per image")
    return summary
