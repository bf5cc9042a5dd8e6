"""What comes into `adcli inspect`: the files to look at, read only once they have settled, and the
lock that keeps two runs from writing to one output folder (filelock: Linux, macOS, Windows)."""

from __future__ import annotations

import os
import stat
import time
from pathlib import Path

from filelock import FileLock, Timeout

from adcli.errors import AdcliError, ImageError

MAX_FILE_BYTES = 512 * 2**20
READ_TIMEOUT_SECONDS = 60.0  # a file that takes longer to read (a stalled share) becomes an ERROR row
LOCK_NAME = ".adcli-inspect.lock"
_CONTROL = {c: f"\\x{c:02x}" for c in range(32)} | {0x7F: "\\x7f", ord("\n"): "\\n", ord("\r"): "\\r", ord("\t"): "\\t"}


def display_path(path: Path) -> str:
    """A printable one-line, UTF-8-safe form of any file name: undecodable bytes become \\xNN and
    control characters (a newline in a name) are escaped, so one file is one line everywhere."""
    return os.fsencode(path).decode("utf-8", "backslashreplace").translate(_CONTROL)


def list_files(folder: Path, exclude: Path | None = None) -> list[Path]:
    """Every non-hidden file below `folder`, sorted, without following directory symlinks (no loops)."""
    files = []
    for root, dirs, names in os.walk(folder, followlinks=False):
        root_path = Path(root)
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and (exclude is None or (root_path / d).resolve() != exclude))
        files += [root_path / n for n in sorted(names) if not n.startswith(".")]
    return files


def file_kind(mode: int) -> str:
    for test, name in ((stat.S_ISFIFO, "a named pipe"), (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISDIR, "a folder")):
        if test(mode):
            return name
    return "not a regular file"


def file_identity(st: os.stat_result) -> list[int]:
    """Size, modification time and inode: unchanged means the file was not rewritten (no need to hash it)."""
    return [st.st_size, st.st_mtime_ns, st.st_ino]


def read_settled(path: Path, settle_seconds: float, timeout: float = READ_TIMEOUT_SECONDS) -> tuple[bytes, os.stat_result]:
    """(the file's bytes, its stat), or ImageError if it is not a regular file, cannot be read, is still
    being written or takes longer than `timeout` seconds to read."""
    try:
        before = os.stat(path)
    except OSError as exc:
        raise ImageError(f"cannot read {display_path(path)}: {exc.strerror or exc}") from None
    if not stat.S_ISREG(before.st_mode):
        raise ImageError(f"not an image file ({file_kind(before.st_mode)}): {display_path(path)}")
    age = time.time() - before.st_mtime
    if age < settle_seconds:
        raise ImageError(f"file still being written (modified {age:.1f} s ago): {display_path(path)}")
    if before.st_size > MAX_FILE_BYTES:
        raise ImageError(f"file too large ({before.st_size / 2**20:.0f} MiB): {display_path(path)}")
    deadline = time.monotonic() + timeout
    try:
        # O_NONBLOCK: if a pipe replaced the file since the stat, open and read return at once.
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise ImageError(f"not an image file ({file_kind(os.fstat(fd).st_mode)}): {display_path(path)}")
            chunks = []
            while chunk := os.read(fd, 1 << 20):
                chunks.append(chunk)
                if time.monotonic() > deadline:
                    raise ImageError(f"reading took longer than {timeout:.0f} s: {display_path(path)}")
            after = os.fstat(fd)
        finally:
            os.close(fd)
    except OSError as exc:
        raise ImageError(f"cannot read {display_path(path)}: {exc.strerror or exc}") from None
    data = b"".join(chunks)
    if (after.st_size, after.st_mtime_ns) != (before.st_size, before.st_mtime_ns) or len(data) != after.st_size:
        raise ImageError(f"file still being written (size changed while reading): {display_path(path)}")
    return data, after


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
