"""`adcli inspect`: score every image in a folder, safely enough to run from cron every minute.

Per file: a heatmap overlay (with the calibrated defect contour) and one row in `results.jsonl`
and `results.csv`. Files already inspected with the same model and unchanged content are skipped
(`force` redoes them). Writes are atomic, a lock keeps two runs from interleaving, and a run killed
at any moment and started again ends with exactly one row per file. Unreadable files become
ERROR rows with a one-line reason; the rest of the folder is processed.
"""

from __future__ import annotations

import csv
import dataclasses
import errno
import fcntl
import hashlib
import io
import os
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageFilter
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from adcli.bundle import load_bundle
from adcli.calibrate import load_calibration, nearest_distances, prototype_features
from adcli.data.batches import model_input
from adcli.errors import AdcliError, DataError, ImageError
from adcli.heatmap import overlay
from adcli.io import atomic_write_bytes, atomic_write_json, atomic_write_text, decode_image
from adcli.journal import JournalWriter, compact, latest_by_path, read_journal
from adcli.runtime import resolve_device
from adcli.thresholds import drift_z
from adcli.weights_id import bundle_id

RESULT_FIELDS = ("path", "sha256", "category", "score", "threshold", "verdict", "ms", "model_id", "heatmap", "error")
VERDICTS = ("OK", "DEFECT", "ERROR", "UNKNOWN_CATEGORY", "uncalibrated")
MAX_FILE_BYTES = 512 * 2**20
DRIFT_WINDOW = 50  # most recent OK images per category
DRIFT_MIN = 20
DRIFT_Z = 4.0
LOCK_NAME = ".adcli-inspect.lock"


@dataclasses.dataclass
class InspectSummary:
    rows: list[dict]  # this run's rows
    counts: dict[str, int]
    skipped: int
    load_ms: float
    infer_ms: float
    write_ms: float
    drift: dict

    @property
    def errors(self) -> int:
        return self.counts.get("ERROR", 0)

    @property
    def exit_code(self) -> int:
        """1 = defects found (first: it is what a line supervisor must see); 3 = files that could not
        be read or resemble no category; else 0."""
        if self.counts.get("DEFECT", 0):
            return 1
        return 3 if self.errors or self.counts.get("UNKNOWN_CATEGORY", 0) else 0


def display_path(path: Path) -> str:
    """A printable, UTF-8-safe form of any file name (undecodable bytes become \\xNN)."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def list_files(folder: Path, exclude: Path | None = None) -> list[Path]:
    """Every non-hidden file below `folder`, sorted, without following directory symlinks (no loops)."""
    files = []
    for root, dirs, names in os.walk(folder, followlinks=False):
        root_path = Path(root)
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and (exclude is None or (root_path / d).resolve() != exclude))
        files += [root_path / n for n in sorted(names) if not n.startswith(".")]
    return files


def heatmap_name(path: Path, folder: Path) -> str:
    """A unique, flat, ASCII-safe file name for the heatmap of `path`."""
    rel = display_path(path.relative_to(folder))
    stem = "".join(c if c.isalnum() or c in "-_." else "_" for c in rel.rsplit(".", 1)[0].replace("/", "__"))
    # The hash of the absolute path keeps names unique when several folders share one --out.
    unique = hashlib.sha1(display_path(path.absolute()).encode()).hexdigest()[:8]
    return f"{stem[:120]}_{unique}_heatmap.png"


class _Lock:
    """An exclusive lock on the output folder; waits up to `wait` seconds for another run to finish."""

    def __init__(self, out: Path, wait: float):
        self.path = out / LOCK_NAME
        self.wait = wait

    def __enter__(self):
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        deadline = time.monotonic() + self.wait
        while True:
            try:
                fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.EACCES) or time.monotonic() >= deadline:
                    os.close(self.fd)
                    raise AdcliError(f"another adcli inspect is writing to {self.path.parent} "
                                     f"(waited {self.wait:.0f} s); try again later") from None
                time.sleep(0.2)
        return self

    def __exit__(self, *exc):
        fcntl.flock(self.fd, fcntl.LOCK_UN)
        os.close(self.fd)


def _read_settled(path: Path, settle_seconds: float) -> bytes:
    """The file's bytes, or ImageError if it cannot be read or is still being written."""
    try:
        before = os.stat(path)
    except OSError as exc:
        raise ImageError(f"cannot read {display_path(path)}: {exc.strerror or exc}") from None
    age = time.time() - before.st_mtime
    if age < settle_seconds:
        raise ImageError(f"file still being written (modified {age:.1f} s ago): {display_path(path)}")
    if before.st_size > MAX_FILE_BYTES:
        raise ImageError(f"file too large ({before.st_size / 2**20:.0f} MiB): {display_path(path)}")
    try:
        with open(path, "rb") as f:
            data = f.read()
        after = os.stat(path)
    except OSError as exc:
        raise ImageError(f"cannot read {display_path(path)}: {exc.strerror or exc}") from None
    if (after.st_size, after.st_mtime_ns) != (before.st_size, before.st_mtime_ns) or len(data) != after.st_size:
        raise ImageError(f"file still being written (size changed while reading): {display_path(path)}")
    return data


