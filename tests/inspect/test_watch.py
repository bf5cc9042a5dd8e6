"""inspect --watch: a long-running inspection that loads the model once and takes new files as they come."""

import io
import json
import os
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
from rich.console import Console

from adcli import io as aio
from adcli.errors import DataError
from adcli.inspect import watch_folder
from adcli.journal import read_journal
from tests.conftest import save_png


def _png(path, seed=0):
    return save_png(path, np.random.default_rng(seed).integers(0, 255, (32, 32, 3), dtype=np.uint8))


def _wait_for(condition, what, timeout=120.0):
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


class Watcher:
    """watch_folder in a thread, with its passes and console output kept."""

    def __init__(self, folder, model, out, **options):
        self.stop, self.passes, self.log, self.error = threading.Event(), [], io.StringIO(), None
        console = Console(file=self.log, width=300, force_terminal=False)
        options = {"category": "disc", "device": "cpu", "settle_seconds": 0, "interval": 0.05} | options

        def run():
            try:
                self.count = watch_folder(folder, model, out, stop=self.stop, on_pass=self.passes.append,
                                          console=console, **options)
            except BaseException as exc:  # re-raised by close()
                self.error = exc

        self.thread = threading.Thread(target=run)
        self.thread.start()

    def rows(self):
        return [row for summary in self.passes for row in summary.rows]

    def close(self):
        self.stop.set()
        self.thread.join(120)
        assert not self.thread.is_alive(), "the watch did not stop"
        if self.error is not None:
            raise self.error


def test_watch_inspects_each_new_file_once(model, tmp_path):
    folder, out = tmp_path / "in", tmp_path / "out"
    folder.mkdir()
    watcher = Watcher(folder, model, out)
    try:
        _png(folder / "a.png", 1)
        _png(folder / "b.png", 2)
        _wait_for(lambda: len(watcher.rows()) == 2, "the first two files")
        _png(folder / "c.png", 3)
        _wait_for(lambda: len(watcher.rows()) == 3, "the third file")
        time.sleep(0.3)  # several more passes: nothing is inspected twice
    finally:
        watcher.close()
    assert sorted(r["path"] for r in watcher.rows()) == [str(folder / n) for n in ("a.png", "b.png", "c.png")]
    assert all(r["verdict"] in ("OK", "DEFECT") for r in watcher.rows())
    assert watcher.count >= 3
    assert len(read_journal(out / "results.jsonl").rows) == 3
    assert (out / "results.csv").read_text().count("\n") == 4
    summary = json.loads((out / "summary.json").read_text())
    assert summary["watching"] and sum(summary["counts"].values()) == 1  # the last pass that wrote rows: c.png


def test_watch_leaves_a_file_being_written_for_a_later_pass(model, tmp_path):
    folder, out = tmp_path / "in", tmp_path / "out"
    path = _png(folder / "a.png")
    passes = []
    assert watch_folder(folder, model, out, interval=0.01, max_passes=3, on_pass=passes.append, category="disc",
                        device="cpu", settle_seconds=30) == 3
    assert passes == [] and not read_journal(out / "results.jsonl").rows  # no ERROR row for it either
    old = time.time() - 60
    os.utime(path, (old, old))
    watch_folder(folder, model, out, interval=0.01, max_passes=1, on_pass=passes.append, category="disc",
                 device="cpu", settle_seconds=30)
    assert [r["verdict"] in ("OK", "DEFECT") for s in passes for r in s.rows] == [True]


def test_watch_reports_an_unreadable_file_once_until_it_changes(model, tmp_path):
    folder, out = tmp_path / "in", tmp_path / "out"
    note = folder / "notes.txt"
    folder.mkdir()
    note.write_text("not an image")
    passes = []
    options = {"interval": 0.01, "on_pass": passes.append, "category": "disc", "device": "cpu", "settle_seconds": 0}
    watch_folder(folder, model, out, max_passes=4, **options)
    assert [r["verdict"] for s in passes for r in s.rows] == ["ERROR"]
    note.write_text("still not an image, but another file")
    watch_folder(folder, model, out, max_passes=2, **options)
    assert [r["verdict"] for s in passes for r in s.rows] == ["ERROR", "ERROR"]


def test_watch_takes_a_new_calibration_and_pauses_while_it_is_broken(model, tmp_path):
    import shutil

    run, folder, out = tmp_path / "run", tmp_path / "in", tmp_path / "out"
    shutil.copytree(model, run)
    folder.mkdir()
    calibration_path = run / "calibration.json"
    calibration = json.loads(calibration_path.read_text())
    watcher = Watcher(folder, run, out)
    try:
        _png(folder / "a.png", 1)
        _wait_for(lambda: len(watcher.rows()) == 1, "the first file")
        aio.atomic_write_text(calibration_path, "{ not json")
        _png(folder / "b.png", 2)
        _wait_for(lambda: "paused" in watcher.log.getvalue(), "the pause")
        time.sleep(0.3)
        assert len(watcher.rows()) == 1  # no verdict from a model whose thresholds cannot be read
        calibration["categories"]["disc"]["threshold"] *= 2
        aio.atomic_write_json(calibration_path, calibration)
        _wait_for(lambda: len(watcher.rows()) == 2, "the file after the new calibration")
    finally:
        watcher.close()
    first, second = watcher.rows()
    assert float(second["threshold"]) == pytest.approx(2 * float(first["threshold"]), rel=1e-5)
    assert "loaded again" in watcher.log.getvalue()


def test_watch_refuses_a_non_positive_interval(model, tmp_path):
    (tmp_path / "in").mkdir()
    with pytest.raises(DataError, match="positive number of seconds"):
        watch_folder(tmp_path / "in", model, tmp_path / "out", interval=0, category="disc", device="cpu")


def test_cli_watch_ends_on_sigterm_with_exit_0(model, tmp_path):
    folder, out = tmp_path / "in", tmp_path / "out"
    _png(folder / "a.png")
    proc = subprocess.Popen([sys.executable, "-m", "adcli", "inspect", str(folder), "--model", str(model), "--out",
                             str(out), "--category", "disc", "--device", "cpu", "--settle-seconds", "0", "--watch",
                             "0.1"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _wait_for(lambda: (out / "results.jsonl").exists() and (out / "results.jsonl").read_text().count("\n") == 1,
                  "the watch's first row")
        time.sleep(0.3)
    finally:
        proc.send_signal(signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 0, stderr
    assert "1 file in" in stderr and "stopped after" in stderr
