"""`adcli inspect`: score every image in a folder, safely enough to run from cron every minute, or
keep watching it with the model loaded once (`watch_folder`, `--watch`).

Per file: one row in `results.jsonl` and `results.csv` and, for images not OK (`heatmaps`), a heatmap
picture with the calibrated defect contour, a header and a colour bar. Files already inspected with the
same model and unchanged content are skipped
(`force` redoes them). Writes are atomic, a lock keeps two runs from interleaving, and a run killed
at any moment and started again ends with exactly one row per file. Unreadable files (and folders
that cannot be listed) become ERROR rows with a one-line reason; the rest of the folder is processed.
Files still being written get no row: a later run judges them. Rows that need a person and that no
finished run reported (the run that wrote them was killed) are reported, and counted in the exit
code, by the next run.

This module is the orchestration; intake.py reads files, render.py draws heatmaps, adcli/model/routing.py
chooses categories and adcli/inference/detector.py scores batches.
"""

from __future__ import annotations

import collections
import csv
import dataclasses
import enum
import errno
import hashlib
import io
import os
import threading
import time
from pathlib import Path
from typing import Callable, Union

import numpy as np
from PIL import Image
from rich.console import Console
from rich.markup import escape

from adcli.bundle.calibration import Calibration, weak_self_check_lines
from adcli.data.manifest import IMAGE_EXTENSIONS
from adcli.inference.detector import Detector, Judged, ToScore
from adcli.core.errors import AdcliError, DataError, ImageError, OutputError
from adcli.commands.inspect.intake import (Listing, OutputLock, StillWriting, clock_ahead_seconds, display_path, file_identity,
                                           read_settled, walk_files)
from adcli.commands.inspect.render import HEATMAP_FORMATS, Caption, heatmap_name, render_heatmap
from adcli.core.io import atomic_write_bytes, atomic_write_json, atomic_write_text, decode_image
from adcli.commands.inspect.journal import JournalWriter, compact, latest_by_path, read_journal, unreported
from adcli.core.progress import track
from adcli.bundle.calibration_files import CalibrationFiles
from adcli.bundle.model_bundle import Bundle
from adcli.stats.normalised import DECIMALS
from adcli.commands import synthetic_defects
from adcli.stats.thresholds import drift_z

# Appended, never reordered: tools on the line may read results.csv by column position.
RESULT_FIELDS = ("path", "sha256", "category", "score", "threshold", "verdict", "ms", "model_id", "heatmap", "error", "note",
                 "score_normalised")
VERDICTS = ("OK", "DEFECT", "ERROR", "UNKNOWN_CATEGORY", "uncalibrated")
NEEDS_A_PERSON = ("DEFECT", "ERROR", "UNKNOWN_CATEGORY")  # rows a run must report (exit code 1 or 3)
FAR_NOTE = "far from every trained product"
HEATMAPS = ("all", "defects", "none")  # defects: every scored image that is not OK
SCORES_ONLY_EXIT_CODE = 6  # never 0: a run without verdicts must not read as "no defects"
DRIFT_WINDOW = 50  # most recent OK images per category
DRIFT_MIN = 20
DRIFT_Z = 4.0
ERROR_RETRY_SECONDS = 60.0  # a watch tries an unchanged file that gave an ERROR row again after this long
WATCH_TABLES_SECONDS = 30.0  # a watch rewrites results.csv (and compacts the journal) at most this often


NEEDS_A_LOOK_EXIT_CODE = 3


