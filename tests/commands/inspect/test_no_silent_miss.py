"""Fault injection, second pass: no defect may pass without some run reporting it, and no file may go
unjudged without a line that says so. Each test reproduces one fault found by attacking inspect as a
plant's IT person and a careless operator would."""

import itertools
import json
import os
import shutil
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import adcli.commands.inspect.folder
from adcli.commands.calibrate import calibrate
from adcli.cli import main
from adcli.core.errors import AdcliError
from adcli.commands.inspect import inspect_folder
from adcli.commands.inspect.folder import watch_folder
from adcli.commands.inspect.intake import LOCK_NAME, display_path
from adcli.commands.inspect.render import heatmap_name
from adcli.commands.inspect.journal import read_journal
from adcli.model.recipe import load_recipe
from adcli.commands.train import train
from tests.conftest import save_png, wait_for


@pytest.fixture(scope="module")
def run(prepared, tmp_path_factory):
    run = train(prepared, tmp_path_factory.mktemp("miss") / "run", load_recipe("knn", "test"), device="cpu")
    calibrate(run, prepared, 0.05, device="cpu")
    return run


@pytest.fixture(scope="module")
def flags_all(run, tmp_path_factory):
    """The same model with every image above threshold: each file is a DEFECT row."""
    copy = tmp_path_factory.mktemp("all") / "run"
    shutil.copytree(run, copy)
    calibrate(copy, thresholds={"disc": -1e9, "weave": -1e9}, device="cpu")
    return copy


def _images(folder: Path, n: int) -> Path:
    for i in range(n):
        save_png(folder / f"{i:02d}.png", np.random.default_rng(i).integers(0, 255, (32, 32, 3), dtype=np.uint8))
    return folder


def _inspect(model, folder, out, **kw):
    return inspect_folder(folder, model, out, **{"category": "disc", "device": "cpu", "settle_seconds": 0, **kw})


