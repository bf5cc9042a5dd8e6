"""The inspection journal: `results.jsonl`, one JSON line per inspected file, append-only.

A line is appended (and fsynced) only after the image's heatmap is safely on disk, so a run killed
at any moment leaves complete lines plus at most one partial last line, which the next run drops.
Rows are keyed by path: a later row for the same path replaces the earlier one when the journal is
compacted (atomically) at the end of a run.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from adcli.io import atomic_write_text


def read_journal(path: Path) -> list[dict]:
    """All complete rows; a partial trailing line (a killed write) is removed from the file."""
    if not path.is_file():
        return []
    data = path.read_bytes()
    rows, good_bytes = [], 0
    for line in data.splitlines(keepends=True):
        if not line.endswith(b"\n"):
            break
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            break
        good_bytes += len(line)
    if good_bytes != len(data):
        atomic_write_text(path, data[:good_bytes].decode("utf-8"))
    return rows


def latest_by_path(rows: list[dict]) -> dict[str, dict]:
    latest: dict[str, dict] = {}
    for row in rows:
        latest[row["path"]] = row
    return latest


class JournalWriter:
    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def append(self, row: dict) -> None:
        os.write(self.fd, (json.dumps(row, sort_keys=True) + "\n").encode("utf-8"))
        os.fsync(self.fd)

    def close(self) -> None:
        os.close(self.fd)


def compact(path: Path, rows: list[dict]) -> None:
    atomic_write_text(path, "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows))
