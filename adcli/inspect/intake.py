"""What comes into `adcli inspect`: the files to look at, read only once they have settled, and the
lock that keeps two runs from writing to one output folder (filelock: Linux, macOS, Windows)."""

from __future__ import annotations

import os
import time
from pathlib import Path

from filelock import FileLock, Timeout

from adcli.errors import AdcliError, ImageError

MAX_FILE_BYTES = 512 * 2**20
LOCK_NAME = ".adcli-inspect.lock"


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


def read_settled(path: Path, settle_seconds: float) -> bytes:
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


class OutputLock:
    """An exclusive lock on the output folder; waits up to `wait` seconds for another run to finish."""

    def __init__(self, out: Path, wait: float):
        self.lock = FileLock(str(out / LOCK_NAME), timeout=wait)
        self.out, self.wait = out, wait

    def __enter__(self):
        try:
            self.lock.acquire(poll_interval=0.2)
        except Timeout:
            raise AdcliError(f"another adcli inspect is writing to {self.out} (waited {self.wait:.0f} s); "
                             "try again later") from None
        return self

    def __exit__(self, *exc):
        self.lock.release()