def display_range(cal: dict) -> tuple[float, float]:
    """Heatmap colour scale of a calibrated category: blue at the normal pixels' median, orange (¾ of
    the scale) at the pixel threshold, so what lights up is what the calibration calls abnormal."""
    low = cal.get("pixel_median", 0.0)
    return low, low + (cal["pixel_threshold"] - low) / 0.75


def _contour(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Outline (H, W) bool of a defect mask resized to the image size."""
    big = Image.fromarray((mask * 255).astype(np.uint8)).resize(size, Image.NEAREST)
    inner = big.filter(ImageFilter.MinFilter(3))
    return (np.asarray(big) > 0) & ~(np.asarray(inner) > 0)


def _render(image: Image.Image, anomaly_map: np.ndarray, value_range, pixel_threshold: float | None) -> bytes:
    picture = overlay(image, anomaly_map, value_range)
    if pixel_threshold is not None:
        arr = np.array(picture)
        arr[_contour(anomaly_map >= pixel_threshold, picture.size)] = (255, 255, 255)
        picture = Image.fromarray(arr)
    buf = io.BytesIO()
    picture.save(buf, format="PNG")
    return buf.getvalue()


class CategoryChooser:
    """`auto`: the category of the nearest exemplar thumbnail (from calibration), or UNKNOWN_CATEGORY
    when that exemplar is farther than its category's radius."""

    def __init__(self, categories: list[str], requested: str | None, calibration: dict | None):
        self.categories = categories
        self.requested = requested if requested not in (None, "auto") else None
        if self.requested is None and len(categories) > 1 and calibration is None:
            raise AdcliError("--category auto needs a calibrated model (adcli calibrate); "
                             f"or pass --category ({', '.join(categories)})")
        self.prototypes = None
        if self.requested is None and calibration is not None:
            cal = calibration["categories"]
            self.prototypes = {c: (np.asarray(cal[c]["exemplars"], np.uint8), cal[c]["exemplar_radius"])
                               for c in categories if c in cal}

    def __call__(self, image: Image.Image) -> str | None:
        if self.requested is not None:
            return self.requested
        if self.prototypes is None:
            return self.categories[0]
        feats = prototype_features(image)[None]
        dist = {c: float(nearest_distances(feats, ex)[0]) for c, (ex, _) in self.prototypes.items()}
        best = min(dist, key=dist.get)
        return best if dist[best] <= self.prototypes[best][1] else None


def _drift(rows: list[dict], calibration: dict | None) -> dict:
    if calibration is None:
        return {}
    report = {}
    for cat, cal in calibration["categories"].items():
        recent = [float(r["score"]) for r in rows if r["category"] == cat and r["verdict"] == "OK"][-DRIFT_WINDOW:]
        if cal["scores"]["n"] < DRIFT_MIN:  # a spread estimated from a handful of normals is noise
            report[cat] = {"n": len(recent), "z": None, "drift": False, "note": "too few calibration normals"}
            continue
        if len(recent) < DRIFT_MIN:
            report[cat] = {"n": len(recent), "z": None, "drift": False}
            continue
        z = drift_z(np.array(recent), cal["scores"])
        report[cat] = {"n": len(recent), "z": round(z, 2), "drift": abs(z) > DRIFT_Z}
    return report


def _write_tables(out: Path, rows: list[dict]) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=RESULT_FIELDS, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(out / "results.csv", buf.getvalue())


def inspect_folder(folder: str | Path, model_dir: str | Path, out: str | Path, category: str | None = None,
                   device: str = "auto", force: bool = False, settle_seconds: float = 2.0, lock_wait: float = 600.0,
                   console: Console | None = None) -> InspectSummary:
    console = console or Console(stderr=True)
    folder, out, model_dir = Path(folder), Path(out), Path(model_dir)
    if not folder.is_dir():
        raise DataError(f"folder not found: {folder}")
    dev = resolve_device(device)
    model, meta = load_bundle(model_dir, dev)
    calibration = load_calibration(model_dir)
    categories = meta["categories"]
    if category not in (None, "auto") and category not in categories:
        raise AdcliError(f"category '{category}' is not in this model ({', '.join(categories)})")
    choose = CategoryChooser(categories, category, calibration)
    model_id = bundle_id(model_dir)
    size = meta["image_size"]
    value_range = getattr(model, "map_range", None)
    out.mkdir(parents=True, exist_ok=True)
    (out / "heatmaps").mkdir(exist_ok=True)
    journal_path = out / "results.jsonl"
    with _Lock(out, lock_wait):
        previous = latest_by_path(read_journal(journal_path))
        files = list_files(folder, exclude=out.resolve())
        writer = JournalWriter(journal_path)
        run_rows: list[dict] = []
        skipped = 0
        timing = np.zeros(3)
        n_scored = 0
        try:
            columns = (TextColumn("inspect"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
            with Progress(*columns, console=console, transient=True) as bar:
                task = bar.add_task("inspect", total=len(files))
                for path in files:
                    bar.advance(task)
                    row, times = _inspect_one(path, folder, out, model, choose, calibration, model_id, size,
                                              value_range, dev, settle_seconds, previous, force)
                    if row is None:
                        skipped += 1
                        continue
                    if times is not None:
                        timing += times
                        n_scored += 1
                    writer.append(row)
                    previous[row["path"]] = row
                    run_rows.append(row)
                    if row["verdict"] == "ERROR":
                        console.print(f"[yellow]error:[/] {row['error']}", highlight=False)
                    if len(run_rows) % 25 == 0:
                        _write_tables(out, list(previous.values()))
        finally:
            writer.close()
        all_rows = list(previous.values())
        compact(journal_path, all_rows)
        _write_tables(out, all_rows)
        counts = {v: sum(r["verdict"] == v for r in run_rows) for v in VERDICTS}
        ms = timing / max(n_scored, 1)
        drift = _drift(all_rows, calibration)
        summary = InspectSummary(run_rows, counts, skipped, *ms.tolist(), drift)
        atomic_write_json(out / "summary.json", {
            "folder": display_path(folder), "model": str(model_dir), "model_id": model_id,
            "calibrated": calibration is not None, "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "counts": counts, "skipped_already_inspected": skipped, "exit_code": summary.exit_code,
            "ms_per_image": {"load": round(ms[0], 1), "infer": round(ms[1], 1), "write": round(ms[2], 1)},
            "drift": drift})
    return summary


def _inspect_one(path: Path, folder: Path, out: Path, model, choose: CategoryChooser, calibration: dict | None,
                 model_id: str, size: int, value_range, dev, settle_seconds: float, previous: dict, force: bool):
    """-> (row or None if already done, (load, infer, write) ms or None)."""
    shown = display_path(path)
    row = {"path": shown, "sha256": "", "category": "", "score": "", "threshold": "", "verdict": "ERROR", "ms": "",
           "model_id": model_id, "heatmap": "", "error": ""}
    t0 = time.perf_counter()
    try:
        data = _read_settled(path, settle_seconds)
        row["sha256"] = hashlib.sha256(data).hexdigest()
        done = previous.get(shown)
        if not force and done and done["sha256"] == row["sha256"] and done["model_id"] == model_id:
            return None, None
        image = decode_image(data, shown)
    except ImageError as exc:
        row["error"] = str(exc)
        return row, None
    cat = choose(image)
    if cat is None:
        row.update(verdict="UNKNOWN_CATEGORY", error="resembles none of the model's categories",
                   ms=f"{(time.perf_counter() - t0) * 1e3:.1f}")
        return row, None
    x = model_input(image, size).to(dev)
    t1 = time.perf_counter()
    output = model.predict(x, torch.tensor([model.categories.index(cat)], device=dev))
    anomaly_map = output.anomaly_map[0].float().cpu().numpy()
    score = float(output.score[0])
    t2 = time.perf_counter()
    cal = calibration["categories"].get(cat) if calibration else None
    pixel_threshold = cal["pixel_threshold"] if cal else None
    shown_range = display_range(cal) if cal else value_range
    name = heatmap_name(path, folder)
    atomic_write_bytes(out / "heatmaps" / name, _render(image, anomaly_map, shown_range, pixel_threshold))
    t3 = time.perf_counter()
    verdict = "uncalibrated" if cal is None else ("DEFECT" if score >= cal["threshold"] else "OK")
    row.update(category=cat, score=f"{score:.6g}", threshold=f"{cal['threshold']:.6g}" if cal else "", verdict=verdict,
               ms=f"{(t3 - t0) * 1e3:.1f}", heatmap=f"heatmaps/{name}")
    return row, np.array([t1 - t0, t2 - t1, t3 - t2]) * 1e3