@dataclasses.dataclass
class InspectSummary:
    rows: list[dict]  # this run's rows
    counts: dict[str, int]
    skipped: int
    load_ms: float
    infer_ms: float
    write_ms: float
    drift: dict
    seconds: float = 0.0  # wall time of the pass, listing to summary
    carried: list[dict] = dataclasses.field(default_factory=list)  # rows of a killed run, reported by this one
    still_writing: int = 0  # files left for a later run (no row)
    clock_ahead: float = 0.0  # the largest modification time in the future among the files judged (s)
    record: dict = dataclasses.field(default_factory=dict)  # what summary.json holds for this run
    already: list[dict] = dataclasses.field(default_factory=list)  # earlier rows of the files skipped as inspected

    @property
    def errors(self) -> int:
        return self.counts.get("ERROR", 0)

    @property
    def carried_counts(self) -> dict[str, int]:
        return {v: sum(r["verdict"] == v for r in self.carried) for v in NEEDS_A_PERSON}

    @property
    def exit_code(self) -> int:
        """1 = defects found (first: it is what a line supervisor must see); 3 = needs a look: files that
        could not be read or judged, or parts like no trained product; 6 = scored without verdicts
        (--scores-only, uncalibrated); else 0. Rows a killed run wrote and never reported count too."""
        total = collections.Counter(self.counts) + collections.Counter(self.carried_counts)
        if total["DEFECT"]:
            return 1
        if total["ERROR"] or total["UNKNOWN_CATEGORY"]:
            return NEEDS_A_LOOK_EXIT_CODE
        return SCORES_ONLY_EXIT_CODE if total["uncalibrated"] else 0


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


def _normalised_by_category(rows: list[dict]) -> dict:
    """summary.json's view of a run's scores on the scale every model shares (0.5 = threshold): per
    calibrated category, how many rows, their median and highest normalised score, and whose the highest is."""
    report = {}
    for cat in sorted({r["category"] for r in rows if r.get("score_normalised")}):
        mine = [r for r in rows if r["category"] == cat and r.get("score_normalised")]
        values = np.array([float(r["score_normalised"]) for r in mine])
        top = mine[int(values.argmax())]
        report[cat] = {"n": len(mine), "median": round(float(np.median(values)), DECIMALS), "max": float(values.max()),
                       "max_path": top["path"], "max_raw": float(top["score"])}
    return report


def _unchanged_since(done: dict | None, model_id: str, identity: list[int] | None) -> bool:
    """Whether `done`, a file's latest row, was made by this model from the file as it is now."""
    return (done is not None and done.get("model_id") == model_id and done.get("file") is not None
            and done["file"] == identity)


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
    image: Image.Image
    load_ms: float


class _Skipped(enum.Enum):
    """A file that gets no row in this run."""

    ALREADY_DONE = "inspected with this model, unchanged since"
    STILL_WRITING = "still being written: a later run judges it"


_Loaded = Union[ToScore[_Pending], _Skipped, dict]  # to judge; no row; or a finished (ERROR) row