def _killed_after_its_rows(monkeypatch):
    """The run dies once every row is in the journal, before its summary (kill -9 at that moment)."""
    def dies(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(adcli.commands.inspect.folder, "_drift", dies)


def test_a_defect_row_of_a_killed_run_is_reported_by_the_next_run(flags_all, tmp_path, monkeypatch, capsys):
    folder, out = _images(tmp_path / "in", 3), tmp_path / "out"
    with monkeypatch.context() as m:
        _killed_after_its_rows(m)
        with pytest.raises(KeyboardInterrupt):
            _inspect(flags_all, folder, out)
    assert len(read_journal(out / "results.jsonl").rows) == 3  # the DEFECT rows are written, never reported
    monkeypatch.setattr("sys.argv", ["adcli", "inspect", str(folder), "--model", str(flags_all), "--out", str(out),
                                     "--category", "disc", "--settle-seconds", "0", "--device", "cpu"])
    with pytest.raises(SystemExit) as rerun:
        main()
    err = " ".join(capsys.readouterr().err.split())  # words: the console wraps where path lengths put it
    assert rerun.value.code == 1, err  # the page the killed run never caused
    assert "3 already inspected (--force judges them again)" in err  # at a desk, a rerun says how to re-judge
    assert "from an interrupted run, not reported before: 3 DEFECT" in err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["from_interrupted_run"]["counts"]["DEFECT"] == 3 and summary["exit_code"] == 1
    # Reported once: the run after that has nothing new to say.
    assert _inspect(flags_all, folder, out).exit_code == 0


def test_a_watch_reports_what_a_killed_run_never_did_in_its_first_pass(flags_all, tmp_path, monkeypatch):
    folder, out = _images(tmp_path / "in", 2), tmp_path / "out"
    with monkeypatch.context() as m:
        _killed_after_its_rows(m)
        with pytest.raises(KeyboardInterrupt):
            _inspect(flags_all, folder, out)
    passes = []
    watch_folder(folder, flags_all, out, interval=0.05, max_passes=2, on_pass=passes.append, category="disc",
                 device="cpu", settle_seconds=0)
    assert len(passes) == 1 and passes[0].rows == [] and len(passes[0].carried) == 2
    assert passes[0].exit_code == 1
    assert not [r for r in read_journal(out / "results.jsonl").rows if r.get("reported") is False]


def test_rows_of_a_finished_run_are_marked_reported_and_scores_are_unchanged(run, tmp_path):
    folder = _images(tmp_path / "in", 4)
    summary = _inspect(run, folder, tmp_path / "out", heatmaps="all")
    rows = read_journal(tmp_path / "out" / "results.jsonl").rows
    assert all(r.get("reported", True) for r in rows) and len(rows) == 4
    assert [r["score"] for r in rows] == [r["score"] for r in summary.rows]


def test_a_file_from_a_clock_ahead_is_judged_with_a_warning(run, tmp_path):
    folder = _images(tmp_path / "in", 2)
    ahead = time.time() + 86400
    os.utime(folder / "01.png", (ahead, ahead))
    summary = _inspect(run, folder, tmp_path / "out", settle_seconds=0.2)
    rows = {Path(r["path"]).name: r for r in summary.rows}
    assert rows["01.png"]["verdict"] in ("OK", "DEFECT") and "in the future" in rows["01.png"]["note"]
    assert summary.still_writing == 0 and summary.clock_ahead > 86000
    assert rows["00.png"]["note"] == ""


def test_a_watch_judges_a_file_from_a_clock_ahead(run, tmp_path):
    folder = _images(tmp_path / "in", 1)
    ahead = time.time() + 600
    os.utime(folder / "00.png", (ahead, ahead))
    passes = []
    watch_folder(folder, run, tmp_path / "out", interval=0.05, max_passes=1, on_pass=passes.append, category="disc",
                 device="cpu", settle_seconds=0.2)
    assert len(passes) == 1 and passes[0].rows[0]["verdict"] in ("OK", "DEFECT")


def test_a_file_still_growing_with_a_clock_ahead_waits(run, tmp_path, monkeypatch):
    folder = _images(tmp_path / "in", 1)
    ahead = time.time() + 600
    os.utime(folder / "00.png", (ahead, ahead))
    real_sleep = time.sleep

    def writer_appends(seconds):  # the camera writes more while adcli waits for the size to hold
        real_sleep(seconds)
        with open(folder / "00.png", "ab") as f:
            f.write(b"\0")

    monkeypatch.setattr(adcli.commands.inspect.intake.time, "sleep", writer_appends)
    summary = _inspect(run, folder, tmp_path / "out", settle_seconds=0.05)
    assert summary.rows == [] and summary.still_writing == 1


# Names whose escaped forms the old escaping confused: a real newline and a backslash followed by n, a
# control byte and the text \x01, an undecodable byte and the text \xff, a tab and \t, and so on.
_PIECES = [b"\\", b"n", b"x", b"0", b"1", b"f", b"t", b"\n", b"\t", b"\r", b"\x01", b"\x7f", b"\xff"]


def test_display_path_is_one_to_one_for_every_escaped_character():
    names = [b"".join(p) for k in range(1, 4) for p in itertools.product(_PIECES, repeat=k)]
    shown = {display_path(os.fsdecode(n)) for n in names}
    assert len(shown) == len(set(names))
    assert not any(c in s for s in shown for c in "\n\r\t\x01\x7f")


def test_two_files_whose_names_looked_alike_get_two_rows_and_two_heatmaps(run, tmp_path):
    folder = _images(tmp_path / "src", 2)
    (folder / "00.png").rename(folder / "new\nline.png")
    (folder / "01.png").rename(folder / "new\\nline.png")
    out = tmp_path / "out"
    first = _inspect(run, folder, out, heatmaps="all")
    assert len({r["path"] for r in first.rows}) == 2 and len({r["heatmap"] for r in first.rows}) == 2
    assert len(heatmap_name(folder / "new\nline.png", folder, "jpg")) > 0
    assert heatmap_name(folder / "new\nline.png", folder, "jpg") != heatmap_name(folder / "new\\nline.png", folder, "jpg")
    second = _inspect(run, folder, out)
    assert second.rows == [] and second.skipped == 2  # no verdict flips from run to run


def _nested(top: Path, name: str, depth: int, files: dict[str, bytes]) -> None:
    """`depth` folders called `name`, one in the other, with `files` in the last; made relative to each
    folder (a path past PATH_MAX cannot be made by its name, and pathlib's mkdir recurses)."""
    top.mkdir()
    fd = os.open(top, os.O_RDONLY)
    try:
        for _ in range(depth):
            os.mkdir(name, dir_fd=fd)
            child = os.open(name, os.O_RDONLY, dir_fd=fd)
            os.close(fd)
            fd = child
        for file_name, data in files.items():
            file_fd = os.open(file_name, os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd)
            os.write(file_fd, data)
            os.close(file_fd)
    finally:
        os.close(fd)


def _remove_nested(top: Path) -> None:
    """Delete a tree made by `_nested` without recursion (shutil.rmtree recurses once per level, and
    pytest's clean-up of old temporary folders would hit the recursion limit)."""
    fds = [os.open(top, os.O_RDONLY)]
    try:
        while True:  # down the only chain of folders, removing each folder's files
            names = os.listdir(fds[-1])
            folders = [n for n in names if _is_dir_at(fds[-1], n)]
            for name in set(names) - set(folders):
                os.unlink(name, dir_fd=fds[-1])
            if not folders:
                break
            fds.append(os.open(folders[0], os.O_RDONLY, dir_fd=fds[-1]))
        while len(fds) > 1:  # and back up
            child = fds.pop()
            os.close(child)
            (name,) = os.listdir(fds[-1]) or [None]
            os.rmdir(name, dir_fd=fds[-1])
    finally:
        for fd in fds:
            os.close(fd)
    top.rmdir()


def _is_dir_at(fd: int, name: str) -> bool:
    import stat

    return stat.S_ISDIR(os.stat(name, dir_fd=fd, follow_symlinks=False).st_mode)


def _png(seed: int) -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def test_a_tree_1100_folders_deep_is_walked(run, tmp_path):
    _nested(tmp_path / "in", "d", 1100, {f"{i}.png": _png(i) for i in range(3)})
    try:
        summary = _inspect(run, tmp_path / "in", tmp_path / "out")
    finally:
        _remove_nested(tmp_path / "in")
    assert len(summary.rows) == 3 and all(r["verdict"] in ("OK", "DEFECT") for r in summary.rows)


def test_a_file_beyond_path_max_is_an_error_row_not_silence(run, tmp_path):
    _nested(tmp_path / "in", "a" * 20, 250, {"part.png": _png(0)})  # 250 × 21 characters: past PATH_MAX (4096)
    try:
        summary = _inspect(run, tmp_path / "in", tmp_path / "out")
    finally:
        _remove_nested(tmp_path / "in")
    assert len(summary.rows) == 1 and summary.rows[0]["verdict"] == "ERROR", summary.rows
    assert "too long" in summary.rows[0]["error"] and summary.exit_code == 3


def _watching(model, folder, out, stop, errors):
    """A watch in a thread, returned once its first pass is over (its files written)."""
    first_pass = threading.Event()

    def target():
        try:
            watch_folder(folder, model, out, interval=0.05, stop=stop, category="disc", device="cpu", settle_seconds=0,
                         on_pass=lambda summary: first_pass.set())
        except AdcliError as exc:
            errors.append(str(exc))

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    assert first_pass.wait(60), "the watch's first pass"
    time.sleep(0.3)  # the pass's last writes (summary, marks) after on_pass
    return thread


def test_a_watch_whose_output_folder_is_deleted_takes_its_lock_again(run, tmp_path):
    folder, out = _images(tmp_path / "in", 1), tmp_path / "out"
    stop, errors = threading.Event(), []
    thread = _watching(run, folder, out, stop, errors)
    try:
        shutil.rmtree(out)
        wait_for(lambda: (out / LOCK_NAME).exists(), "the lock re-created")
        with pytest.raises(AdcliError, match="another adcli inspect is writing"):
            inspect_folder(folder, run, out, category="disc", device="cpu", lock_wait=0)
    finally:
        stop.set()
        thread.join(60)
    assert errors == []


def test_a_watch_stops_when_another_run_took_its_deleted_output_folder(run, tmp_path):
    folder, out = _images(tmp_path / "in", 1), tmp_path / "out"
    stop, errors = threading.Event(), []
    thread = _watching(run, folder, out, stop, errors)
    try:
        with _swap_out(out) as other:
            thread.join(60)
            assert other.lost() is False  # the second process keeps its lock; the watch stopped
    finally:
        stop.set()
        thread.join(60)
    assert len(errors) == 1 and "another adcli inspect now writes to it" in errors[0]


class _swap_out:
    """Delete the output folder and lock a new one at once, as a second watcher started then would."""

    def __init__(self, out: Path):
        from adcli.commands.inspect.intake import OutputLock

        shutil.rmtree(out)
        out.mkdir()
        self.lock = OutputLock(out, 0)

    def __enter__(self):
        return self.lock.__enter__()

    def __exit__(self, *exc):
        self.lock.__exit__(*exc)
