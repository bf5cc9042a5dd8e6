"""What comes into `adcli inspect`: the files to look at, read only once they have settled, and the
lock that keeps two runs from writing to one output folder (filelock: Linux, macOS, Windows)."""

from __future__ import annotations

import dataclasses
import os
import stat
import time
from pathlib import Path

from filelock import FileLock, Timeout

from adcli.core.errors import AdcliError, ImageError

MAX_FILE_BYTES = 512 * 2**20
READ_TIMEOUT_SECONDS = 60.0  # a file that takes longer to read (a stalled share) becomes an ERROR row
LOCK_NAME = ".adcli-inspect.lock"
# A camera PC's clock may run ahead of this one: a modification time further in the future than this
# says nothing about whether the file is still being written (see read_settled).
CLOCK_AHEAD_TOLERANCE = 1.0
# Every character that would make two names print alike or break a line gets an escape of its own; the
# backslash itself is escaped, so `new\nline.png` (a real newline) and `new\\nline.png` (a backslash and
# an n) stay two keys (on Windows, where a backslash is the separator and never part of a name, it is
# left alone). Undecodable bytes arrive as surrogates (surrogateescape) and become \xNN with NN >= 80,
# which no control character (\x00-\x1f, \x7f) uses.
_ESCAPES = ({ord("\\"): "\\\\"} if os.sep != "\\" else {}) | {ord("\n"): "\\n", ord("\r"): "\\r", ord("\t"): "\\t"} \
    | {c: f"\\x{c:02x}" for c in [*range(32), 0x7F] if c not in (9, 10, 13)} \
    | {0xDC00 + b: f"\\x{b:02x}" for b in range(0x80, 0x100)}


def display_path(path: Path | str) -> str:
    """A printable one-line, UTF-8-safe form of any file name, and a one-to-one one: two different names
    never give the same string (it keys inspect's journal rows and heatmap names)."""
    return os.fsencode(path).decode("utf-8", "surrogateescape").translate(_ESCAPES)


@dataclasses.dataclass
class Listing:
    files: list[Path]  # every non-hidden file, in walk order
    unlisted: dict[Path, str]  # folders that could not be read -> why (their files are not in `files`)


def walk_files(folder: Path, exclude: Path | None = None) -> Listing:
    """Every non-hidden file below `folder` (sorted, depth first; directory symlinks not followed, so no
    loops) and the folders that could not be listed, with the reason. A loop instead of recursion: a
    tree 1,000 folders deep is walked like any other. `exclude`: a folder left out (inspect's --out)."""
    skip = _inode(exclude) if exclude is not None else None
    files: list[Path] = []
    unlisted: dict[Path, str] = {}
    stack = [folder]
    while stack:
        here = stack.pop()
        try:
            with os.scandir(here) as it:
                entries = sorted(it, key=lambda e: e.name)
            subfolders = [Path(e.path) for e in entries if not e.name.startswith(".") and _is_folder(e)
                          and not e.is_symlink() and (skip is None or _inode(Path(e.path)) != skip)]
        except OSError as exc:
            unlisted[here] = exc.strerror or str(exc)
            continue
        files += [Path(e.path) for e in entries if not e.name.startswith(".") and not _is_folder(e)]
        stack += reversed(subfolders)
    return Listing(files, unlisted)


def list_files(folder: Path, exclude: Path | None = None) -> list[Path]:
    """`walk_files`' files (for callers that only warn about what they cannot read)."""
    return walk_files(folder, exclude).files


def _is_folder(entry: os.DirEntry) -> bool:
    """A folder, or a link to one (never followed: no loops, nothing counted twice)."""
    try:
        return entry.is_dir()
    except OSError:
        return False  # listed as a file: reading it says what is wrong, in an ERROR row


def _inode(path: Path) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def file_kind(mode: int) -> str:
    for test, name in ((stat.S_ISFIFO, "a named pipe"), (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISDIR, "a folder")):
        if test(mode):
            return name
    return "not a regular file"


def file_identity(st: os.stat_result) -> list[int]:
    """Size, modification time and inode: unchanged means the file was not rewritten (no need to hash it)."""
    return [st.st_size, st.st_mtime_ns, st.st_ino]


class StillWriting(ImageError):
    """A file modified too recently to be final: not judged now, and no ERROR row; a later run reads it."""


def clock_ahead_seconds(st: os.stat_result) -> float:
    """How far in the future a file's modification time lies (0 when it does not, beyond the tolerance)."""
    ahead = st.st_mtime - time.time()
    return ahead if ahead > CLOCK_AHEAD_TOLERANCE else 0.0


def read_settled(path: Path, settle_seconds: float, timeout: float = READ_TIMEOUT_SECONDS) -> tuple[bytes, os.stat_result]:
    """(the file's bytes, its stat); StillWriting if it was modified within `settle_seconds`; ImageError if
    it is not a regular file, cannot be read or takes longer than `timeout` seconds to read. A file whose
    modification time lies in the future (a camera PC with its clock ahead) is settled once its size and
    time have not changed for `settle_seconds`."""
    try:
        before = os.stat(path)
    except OSError as exc:
        raise ImageError(f"cannot read {display_path(path)}: {exc.strerror or exc}") from None
    if not stat.S_ISREG(before.st_mode):
        raise ImageError(f"not an image file ({file_kind(before.st_mode)}): {display_path(path)}")
    if clock_ahead_seconds(before):
        time.sleep(settle_seconds)
        try:
            again = os.stat(path)
        except OSError as exc:
            raise ImageError(f"cannot read {display_path(path)}: {exc.strerror or exc}") from None
        if (again.st_size, again.st_mtime_ns) != (before.st_size, before.st_mtime_ns):
            raise StillWriting(f"file still being written (size changed within {settle_seconds:g} s): {display_path(path)}")
    elif (age := time.time() - before.st_mtime) < settle_seconds:
        raise StillWriting(f"file still being written (modified {age:.1f} s ago): {display_path(path)}")
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
        raise StillWriting(f"file still being written (size changed while reading): {display_path(path)}")
    return data, after


class OutputLock:
    """An exclusive lock on the output folder; waits up to `wait` seconds for another run to finish."""

    def __init__(self, out: Path, wait: float):
        self.out, self.wait = out, wait
        self.path = out / LOCK_NAME
        self.lock = FileLock(str(self.path), timeout=wait)
        self.held_inode: tuple[int, int] | None = None

    def __enter__(self):
        try:
            self.lock.acquire(poll_interval=0.2)
        except Timeout:
            raise AdcliError(f"another adcli inspect is writing to {self.out} (waited {self.wait:.0f} s); "
                             "try again later") from None
        self.held_inode = _inode(self.path)
        return self

    def __exit__(self, *exc):
        self.lock.release()

    def lost(self) -> bool:
        """Whether the lock file this lock holds is no longer the one at its path (the output folder was
        deleted or replaced): another run could then lock the same folder while this one writes to it."""
        return _inode(self.path) != self.held_inode

    def take_again(self) -> None:
        """After `lost`: the output folder re-created and locked anew, at once; AdcliError when another
        run already holds it (this one must stop writing there)."""
        self.lock.release()
        (self.out / "heatmaps").mkdir(parents=True, exist_ok=True)
        self.lock = FileLock(str(self.path), timeout=0)
        try:
            self.lock.acquire()
        except Timeout:
            raise AdcliError(f"{self.out} was deleted and another adcli inspect now writes to it; this one stops "
                             "(one process per output folder)") from None
        self.held_inode = _inode(self.path)