class _FolderInspection:
    """One run over one folder: turns each file into a row (and a heatmap)."""

    def __init__(self, detector: Detector, folder: Path, out: Path, category: str | None, settle_seconds: float,
                 previous: dict, force: bool, heatmaps: str, heatmap_format: str):
        self.detector, self.folder, self.out, self.heatmaps = detector, folder, out, heatmaps
        self.heatmap_format = heatmap_format
        self.category = detector.fixed_category(category)  # None: routed a batch at a time
        self.settle_seconds, self.previous, self.force = settle_seconds, previous, force
        self.clock_ahead = 0.0  # the largest modification time in the future seen (s); loads run in threads
        self._clock_lock = threading.Lock()

    def load(self, path: Path) -> _Loaded:
        """Runs in a worker thread: the file read, checked and decoded."""
        shown = display_path(path)
        row = _error_row(shown, self.detector.model_id)  # filled in as the file gets further
        t0 = time.perf_counter()
        done = self.previous.get(shown) if not self.force else None
        if done is not None and done.get("model_id") != self.detector.model_id:
            done = None
        if _unchanged_since(done, self.detector.model_id, _identity_now(path)):
            return _Skipped.ALREADY_DONE  # unchanged since it was inspected: not even read again
        try:
            data, st = read_settled(path, self.settle_seconds)
            row["sha256"], row["file"] = hashlib.sha256(data).hexdigest(), file_identity(st)
            if done is not None and done["sha256"] == row["sha256"]:
                return _Skipped.ALREADY_DONE
            image = decode_image(data, shown)
        except StillWriting:
            return _Skipped.STILL_WRITING
        except ImageError as exc:
            row["error"] = str(exc)
            return row
        if ahead := clock_ahead_seconds(st):
            row["note"] = f"modified {ahead:.0f} s in the future: the clock of the PC that wrote it is off"
            with self._clock_lock:
                self.clock_ahead = max(self.clock_ahead, ahead)
        return ToScore(image, _Pending(row, image, (time.perf_counter() - t0) * 1e3), self.category)

    def finish(self, path: Path, pending: _Pending, judged: Judged) -> tuple[dict, np.ndarray]:
        """A judged file -> its row, after its heatmap is on disk; and its (load, infer, write) ms."""
        row, cat, verdict = pending.row, judged.category, judged.verdict
        row["category"] = cat
        t0 = time.perf_counter()
        cal = self.detector.category_calibration(cat)
        if judged.far_from_products:  # scored under its nearest product all the same
            row["note"] = "; ".join(filter(None, [f"{FAR_NOTE} (nearest: {cat})", row.get("note")]))
        names = {fmt: heatmap_name(path, self.folder, fmt) for fmt in HEATMAP_FORMATS}
        name = names[self.heatmap_format]
        if self.heatmaps == "all" or (self.heatmaps == "defects" and verdict != "OK"):
            caption = Caption(row["path"], judged.score, judged.threshold, verdict, judged.score_normalised)
            picture = render_heatmap(pending.image, judged.anomaly_map, cal.display_range if cal else self.detector.map_range,
                                     cal.pixel_threshold if cal else None, caption, self.heatmap_format)
            atomic_write_bytes(self.out / "heatmaps" / name, picture)
            row["heatmap"] = f"heatmaps/{name}"
            keep = {name}
        else:
            keep = set()
        for other in set(names.values()) - keep:  # an earlier verdict's (or format's) picture would contradict this row
            (self.out / "heatmaps" / other).unlink(missing_ok=True)
        write_ms = (time.perf_counter() - t0) * 1e3
        # reading, decoding, resizing and choosing the category
        load_ms = pending.load_ms + judged.prepare_ms + judged.route_ms
        row.update(score=f"{judged.score:.6g}", threshold=f"{judged.threshold:.6g}" if cal else "", verdict=verdict,
                   ms=f"{load_ms + judged.infer_ms + write_ms:.1f}",
                   score_normalised=f"{judged.score_normalised:.{DECIMALS}f}" if cal else "")
        return row, np.array([load_ms, judged.infer_ms, write_ms])


def _check_heatmap_options(heatmaps: str, heatmap_format: str) -> None:
    if heatmaps not in HEATMAPS:
        raise DataError(f"--heatmaps must be one of {', '.join(HEATMAPS)}, got {heatmaps!r}")
    if heatmap_format not in HEATMAP_FORMATS:
        raise DataError(f"--heatmap-format must be one of {', '.join(HEATMAP_FORMATS)}, got {heatmap_format!r}")


def _checked_folders(folder: Path, out: Path) -> tuple[Path, Path]:
    """The input folder (resolved) and --out, refused with one line where they cannot work."""
    if folder.is_file():
        raise DataError(f"{folder} is a file; inspect_folder takes a folder of images (inspect_files takes files)")
    if not folder.is_dir():
        looks_like_file = folder.suffix.lower() in IMAGE_EXTENSIONS
        raise DataError(f"{'no such file or folder' if looks_like_file else 'folder not found'}: {folder}")
    # One spelling per file: `in`, `./in/../in` and `/abs/in` must key the same journal rows.
    folder = folder.resolve()
    if out.resolve() == folder:
        raise DataError(f"--out {out} is the folder being inspected; choose another (a folder inside it is fine)")
    check_out_folder(out)
    return folder, out


def check_out_folder(out: Path) -> None:
    """--out must be a folder, or not there yet (it is made then)."""
    if out.exists() and not out.is_dir():
        raise OutputError(f"--out {out} is a file, not a folder")


