"""`adcli inspect`: score every image in a folder, safely enough to run from cron every minute.

Per file: one row in `results.jsonl` and `results.csv` and, for images not OK (`heatmaps`), a heatmap
picture with the calibrated defect contour, a header and a colour bar. Files already inspected with the
same model and unchanged content are skipped
(`force` redoes them). Writes are atomic, a lock keeps two runs from interleaving, and a run killed
at any moment and started again ends with exactly one row per file. Unreadable files become
ERROR rows with a one-line reason; the rest of the folder is processed.

This module is the orchestration; intake.py reads files, render.py draws heatmaps, adcli/routing.py
chooses categories and adcli/detector.py scores batches.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import os
import time
from pathlib import Path

import numpy as np
from rich.console import Console

from adcli.calibration import Calibration
from adcli.data.manifest import IMAGE_EXTENSIONS
from adcli.detector import Detector, ModelInput, Scored
from adcli.errors import DataError, ImageError, OutputError
from adcli.inspect.intake import OutputLock, display_path, file_identity, list_files, read_settled
from adcli.inspect.render import Caption, heatmap_name, render_heatmap
from adcli.io import atomic_write_bytes, atomic_write_json, atomic_write_text, decode_image
from adcli.journal import JournalWriter, compact, latest_by_path, read_journal
from adcli.progress import track
from adcli.thresholds import drift_z

RESULT_FIELDS = ("path", "sha256", "category", "score", "threshold", "verdict", "ms", "model_id", "heatmap", "error")
VERDICTS = ("OK", "DEFECT", "ERROR", "UNKNOWN_CATEGORY", "uncalibrated")
HEATMAPS = ("all", "defects", "none")  # defects: every scored image that is not OK
SCORES_ONLY_EXIT_CODE = 6  # never 0: a run without verdicts must not read as "no defects"
DRIFT_WINDOW = 50  # most recent OK images per category
DRIFT_MIN = 20
DRIFT_Z = 4.0
_ALREADY_DONE = object()


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
        be read or resemble no category; 6 = scored without verdicts (--scores-only, uncalibrated); else 0."""
        if self.counts.get("DEFECT", 0):
            return 1
        if self.errors or self.counts.get("UNKNOWN_CATEGORY", 0):
            return 3
        return SCORES_ONLY_EXIT_CODE if self.counts.get("uncalibrated", 0) else 0


def _drift(rows: list[dict], calibration: Calibration | None) -> dict:
    if calibration is None:
        return {}
    report = {}
    for cat, cal in calibration.categories.items():
        recent = [float(r["score"]) for r in rows if r["category"] == cat and r["verdict"] == "OK"][-DRIFT_WINDOW:]
        if cal.scores["n"] < DRIFT_MIN:  # a spread estimated from a handful of normals is noise
            report[cat] = {"n": len(recent), "z": None, "drift": False, "note": "too few calibration normals"}
            continue
        if len(recent) < DRIFT_MIN:
            report[cat] = {"n": len(recent), "z": None, "drift": False}
            continue
        z = drift_z(np.array(recent), cal.scores)
        report[cat] = {"n": len(recent), "z": round(z, 2), "drift": abs(z) > DRIFT_Z}
    return report


def _identity_now(path: Path) -> list[int] | None:
    try:
        return file_identity(os.stat(path))
    except OSError:
        return None


def _remove_stale_temporaries(out: Path) -> None:
    """Temporary files of an atomic write that a killed run left behind (.NAME.XXXX.tmp). Called under
    the lock, so no other run is writing them."""
    for folder in (out, out / "heatmaps"):
        for path in folder.glob(".*.tmp"):
            path.unlink(missing_ok=True)


def _write_tables(out: Path, rows: list[dict]) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=RESULT_FIELDS, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(out / "results.csv", buf.getvalue())


@dataclasses.dataclass
class _Pending:
    """A file that loaded as an image: its row so far, the image, and its load time."""

    row: dict
    image: object
    load_ms: float


