"""`adcli inspect FILE [FILE...]`: judge exactly the given images, by hand or from a script.

A run over files is a folder run over a given list: the same rows in results.csv/.jsonl, summary.json,
heatmaps, skip of files already inspected, lock and exit codes (folder.py), so nothing downstream needs
to know which it was. The heatmaps are named as a run over the files' common folder would name them.
`file_lines` gives the one line per file that the command prints.
"""

from __future__ import annotations

import os
from pathlib import Path

from adcli.commands.inspect.folder import (InspectSummary, _check_heatmap_options, check_out_folder, inspect_folder,
                                          run_inspection)
from adcli.commands.inspect.intake import display_path
from adcli.core.errors import DataError, UsageError


def inspect_paths(paths: list[str | Path], model_dir: str | Path, out: str | Path, **options) -> InspectSummary:
    """The command's PATH...: one folder (every image below it), or one or more files (exactly those).
    Several folders, or folders mixed with files, are refused with one line. options: inspect_folder's."""
    paths = [Path(p) for p in paths]
    folders = [p for p in paths if p.is_dir()]
    if not paths:
        raise UsageError("give a folder of images, or image files")
    if len(paths) == 1 and (folders or not os.path.lexists(paths[0]) and not paths[0].suffix):
        return inspect_folder(paths[0], model_dir, out, **options)  # (a missing folder: "folder not found")
    if folders:
        raise UsageError(f"give one folder, or image files, not both: {display_path(folders[0])} is a folder"
                         if len(folders) < len(paths) else
                         f"give one folder at a time (got {len(folders)}: {', '.join(map(display_path, folders[:3]))})")
    return inspect_files(paths, model_dir, out, **options)


def inspect_files(files: list[str | Path], model_dir: str | Path, out: str | Path, category: str | None = None,
                  device: str = "auto", force: bool = False, settle_seconds: float = 2.0, lock_wait: float = 600.0,
                  console=None, batch_size: int | None = None, scores_only: bool = False, heatmaps: str = "defects",
                  backend: str = "torch", heatmap_format: str = "jpg",
                  require_self_check: bool = False) -> InspectSummary:
    """Judge exactly `files` (in the order given, each once) as inspect_folder judges a folder's files. A
    missing file is refused before anything is written (DataError); a file that is there but no image
    (text, a pipe, a broken link, damaged) gets its ERROR row, as in a folder."""
    _check_heatmap_options(heatmaps, heatmap_format)
    folder, files, out = _checked_files([Path(f) for f in files], Path(out))
    return run_inspection(folder, files, Path(model_dir), out, category, device, force, settle_seconds, lock_wait,
                          console, batch_size, scores_only, heatmaps, backend, heatmap_format, require_self_check)


def _checked_files(files: list[Path], out: Path) -> tuple[Path, list[Path], Path]:
    """(the files' common folder, the files spelt as a run over that folder lists them, --out), or one line."""
    if not files:
        raise UsageError("give at least one image file")
    missing = [f for f in files if not os.path.lexists(f)]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise DataError(f"no such file: {display_path(missing[0])}{more}; nothing was inspected")
    # One spelling per file, as a folder run has: `a.png`, `./x/../a.png` and `/abs/a.png` key the same row.
    # The parent is resolved, not the file: a link is judged (or refused) as a folder run sees it.
    unique = list(dict.fromkeys(f.absolute().parent.resolve() / f.name for f in files))
    folder = Path(os.path.commonpath([f.parent for f in unique]))
    check_out_folder(out)
    own = [f for f in unique if (out / "heatmaps").resolve() in f.parents]
    if own:
        raise UsageError(f"{display_path(own[0])} is one of inspect's heatmaps (in --out {out}); give the original image")
    return folder, unique, out


def file_lines(summary: InspectSummary, out: Path) -> list[str]:
    """One line per file of a run over files (summary.record["files"], in the order given): its verdict,
    normalised and raw score and heatmap; or why it has no new row (inspected before, being written)."""
    rows = {r["path"]: r for r in summary.rows}
    earlier = {r["path"]: r for r in summary.already}
    lines = []
    for shown in summary.record.get("files", []):
        if shown in rows:
            lines.append(row_line(rows[shown], out))
        elif shown in earlier:
            lines.append(f"{row_line(earlier[shown], out)}  (inspected before, unchanged: --force judges it again)")
        else:
            lines.append(f"WAITING  {shown}  still being written: not judged (a later run judges it)")
    return lines


def row_line(row: dict, out: Path) -> str:
    """`DEFECT  line/part.png  score 0.8312 (raw 4.43, threshold 2.48)  heatmap out/heatmaps/…`."""
    if row.get("verdict") == "ERROR":
        return f"ERROR  {row['path']}  {row.get('error', '')}"
    if row.get("score_normalised"):
        score = f"score {row['score_normalised']} (raw {row['score']}, threshold {row['threshold']})"
    else:
        score = f"raw score {row['score']} (uncalibrated: no threshold)"
    heatmap = f"  heatmap {display_path(out / row['heatmap'])}" if row.get("heatmap") else ""
    note = f"  ({row['note']})" if row.get("note") else ""
    return f"{row['verdict']}  {row['path']}  {score}{heatmap}{note}"