def _load_detector(model_dir: Path, device: str, batch_size: int | None, backend: str, category: str | None,
                   scores_only: bool, console: Console, require_checked: bool = False) -> Detector:
    """The model, refused (DataError) when it has no thresholds for the categories it would judge. With
    --category auto, categories left out of a partial calibration are allowed where the router knows
    them: their images get the verdict `uncalibrated` (exit 6), never OK. A category the router does not
    know would send its images to the nearest calibrated product, where they could pass: refused."""
    detector = Detector.load(model_dir, device, batch_size, backend)
    if detector.test_profile_warning:
        console.print(f"[yellow]warning:[/] {escape(detector.test_profile_warning)}", highlight=False)
    missing = detector.uncalibrated(category)
    routed = detector.router.profiles if detector.router is not None else {}
    auto = category in (None, "auto")
    if missing and not scores_only and auto and len(missing) < len(detector.categories) and set(missing) <= set(routed):
        console.print(f"[yellow]warning:[/] not calibrated: {', '.join(missing)}; images routed there get the verdict "
                      f"'uncalibrated' (exit code {SCORES_ONLY_EXIT_CODE}). Calibrate with `adcli calibrate {model_dir} "
                      f"--normals GOOD_IMAGES_FOLDER --category {missing[0]}`", highlight=False)
    elif missing and not scores_only:
        example = f" --category {missing[0]}" if len(detector.categories) > 1 else ""
        raise DataError(f"model {model_dir} has no threshold for {', '.join(missing)}, so no defect could be flagged. Run "
                        f"`adcli calibrate {model_dir} --data PREPARED` (or `--normals GOOD_IMAGES_FOLDER{example}`), "
                        f"or add --scores-only to record scores without verdicts (exit code {SCORES_ONLY_EXIT_CODE})")
    detector.fixed_category(category)  # a bad --category fails before anything is written
    judged = detector.categories if category in (None, "auto") else [category]
    if require_checked:
        synthetic_defects.require_self_check(detector.calibration, judged, str(model_dir))
    for line in weak_self_check_lines(detector.calibration, str(model_dir), judged):
        console.print(f"[yellow]warning:[/] {line}", highlight=False)
    return detector


def _previous_rows(journal_path: Path, console: Console) -> dict:
    journal = read_journal(journal_path)
    if journal.damaged_lines:
        console.print(f"[yellow]warning:[/] {journal_path}: skipped {len(journal.damaged_lines)} damaged line(s) "
                      f"(line {', '.join(map(str, journal.damaged_lines[:5]))}); their files are inspected again",
                      highlight=False)
    return latest_by_path(journal.rows)


def inspect_folder(folder: str | Path, model_dir: str | Path, out: str | Path, category: str | None = None,
                   device: str = "auto", force: bool = False, settle_seconds: float = 2.0, lock_wait: float = 600.0,
                   console: Console | None = None, batch_size: int | None = None,
                   scores_only: bool = False, heatmaps: str = "defects", backend: str = "torch",
                   heatmap_format: str = "jpg", require_self_check: bool = False) -> InspectSummary:
    """scores_only: inspect with a model (or categories) not calibrated yet; their rows get the verdict
    `uncalibrated` and the run exits 6. Without it such a model is refused: it would pass every defect.
    heatmaps: which scored images get a heatmap picture: all, defects (every one not OK) or none;
    heatmap_format: jpg or png. backend: torch, or onnx / openvino for the graph `adcli export` wrote.
    Given files rather than a folder: adcli/commands/inspect/files.py (inspect_files).
    require_self_check: refuse (BundleError) a model whose calibration self-check is weak or missing."""
    _check_heatmap_options(heatmaps, heatmap_format)
    folder, out = _checked_folders(Path(folder), Path(out))
    return run_inspection(folder, None, Path(model_dir), out, category, device, force, settle_seconds, lock_wait,
                          console, batch_size, scores_only, heatmaps, backend, heatmap_format, require_self_check)