class _FolderInspection:
    """One run over one folder: turns each file into a row (and a heatmap)."""

    def __init__(self, detector: Detector, folder: Path, out: Path, category: str | None, settle_seconds: float,
                 previous: dict, force: bool, heatmaps: str):
        self.detector, self.folder, self.out, self.heatmaps = detector, folder, out, heatmaps
        self.category = detector.fixed_category(category)  # None: routed a batch at a time
        self.settle_seconds, self.previous, self.force = settle_seconds, previous, force

    def load(self, path: Path):
        """Runs in a worker thread: -> ModelInput, a finished row (ERROR), or _ALREADY_DONE."""
        shown = display_path(path)
        row = {"path": shown, "sha256": "", "category": "", "score": "", "threshold": "", "verdict": "ERROR", "ms": "",
               "model_id": self.detector.model_id, "heatmap": "", "error": ""}
        t0 = time.perf_counter()
        done = self.previous.get(shown) if not self.force else None
        if done is not None and done.get("model_id") != self.detector.model_id:
            done = None
        if done is not None and done.get("file") is not None and done["file"] == _identity_now(path):
            return _ALREADY_DONE  # unchanged since it was inspected: not even read again
        try:
            data, st = read_settled(path, self.settle_seconds)
            row["sha256"], row["file"] = hashlib.sha256(data).hexdigest(), file_identity(st)
            if done is not None and done["sha256"] == row["sha256"]:
                return _ALREADY_DONE
            image = decode_image(data, shown)
        except ImageError as exc:
            row["error"] = str(exc)
            return row
        pending = _Pending(row, image, 0.0)
        loaded = self.detector.model_input(image, self.category, pending)
        pending.load_ms = (time.perf_counter() - t0) * 1e3
        return loaded

    @staticmethod
    def unknown(result: Scored) -> dict:
        """A routed file that resembles none of the model's categories -> its row."""
        pending: _Pending = result.loaded.payload
        pending.row.update(verdict="UNKNOWN_CATEGORY", error="resembles none of the model's categories",
                           ms=f"{pending.load_ms + result.route_ms:.1f}")
        return pending.row

    def finish(self, path: Path, result: Scored) -> tuple[dict, np.ndarray | None]:
        """A scored file -> its row, after its heatmap is on disk; and its (load, infer, write) ms."""
        pending: _Pending = result.loaded.payload
        row, cat = pending.row, result.loaded.category
        row["category"] = cat
        t0 = time.perf_counter()
        cal = self.detector.category_calibration(cat)
        verdict = cal.verdict(result.score) if cal else "uncalibrated"
        name = heatmap_name(path, self.folder)
        heatmap = self.out / "heatmaps" / name
        if self.heatmaps == "all" or (self.heatmaps == "defects" and verdict != "OK"):
            caption = Caption(row["path"], result.score, cal.threshold if cal else None, verdict)
            picture = render_heatmap(pending.image, result.anomaly_map, cal.display_range if cal else self.detector.map_range,
                                     cal.pixel_threshold if cal else None, caption)
            atomic_write_bytes(heatmap, picture)
            row["heatmap"] = f"heatmaps/{name}"
        else:
            heatmap.unlink(missing_ok=True)  # a heatmap from an earlier verdict would contradict this row
        write_ms = (time.perf_counter() - t0) * 1e3
        load_ms = pending.load_ms + result.route_ms  # reading, decoding, resizing and choosing the category
        row.update(score=f"{result.score:.6g}", threshold=f"{cal.threshold:.6g}" if cal else "", verdict=verdict,
                   ms=f"{load_ms + result.infer_ms + write_ms:.1f}")
        return row, np.array([load_ms, result.infer_ms, write_ms])


