"""Progress of long work: a bar in a terminal; in a log (cron, `> file`, CI) a plain line every
`ProgressSettings.seconds` (default 30 s, env ADCLI_PROGRESS_SECONDS), so a log shows that the work
is alive, how far it is and when it should end.

    with track(console, "train", total=steps, fields="epoch {epoch}/{epochs}, loss {loss:.4f}") as task:
        task.advance(epoch=1, epochs=12, loss=0.3)

`quiet` (the CLI's --quiet) drops both the bar and the lines; a `log` callable (train.log) receives
the lines whatever the console is.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import time
from typing import Callable, Iterator

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


def _default_seconds() -> float:
    try:
        return max(0.0, float(os.environ.get("ADCLI_PROGRESS_SECONDS", "30")))
    except ValueError:
        return 30.0


@dataclasses.dataclass
class ProgressSettings:
    seconds: float = dataclasses.field(default_factory=_default_seconds)  # between plain lines
    quiet: bool = False


settings = ProgressSettings()  # the CLI's --quiet sets it, like a logging level


def print_table(console: Console, table) -> None:
    """A table in a terminal takes the terminal's width; in a log it is printed as wide as it needs,
    never cut to 80 columns ("categ…")."""
    if console.is_terminal or console.quiet:
        console.print(table)
    else:  # rich never prints wider than its console: a wide one on the same stream
        Console(file=console.file, width=400, color_system=None, soft_wrap=True).print(table)


def format_seconds(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    return f"{h}h{rest // 60:02d}m" if h else f"{rest // 60}m{rest % 60:02d}s"


class Task:
    """One tracked piece of work; `advance` after each unit (step, image)."""

    def __init__(self, description: str, total: int | None, completed: int, fields: str,
                 emit: Callable[[str], None] | None, bar: Progress | None, seconds: float):
        self.description, self.total, self.completed, self.fields = description, total, completed, fields
        self.emit, self.bar, self.seconds = emit, bar, seconds
        self.values: dict = {}
        self.start = time.monotonic()
        self.first_completed = completed
        self.last_line = self.start
        self.bar_task = bar.add_task(description, total=total, completed=completed, extra="") if bar else None

    def advance(self, n: int = 1, **values) -> None:
        self.completed += n
        self.values.update(values)
        if self.bar is not None:
            self.bar.update(self.bar_task, advance=n, extra=self._extra())
        now = time.monotonic()
        if self.emit is not None and now - self.last_line >= self.seconds:
            self.last_line = now
            self.emit(self.line(now))

    def _extra(self) -> str:
        if not self.fields:
            return ", ".join(f"{k} {v}" for k, v in self.values.items())
        try:
            return self.fields.format(**self.values)
        except (KeyError, ValueError, IndexError):
            return ""  # not every value known yet

    def line(self, now: float | None = None) -> str:
        """'train: 120/600 (20%), epoch 3/12, loss 0.0412, elapsed 2m10s, ETA 8m40s'."""
        elapsed = (now or time.monotonic()) - self.start
        parts = [f"{self.description}: {self.completed}" + (f"/{self.total} ({self.completed / self.total:.0%})"
                                                          if self.total else "")]
        if self._extra():
            parts.append(self._extra())
        parts.append(f"elapsed {format_seconds(elapsed)}")
        done_here = self.completed - self.first_completed
        if self.total and 0 < done_here and self.completed < self.total:
            parts.append(f"ETA {format_seconds(elapsed / done_here * (self.total - self.completed))}")
        return ", ".join(parts)


@contextlib.contextmanager
def track(console: Console, description: str, total: int | None, *, completed: int = 0, fields: str = "",
          transient: bool = True, log: Callable[[str], None] | None = None) -> Iterator[Task]:
    """A bar on a terminal console; plain lines every `settings.seconds` to a non-terminal console and
    to `log`. `fields`: a format string of the values passed to `advance`. At the end a non-transient
    task writes a last line (to the log, and to a non-terminal console)."""
    to_console = not settings.quiet and not console.is_terminal

    def emit(line: str) -> None:
        if to_console:
            console.print(line, highlight=False, markup=False)
        if log is not None:
            log(line)

    use_bar = not settings.quiet and console.is_terminal
    columns = (TextColumn(description), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[extra]}"),
               TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn())
    with (Progress(*columns, console=console, transient=transient) if use_bar else contextlib.nullcontext()) as bar:
        task = Task(description, total, completed, fields, emit if (to_console or log) else None, bar, settings.seconds)
        yield task
    if not transient and (to_console or log):
        emit(task.line() + " — done")