def run_inspection(folder: Path, files: list[Path] | None, model_dir: Path, out: Path, category: str | None,
                   device: str, force: bool, settle_seconds: float, lock_wait: float, console: Console | None,
                   batch_size: int | None, scores_only: bool, heatmaps: str, backend: str,
                   heatmap_format: str, require_self_check: bool = False) -> InspectSummary:
    """One run with checked arguments: every file below `folder`, or exactly `files` (all below `folder`,
    their common parent, which names their heatmaps as a run over that folder would)."""
    console = console or Console(stderr=True)
    detector = _load_detector(model_dir, device, batch_size, backend, category, scores_only, console, require_self_check)
    if cost := detector.model.cost_line():
        console.print(cost, highlight=False)
    out.mkdir(parents=True, exist_ok=True)
    (out / "heatmaps").mkdir(exist_ok=True)
    with OutputLock(out, lock_wait):
        _remove_stale_temporaries(out)
        previous = _previous_rows(out / "results.jsonl", console)
        job = _Pass(detector, folder, out, model_dir, category, settle_seconds, heatmaps, heatmap_format, console,
                    files=files)
        return job.run(previous, force)


def _watch_state(path: Path, previous: dict, model_id: str, settle_seconds: float, held: dict,
                 force: bool) -> str | None:
    """What a watch does with a file this pass: "done" (inspected with this model, unchanged since; never
    with `force`),
    "unsettled" (modified within `settle_seconds`: still being written, left for a later pass without an
    ERROR row), "held" (an ERROR row of its own, unchanged since and less than ERROR_RETRY_SECONDS ago:
    an unreadable file is not reported again every few seconds), else None: inspect it."""
    try:
        st = os.stat(path)
    except OSError:
        return None  # gone or unreadable: the load says which, in an ERROR row
    identity, shown = file_identity(st), display_path(path)
    if not force and _unchanged_since(previous.get(shown), model_id, identity):
        return "done"
    if not clock_ahead_seconds(st) and time.time() - st.st_mtime < settle_seconds:
        return "unsettled"  # (a time in the future says nothing: the load waits for the size to hold)
    hold = held.get(shown)
    if hold is not None and hold[0] == identity and time.monotonic() < hold[1]:
        return "held"
    return None


