"""What training tells: the console, and the same lines, time-stamped and without colour, in RUN/train.log."""

from __future__ import annotations

import time
from pathlib import Path

from rich.console import Console
from rich.text import Text

from adcli.core.progress import track


class TrainOutput:
    """What training tells: the console, and the same lines, time-stamped and without colour, in
    RUN/train.log (appended to on --resume). Lines said before the run folder exists wait for it."""

    def __init__(self, console: Console):
        self.console = console
        self.file = None
        self.pending: list[str] = []
        self.where = "before training"  # for the log line of a stopped run: "in stage X, epoch 3/12"

    def open(self, path: Path, header: str) -> None:
        self.file = open(path, "a", encoding="utf-8")
        self.log(header)
        for line in self.pending:
            self._write(line)
        self.pending = []

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
            self.file = None

    def _write(self, line: str) -> None:
        self.file.write(line + "\n")
        self.file.flush()  # a killed run keeps every line said before it

    def log(self, text: str) -> None:
        line = f"{time.strftime('%Y-%m-%dT%H:%M:%S')} {text}"
        self._write(line) if self.file is not None else self.pending.append(line)

    def say(self, text: str) -> None:
        """`text` may hold rich markup ([yellow]warning:[/]); the log gets it plain."""
        self.console.print(text, highlight=False)
        self.log(Text.from_markup(text).plain)

    def progress(self, description: str, total: int, fields: str = "", completed: int = 0):
        return track(self.console, description, total, completed=completed, fields=fields, transient=False,
                     log=self.log)
