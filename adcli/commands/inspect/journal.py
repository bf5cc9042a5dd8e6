"""The inspection journal: `results.jsonl`, one JSON line per inspected file, append-only.

A line is appended (and fsynced) only after the image's heatmap is safely on disk, so a run killed
at any moment leaves complete lines plus at most one partial last line. A damaged line (a partial
write, a full disk, a hand edit) is skipped and reported, never a reason to drop the lines after
it; the journal is then rewritten, atomically, from every valid row. Rows are keyed by path: a later
row for the same path replaces the earlier one when the journal is compacted at the end of a run.

A row that needs a person (DEFECT, ERROR, UNKNOWN_CATEGORY) is appended with `"reported": false`; once
the run has written its summary (a watch: printed the pass), it appends a mark line
`{"reported": [path, ...]}` that sets the flag on those paths' latest rows. A run killed in between leaves
rows that no finished run has reported: the next run reports them (`unreported`). Rows without the flag
(older journals, OK rows) count as reported.
"""

from __future__ import annotations

import dataclasses
import errno
import json
import os
from pathlib import Path

from adcli.core.io import atomic_write_text


@dataclasses.dataclass
class JournalContents:
    rows: list[dict]
    damaged_lines: list[int]  # 1-based numbers of the lines that were skipped


def _line(line: bytes) -> dict | None:
    """A row (a dict with a path), a mark ({"reported": [paths]}), or None for a damaged line."""
    if not line.endswith(b"\n"):
        return None
    try:
        row = json.loads(line)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
    if not isinstance(row, dict):
        return None
    if isinstance(row.get("path"), str):
        return row
    marks = row.get("reported")
    return row if len(row) == 1 and isinstance(marks, list) and all(isinstance(p, str) for p in marks) else None


def read_journal(path: Path, repair: bool = True) -> JournalContents:
    """All valid rows, with marks applied in order. Damaged lines are skipped and, with `repair` (only
    under inspect's lock), the file is rewritten without them."""
    if not path.is_file():
        return JournalContents([], [])
    rows, damaged, latest = [], [], {}
    for number, line in enumerate(path.read_bytes().splitlines(keepends=True), start=1):
        entry = _line(line)
        if entry is None:
            damaged.append(number)
        elif "path" in entry:
            rows.append(entry)
            latest[entry["path"]] = entry
        else:
            for marked in entry["reported"]:
                if marked in latest and "reported" in latest[marked]:
                    latest[marked]["reported"] = True
    if damaged and repair:
        compact(path, rows)
    return JournalContents(rows, damaged)


def unreported(rows: dict[str, dict]) -> dict[str, dict]:
    """path -> latest row, of the rows no finished run has reported (see the module docstring)."""
    return {p: r for p, r in rows.items() if r.get("reported") is False}


def latest_by_path(rows: list[dict]) -> dict[str, dict]:
    latest: dict[str, dict] = {}
    for row in rows:
        latest[row["path"]] = row
    return latest


class JournalWriter:
    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_BINARY", 0), 0o644)

    def append(self, row: dict) -> None:
        """One line, all of it on disk, or OSError (a short write is retried, a write of nothing is ENOSPC)."""
        data = (json.dumps(row, sort_keys=True) + "\n").encode("utf-8")
        while data:
            written = os.write(self.fd, data)
            if written <= 0:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self.path))
            data = data[written:]
        os.fsync(self.fd)

    def mark_reported(self, paths: list[str]) -> None:
        if paths:
            self.append({"reported": paths})

    def close(self) -> None:
        os.close(self.fd)


def compact(path: Path, rows: list[dict]) -> None:
    atomic_write_text(path, "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows))