class _Pass:
    """One pass over a folder with a loaded model, under the output lock: a cron run is one pass, a watch
    runs one every few seconds with the same model and rows in memory."""

    def __init__(self, detector: Detector, folder: Path, out: Path, model_dir: Path, category: str | None,
                 settle_seconds: float, heatmaps: str, heatmap_format: str, console: Console, tables_every: float = 0.0,
                 files: list[Path] | None = None):
        """tables_every: seconds between rewrites of results.csv and the compacted results.jsonl (a watch:
        both grow with every file ever inspected, so rewriting them every few seconds would cost more than
        the images; the journal gets each row as it is made either way). files: exactly these files
        (below `folder`) instead of every file below `folder`."""
        self.detector, self.folder, self.out, self.model_dir = detector, folder, out, model_dir
        self.category, self.settle_seconds, self.heatmaps, self.console = category, settle_seconds, heatmaps, console
        self.heatmap_format, self.tables_every, self.files = heatmap_format, tables_every, files
        self._tables_at, self._tables_stale = -float("inf"), False

    def write_tables(self, previous: dict, compact_journal: bool) -> None:
        """results.csv (and with compact_journal the journal, one row per file) from `previous`."""
        all_rows = list(previous.values())
        if compact_journal:
            compact(self.out / "results.jsonl", all_rows)
        _write_tables(self.out, all_rows)
        self._tables_at, self._tables_stale = time.monotonic(), False

    def flush(self, previous: dict) -> None:
        """The tables brought up to date if rows came since they were last written (a watch's end)."""
        if self._tables_stale:
            self.write_tables(previous, compact_journal=True)

    def _tables_due(self) -> bool:
        return time.monotonic() - self._tables_at >= self.tables_every

    def run(self, previous: dict, force: bool, stop=None, held: dict | None = None, lock: OutputLock | None = None
            ) -> InspectSummary:
        """previous: path -> latest row, updated in place. stop: a threading.Event checked after every file
        (the rows so far are kept, the rest wait for the next run). held: given by a watch (path -> (file
        identity, monotonic time), updated in place): files are sorted out before loading (_watch_state).
        lock: a watch's output lock, checked before every row (see `_check_lock`)."""
        try:
            return self._run(previous, force, stop, held, lock)
        except OSError as exc:
            if exc.errno not in (errno.ENOSPC, errno.EDQUOT, errno.EROFS):
                raise
            # Said here because the tables are what a person opens first: they lag until a run finishes.
            raise OutputError(f"{exc.strerror}: {exc.filename or self.out}; every row made so far is in results.jsonl, "
                              "and results.csv and summary.json catch up at the next run that can write") from None

    def _run(self, previous: dict, force: bool, stop, held: dict | None, lock: OutputLock | None) -> InspectSummary:
        watching = held is not None
        detector, out, started = self.detector, self.out, time.perf_counter()
        journal_path = out / "results.jsonl"
        waiting = unreported(previous)  # rows of a killed run: reported at the end of this one
        listing = walk_files(self.folder, exclude=out.resolve()) if self.files is None else Listing(self.files, {})
        files = listing.files
        skipped = still_writing = 0
        already: list[dict] = []  # the rows of the files skipped as inspected and unchanged since
        if watching:
            states = [_watch_state(f, previous, detector.model_id, self.settle_seconds, held, force) for f in files]
            skipped, still_writing = states.count("done"), states.count("unsettled")
            files = [f for f, state in zip(files, states) if state is None]
        inspection = _FolderInspection(detector, self.folder, out, self.category, self.settle_seconds, previous, force,
                                       self.heatmaps, self.heatmap_format)
        run_rows: list[dict] = []
        timing = np.zeros(3)
        n_scored = 0

        def keep(row: dict, path: Path | None) -> None:
            if lock is not None:
                _check_lock(lock, self.console)
            if row["verdict"] in NEEDS_A_PERSON:
                row["reported"] = False
            writer.append(row)
            previous[row["path"]] = row
            run_rows.append(row)
            if row["verdict"] == "ERROR":
                self.console.print(f"[yellow]error:[/] {row['error']}", highlight=False)
                if watching and path is not None:
                    held[row["path"]] = (_identity_now(path), time.monotonic() + ERROR_RETRY_SECONDS)
            self._tables_stale = True
            if len(run_rows) % 25 == 0 and self._tables_due():
                self.write_tables(previous, compact_journal=False)

        if files or listing.unlisted or not watching:
            writer = JournalWriter(journal_path)
            try:
                for where, why in listing.unlisted.items():
                    if watching and _held(held, display_path(where)):
                        continue
                    keep(_unlisted_row(where, why, detector.model_id), None)
                with track(self.console, "inspect", len(files)) as task:
                    for result in detector.stream(files, inspection.load):
                        task.advance()
                        if result.payload is _Skipped.ALREADY_DONE:
                            skipped += 1
                            already.append(previous[display_path(result.item)])
                            continue
                        if result.payload is _Skipped.STILL_WRITING:
                            still_writing += 1
                            continue
                        if result.judged is not None:
                            row, times = inspection.finish(result.item, result.payload, result.judged)
                            timing += times
                            n_scored += 1
                        else:
                            row = result.payload  # an ERROR row
                        keep(row, result.item)
                        if stop is not None and stop.is_set():
                            break
            finally:
                writer.close()
        counts = {v: sum(r["verdict"] == v for r in run_rows) for v in VERDICTS}
        ms = timing / max(n_scored, 1)
        all_rows = list(previous.values())
        drift = _drift(all_rows, detector.calibration)
        carried = [row for path, row in waiting.items() if previous.get(path) is row]  # not judged again since
        summary = InspectSummary(run_rows, counts, skipped, *ms.tolist(), drift, time.perf_counter() - started,
                                 carried=carried, still_writing=still_writing, clock_ahead=inspection.clock_ahead,
                                 already=already)
        if not watching or (self._tables_stale and self._tables_due()):
            self.write_tables(previous, compact_journal=True)
        summary.record = {
            "folder": display_path(self.folder), "model": str(self.model_dir), "model_id": detector.model_id,
            "calibrated": detector.calibration is not None, "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "counts": counts, "skipped_already_inspected": skipped, "still_being_written": still_writing,
            "from_interrupted_run": {"counts": summary.carried_counts, "paths": [r["path"] for r in carried]},
            "exit_code": summary.exit_code,
            "batch_size": detector.batch_size, "backend": detector.backend, "watching": watching,
            "seconds": round(summary.seconds, 3),
            "ms_per_image": {"load": round(ms[0], 1), "infer": round(ms[1], 1), "write": round(ms[2], 1)},
            "drift": drift, "score_normalised": _normalised_by_category(run_rows),
            "self_check": synthetic_defects.summary_record(detector.calibration)}
        if self.files is not None:
            summary.record["files"] = [display_path(f) for f in self.files]
        if run_rows or carried or not watching:
            atomic_write_json(out / "summary.json", summary.record)
        if not watching:  # a watch marks its rows once it has printed them (watch_folder)
            self.mark_reported(summary, previous)
        return summary

    def mark_reported(self, summary: InspectSummary, previous: dict) -> None:
        """Journal that the rows needing a person in `summary` have been reported (after its summary is out)."""
        paths = [r["path"] for r in [*summary.rows, *summary.carried] if r.get("reported") is False]
        if not paths:
            return
        writer = JournalWriter(self.out / "results.jsonl")
        try:
            writer.mark_reported(paths)
        finally:
            writer.close()
        for path in paths:
            if path in previous and previous[path].get("reported") is False:
                previous[path]["reported"] = True


