"""Progress (adcli/core/progress.py): a bar in a terminal, plain lines in a log, nothing with --quiet."""

import io

import pytest
from rich.console import Console

from adcli.core import progress
from adcli.core.progress import Task, format_seconds, track


@pytest.fixture
def every_call(monkeypatch):
    monkeypatch.setattr(progress, "settings", progress.ProgressSettings(seconds=0.0, quiet=False))
    return progress.settings


def _log_console():
    buffer = io.StringIO()
    return Console(file=buffer, force_terminal=False, width=200), buffer


def test_a_line_says_how_far_what_values_and_when_it_ends(monkeypatch):
    clock = iter([100.0, 130.0])
    monkeypatch.setattr(progress.time, "monotonic", lambda: next(clock))
    task = Task("train", 40, 0, "epoch {epoch}/{epochs}, loss {loss:.3f}", None, None, 30.0)
    task.advance(10, epoch=2, epochs=8, loss=0.12345)
    assert task.line(130.0) == "train: 10/40 (25%), epoch 2/8, loss 0.123, elapsed 0m30s, ETA 1m30s"
    assert format_seconds(3725) == "1h02m"


def test_a_non_terminal_gets_plain_lines_and_a_log_gets_them_too(every_call):
    console, buffer = _log_console()
    logged = []
    with track(console, "train", 3, fields="loss {loss:.2f}", transient=False, log=logged.append) as task:
        for loss in (0.5, 0.4, 0.3):
            task.advance(loss=loss)
    lines = buffer.getvalue().splitlines()
    assert lines[0].startswith("train: 1/3 (33%), loss 0.50, elapsed") and "ETA" in lines[0]
    assert lines[-1].startswith("train: 3/3 (100%), loss 0.30") and lines[-1].endswith("done")
    assert logged == lines and "\x1b" not in buffer.getvalue()  # no bar, no colour codes in a log


def test_lines_come_at_most_every_interval(monkeypatch):
    monkeypatch.setattr(progress, "settings", progress.ProgressSettings(seconds=3600.0))
    console, buffer = _log_console()
    with track(console, "inspect", 500) as task:
        for _ in range(500):
            task.advance()
    assert buffer.getvalue() == ""  # a fast task within the interval says nothing (transient: no last line)


def test_quiet_prints_nothing_but_the_log_still_gets_lines(monkeypatch):
    monkeypatch.setattr(progress, "settings", progress.ProgressSettings(seconds=0.0, quiet=True))
    console, buffer = _log_console()
    logged = []
    with track(console, "train", 2, transient=False, log=logged.append) as task:
        task.advance()
        task.advance()
    assert buffer.getvalue() == "" and len(logged) == 3


def test_cli_quiet_and_verbose_set_the_levels(monkeypatch):
    import logging

    from typer.testing import CliRunner

    from adcli.cli import app

    monkeypatch.setattr(progress, "settings", progress.ProgressSettings())
    runner = CliRunner()
    assert runner.invoke(app, ["--quiet", "weights", "list"]).exit_code == 0
    assert progress.settings.quiet and logging.getLogger("adcli").level == logging.WARNING
    assert runner.invoke(app, ["--verbose", "weights", "list"]).exit_code == 0
    assert not progress.settings.quiet and logging.getLogger("adcli").level == logging.DEBUG
    logging.getLogger("adcli").setLevel(logging.INFO)


def test_tables_in_a_log_are_not_cut_to_80_columns():
    from rich.table import Table

    console, buffer = _log_console()
    console = Console(file=buffer, force_terminal=False)  # a log: 80 columns by default
    table = Table()
    for name in ("category", "source", "normals", "threshold", "target FPR", "expected FPR", "FPR upper 95%",
                 "pixel threshold"):
        table.add_column(name)
    table.add_row(*["magnetic_tile"] * 8)
    progress.print_table(console, table)
    assert "category" in buffer.getvalue() and "pixel threshold" in buffer.getvalue() and "…" not in buffer.getvalue()