def inspect_folder(folder: str | Path, model_dir: str | Path, out: str | Path, category: str | None = None,
                   device: str = "auto", force: bool = False, settle_seconds: float = 2.0, lock_wait: float = 600.0,
                   console: Console | None = None, batch_size: int | None = None,
                   scores_only: bool = False, heatmaps: str = "defects", backend: str = "torch") -> InspectSummary:
    """scores_only: inspect with a model (or categories) not calibrated yet; their rows get the verdict
    `uncalibrated` and the run exits 6. Without it such a model is refused: it would pass every defect.
    heatmaps: which scored images get a heatmap picture: all, defects (every one not OK) or none.
    backend: torch, or onnx / openvino for the graph `adcli export` wrote."""
    if heatmaps not in HEATMAPS:
        raise DataError(f"--heatmaps must be one of {', '.join(HEATMAPS)}, got {heatmaps!r}")
    console = console or Console(stderr=True)
    folder, out, model_dir = Path(folder), Path(out), Path(model_dir)
    if folder.is_file():
        raise DataError(f"{folder} is a file; inspect takes a folder of images: give {folder.parent} (or put the "
                        "image in a folder of its own)")
    if not folder.is_dir():
        looks_like_file = folder.suffix.lower() in IMAGE_EXTENSIONS
        raise DataError(f"{'no such file or folder' if looks_like_file else 'folder not found'}: {folder}"
                        + ("; inspect takes a folder of images, not one file" if looks_like_file else ""))
    # One spelling per file: `in`, `./in/../in` and `/abs/in` must key the same journal rows.
    folder, out_real = folder.resolve(), out.resolve()
    if out_real == folder:
        raise DataError(f"--out {out} is the folder being inspected; choose another (a folder inside it is fine)")
    if out.exists() and not out.is_dir():
        raise OutputError(f"--out {out} is a file, not a folder")
    detector = Detector.load(model_dir, device, batch_size, backend)
    if detector.meta.get("unet_calls_per_image"):
        console.print(f"{detector.meta['method']}: {detector.meta['unet_calls_per_image']} UNet calls per image", highlight=False)
    missing = detector.uncalibrated(category)
    if missing and not scores_only:
        example = f" --category {missing[0]}" if len(detector.categories) > 1 else ""
        raise DataError(f"model {model_dir} has no threshold for {', '.join(missing)}, so no defect could be flagged. Run "
                        f"`adcli calibrate {model_dir} --data PREPARED` (or `--normals GOOD_IMAGES_FOLDER{example}`), "
                        f"or add --scores-only to record scores without verdicts (exit code {SCORES_ONLY_EXIT_CODE})")
    detector.fixed_category(category)  # a bad --category fails before anything is written
    out.mkdir(parents=True, exist_ok=True)
    (out / "heatmaps").mkdir(exist_ok=True)
    journal_path = out / "results.jsonl"
    with OutputLock(out, lock_wait):
        _remove_stale_temporaries(out)
        journal = read_journal(journal_path)
        if journal.damaged_lines:
            console.print(f"[yellow]warning:[/] {journal_path}: skipped {len(journal.damaged_lines)} damaged line(s) "
                          f"(line {', '.join(map(str, journal.damaged_lines[:5]))}); their files are inspected again",
                          highlight=False)
        previous = latest_by_path(journal.rows)
        files = list_files(folder, exclude=out_real)
        inspection = _FolderInspection(detector, folder, out, category, settle_seconds, previous, force, heatmaps)
        writer = JournalWriter(journal_path)
        run_rows: list[dict] = []
        skipped = 0
        timing = np.zeros(3)
        n_scored = 0
        try:
            with track(console, "inspect", len(files)) as task:
                for result in detector.stream(files, inspection.load):
                    task.advance()
                    if result.loaded is _ALREADY_DONE:
                        skipped += 1
                        continue
                    if result.unknown_category:
                        row = inspection.unknown(result)
                    elif isinstance(result.loaded, ModelInput):
                        row, times = inspection.finish(result.item, result)
                        timing += times
                        n_scored += 1
                    else:
                        row = result.loaded
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
        drift = _drift(all_rows, detector.calibration)
        summary = InspectSummary(run_rows, counts, skipped, *ms.tolist(), drift)
        atomic_write_json(out / "summary.json", {
            "folder": display_path(folder), "model": str(model_dir), "model_id": detector.model_id,
            "calibrated": detector.calibration is not None, "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "counts": counts, "skipped_already_inspected": skipped, "exit_code": summary.exit_code,
            "batch_size": detector.batch_size, "backend": detector.backend,
            "ms_per_image": {"load": round(ms[0], 1), "infer": round(ms[1], 1), "write": round(ms[2], 1)},
            "drift": drift})
    return summary