def _error_row(shown: str, model_id: str, error: str = "") -> dict:
    return {"path": shown, "sha256": "", "category": "", "score": "", "threshold": "", "verdict": "ERROR", "ms": "",
            "model_id": model_id, "heatmap": "", "error": error, "note": "", "score_normalised": ""}


def _unlisted_row(folder: Path, why: str, model_id: str) -> dict:
    """The ERROR row of a folder whose files cannot be listed (too long a path, no permission)."""
    shown = display_path(folder)
    return _error_row(shown, model_id, f"cannot list folder {shown}: {why}; its files are not inspected")


def _held(held: dict, shown: str) -> bool:
    """Whether a watch reported this unlistable folder less than ERROR_RETRY_SECONDS ago (else: report it
    now, and hold it that long), as it does for unreadable files."""
    hold = held.get(shown)
    if hold is not None and time.monotonic() < hold[1]:
        return True
    held[shown] = (None, time.monotonic() + ERROR_RETRY_SECONDS)
    return False


def _check_lock(lock: OutputLock, console: Console) -> None:
    """A watch's output folder deleted under it: re-create it with its lock (the rows in memory are
    written again at the next table write), or stop with one line when another run holds it now."""
    if lock.lost():
        lock.take_again()
        console.print(f"[yellow]warning:[/] the output folder {lock.out} was removed; re-created it with its lock",
                      highlight=False)


def bundle_identity(model_dir: Path) -> list:
    """What a watch compares to notice a retrained or recalibrated model: size, modification time and
    inode of the files a Detector reads (None for a missing one). Every router file is listed rather than
    the one calibration.json names: that would parse the calibration on every pass, and a recalibration
    replaces calibration.json (a new inode) anyway."""
    names = (Bundle.WEIGHTS, Bundle.RECIPE, Bundle.META, CalibrationFiles.CALIBRATION)
    files = [model_dir / name for name in names] + sorted(model_dir.glob("routing*.safetensors"))
    return [_identity_now(path) for path in files]


def watch_folder(folder: str | Path, model_dir: str | Path, out: str | Path, interval: float = 2.0,
                 stop: threading.Event | None = None, on_pass: Callable[[InspectSummary], None] | None = None,
                 max_passes: int | None = None, category: str | None = None, device: str = "auto",
                 force: bool = False, settle_seconds: float = 2.0, lock_wait: float = 600.0,
                 console: Console | None = None, batch_size: int | None = None, scores_only: bool = False,
                 heatmaps: str = "defects", backend: str = "torch", heatmap_format: str = "jpg",
                 require_self_check: bool = False) -> int:
    """Inspect `folder` every `interval` seconds with the model loaded once, until `stop` is set (or
    `max_passes` passes): a line PC pays torch's import and the model's loading once, not per cron run.
    The output lock is held throughout. Files still being written wait for a later pass; on_pass(summary)
    is called after each pass that wrote rows (or, first, reports rows a killed run never reported). Rows reach results.jsonl as they are made; results.csv is
    rewritten at most every WATCH_TABLES_SECONDS and when the watch ends. When the run folder's model, recipe, calibration or router
    changes, the model is loaded again before the next pass; while it cannot be (a calibration being
    written, a missing file), or while the folder is gone (an unmounted share), inspection pauses and says
    why once, rather than judge with stale thresholds or report nothing. force: only the first pass redoes inspected files. -> the number of passes."""
    _check_heatmap_options(heatmaps, heatmap_format)
    if not interval > 0:
        raise DataError(f"--watch must be a positive number of seconds, got {interval}")
    console = console or Console(stderr=True)
    stop = stop or threading.Event()
    model_dir = Path(model_dir)
    folder, out = _checked_folders(Path(folder), Path(out))
    identity = bundle_identity(model_dir)
    detector = _load_detector(model_dir, device, batch_size, backend, category, scores_only, console, require_self_check)
    out.mkdir(parents=True, exist_ok=True)
    (out / "heatmaps").mkdir(exist_ok=True)
    job = _Pass(detector, folder, out, model_dir, category, settle_seconds, heatmaps, heatmap_format, console,
                tables_every=WATCH_TABLES_SECONDS)
    passes, paused, held = 0, None, {}
    with OutputLock(out, lock_wait) as lock:
        _remove_stale_temporaries(out)
        previous = _previous_rows(out / "results.jsonl", console)
        console.print(f"watching {folder} every {interval:g} s with model {detector.model_id} (stop: Ctrl-C or SIGTERM)",
                      highlight=False)

        def pause(reason: str) -> None:
            nonlocal paused
            if reason != paused:
                console.print(f"[yellow]paused:[/] {reason}; retrying every {interval:g} s", highlight=False)
                paused = reason
            stop.wait(interval)

        mounted = os.path.ismount(folder)
        while not stop.is_set():
            if not folder.is_dir():  # a moved or deleted folder: say so, wait for it to return
                pause(f"folder not found: {folder}")
                continue
            if mounted and not os.path.ismount(folder):  # an unmounted share leaves an empty folder behind
                pause(f"{folder} is no longer a mounted file system")
                continue
            now = bundle_identity(model_dir)
            if now != identity:
                try:
                    job.detector = _load_detector(model_dir, device, batch_size, backend, category, scores_only, console,
                                                  require_self_check)
                except (AdcliError, OSError) as exc:
                    pause(f"the model changed and cannot be loaded: {exc}")
                    continue
                identity = now
                console.print(f"model or calibration changed: loaded again (model {job.detector.model_id})", highlight=False)
            if paused is not None:
                console.print("resumed", highlight=False)
                paused = None
            _check_lock(lock, console)
            summary = job.run(previous, force and passes == 0, stop=stop, held=held, lock=lock)
            passes += 1
            if (summary.rows or summary.carried) and on_pass is not None:
                on_pass(summary)
            job.mark_reported(summary, previous)  # printed (or handed to on_pass): reported
            if max_passes is not None and passes >= max_passes:
                break
            stop.wait(interval)
        job.flush(previous)  # after a failure the journal holds every row; the next run compacts it
    return passes
