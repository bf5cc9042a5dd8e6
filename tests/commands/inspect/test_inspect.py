"""inspect for cron: bad input, idempotency, auto category, kill-and-rerun, concurrent runs; and --watch,
the long-running inspection that loads the model once and takes new files as they come."""

import io
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
from rich.console import Console

from adcli.core import io as aio
from adcli.commands.calibrate import calibrate
from adcli.core.errors import DataError
from adcli.commands.inspect import inspect_folder
from adcli.commands.inspect.folder import FAR_NOTE, watch_folder
from adcli.commands.inspect.journal import read_journal
from adcli.model.recipe import load_recipe
from adcli.commands.train import train
from tests.conftest import save_png, wait_for


@pytest.fixture(scope="module")
def model(prepared, tmp_path_factory):
    run = train(prepared, tmp_path_factory.mktemp("insp") / "run", load_recipe("diffusionad", "test"), device="cpu")
    calibrate(run, prepared, 0.05, device="cpu")
    return run


def _good_png(path, seed=0):
    return save_png(path, np.random.default_rng(seed).integers(0, 255, (32, 32, 3), dtype=np.uint8))


def test_bad_input_corpus(model, demo_root, tmp_path, monkeypatch):
    folder = tmp_path / "in"
    shutil.copytree(demo_root / "disc" / "test" / "good", folder)
    (folder / "zero.png").write_bytes(b"")
    good = _good_png(tmp_path / "src.png")
    (folder / "truncated.png").write_bytes(good.read_bytes()[:100])
    (folder / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 64)
    (folder / "notes.txt").write_text("hello")
    save_png(folder / "huge.png", np.zeros((40, 40, 3), np.uint8))
    os.symlink("loop_b", folder / "loop_a")
    os.symlink("loop_a", folder / "loop_b")
    (folder / "sub").mkdir()
    os.symlink("..", folder / "sub" / "parent")  # a directory loop: never followed
    odd = os.path.join(os.fsencode(folder), b"caf\xe9.png")  # not UTF-8
    with open(odd, "wb") as f:
        f.write(good.read_bytes())
    monkeypatch.setattr(aio, "MAX_IMAGE_PIXELS", 32 * 32)  # huge.png (40×40) trips the bomb guard
    summary = inspect_folder(folder, model, tmp_path / "out", category="disc", device="cpu", settle_seconds=0)
    rows = {r["path"].rsplit("/", 1)[-1]: r for r in summary.rows}
    expected = {"zero.png": "empty file", "truncated.png": "corrupt or truncated", "corrupt.png": "corrupt",
                "notes.txt": "not an image", "huge.png": "too large", "loop_a": "cannot read", "loop_b": "cannot read"}
    for name, reason in expected.items():
        assert rows[name]["verdict"] == "ERROR" and reason in rows[name]["error"], (name, rows[name])
        assert "\n" not in rows[name]["error"]
    assert rows["caf\\xe9.png"]["verdict"] in ("OK", "DEFECT")  # odd names are processed, shown escaped
    assert summary.counts["ERROR"] == 7 and summary.exit_code in (1, 3)
    csv_text = (tmp_path / "out" / "results.csv").read_text(encoding="utf-8")
    assert csv_text.count("\n") == len(rows) + 1


def test_file_being_written_is_left_for_a_later_run_without_a_row(model, tmp_path):
    folder = tmp_path / "in"
    _good_png(folder / "a.png")
    first = inspect_folder(folder, model, tmp_path / "out", category="disc", device="cpu", settle_seconds=30)
    # Not judged yet and retried by itself: not something to page anybody about (no ERROR row, exit 0).
    assert first.rows == [] and first.still_writing == 1 and first.exit_code == 0
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["still_being_written"] == 1
    second = inspect_folder(folder, model, tmp_path / "out", category="disc", device="cpu", settle_seconds=0)
    assert second.rows[0]["verdict"] in ("OK", "DEFECT")
    assert len(read_journal(tmp_path / "out" / "results.jsonl").rows) == 1


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their permissions")
def test_unreadable_permissions(model, tmp_path):
    folder = tmp_path / "in"
    p = _good_png(folder / "locked.png")
    p.chmod(0)
    summary = inspect_folder(folder, model, tmp_path / "out", category="disc", device="cpu", settle_seconds=0)
    assert summary.rows[0]["verdict"] == "ERROR" and "Permission denied" in summary.rows[0]["error"]


def test_idempotent_and_force(model, demo_root, tmp_path):
    folder = demo_root / "weave" / "test"
    a = inspect_folder(folder, model, tmp_path / "out", category="weave", device="cpu", settle_seconds=0)
    b = inspect_folder(folder, model, tmp_path / "out", category="weave", device="cpu", settle_seconds=0)
    assert len(a.rows) == 5 and b.rows == [] and b.skipped == 5
    c = inspect_folder(folder, model, tmp_path / "out", category="weave", device="cpu", settle_seconds=0, force=True)
    assert len(c.rows) == 5
    assert len(read_journal(tmp_path / "out" / "results.jsonl").rows) == 5  # compacted: one row per file
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["calibrated"] and set(summary["counts"]) >= {"OK", "DEFECT", "ERROR", "UNKNOWN_CATEGORY"}


def test_auto_category_and_unknown(model, demo_root, tmp_path):
    from adcli.data.demo import generate_demo
    from adcli.data.manifest import prepare, write_prepared

    # Calibrate on more normals (another draw of the same two products), as a user would.
    more = generate_demo(tmp_path / "more", size=32, n_train=24, n_test_good=1, n_per_defect=1, seed=7)
    write_prepared(prepare(more, calib_fraction=0.25), tmp_path / "more_prepared")
    calibrated = tmp_path / "run"
    shutil.copytree(model, calibrated)
    calibrate(calibrated, tmp_path / "more_prepared", 0.05, device="cpu")
    summary = inspect_folder(demo_root, calibrated, tmp_path / "out", device="cpu", settle_seconds=0)
    by_path = {r["path"]: r for r in summary.rows}
    for path, row in by_path.items():
        assert row["category"] in ("disc", "weave") and row["score"] != "" and row["threshold"] != "", path
        if "ground_truth" in path:  # black-and-white masks are no product: far from both, scored all the same
            assert row["verdict"] in ("DEFECT", "UNKNOWN_CATEGORY") and FAR_NOTE in row["note"], path
        else:  # every product image is scored under its own category: defects are never hidden as UNKNOWN
            assert row["category"] == ("disc" if "/disc/" in path else "weave"), path
            assert row["verdict"] in ("OK", "DEFECT") and FAR_NOTE not in row["note"], path
    masks = [p for p in by_path if "ground_truth" in p]
    # A far image is DEFECT above its nearest product's threshold, UNKNOWN_CATEGORY (needs a look) below it.
    for threshold, verdict in ((-1e9, "DEFECT"), (1e9, "UNKNOWN_CATEGORY")):
        calibrate(calibrated, thresholds={"disc": threshold, "weave": threshold}, device="cpu")
        again = inspect_folder(demo_root / "disc" / "ground_truth", calibrated, tmp_path / f"out{verdict}", device="cpu",
                               settle_seconds=0)
        assert {r["verdict"] for r in again.rows} == {verdict} and len(again.rows) == len([p for p in masks if "/disc/" in p])
        assert all(float(r["threshold"]) == threshold and r["score"] != "" for r in again.rows)
        assert again.exit_code == (1 if verdict == "DEFECT" else 3)


def test_uncalibrated_model_is_refused_unless_scores_only(model, demo_root, tmp_path):
    from adcli.core.errors import DataError

    bare = tmp_path / "bare"
    shutil.copytree(model, bare)
    (bare / "calibration.json").unlink()
    with pytest.raises(DataError, match=r"no threshold for disc.*adcli calibrate .* --scores-only"):
        inspect_folder(demo_root / "disc" / "test", bare, tmp_path / "out", category="disc", device="cpu")
    assert not (tmp_path / "out").exists()  # refused before anything is written
    summary = inspect_folder(demo_root / "disc" / "test", bare, tmp_path / "out", category="disc", device="cpu",
                             settle_seconds=0, scores_only=True)
    assert {r["verdict"] for r in summary.rows} == {"uncalibrated"} and all(r["score"] for r in summary.rows)
    assert summary.exit_code == 6


def test_verdicts_follow_the_calibrated_threshold(model, demo_root, tmp_path):
    summary = inspect_folder(demo_root / "disc" / "test", model, tmp_path / "out", category="disc", device="cpu",
                             settle_seconds=0)
    for r in summary.rows:
        assert r["verdict"] == ("DEFECT" if float(r["score"]) >= float(r["threshold"]) else "OK")


@pytest.fixture
def half_defects(model, demo_root, tmp_path):
    """The model with disc's threshold set by hand at the median score of disc's test images: some
    OK, some DEFECT, whatever the tiny model learnt."""
    scores = sorted(float(r["score"]) for r in inspect_folder(
        demo_root / "disc" / "test", model, tmp_path / "scores", category="disc", device="cpu", settle_seconds=0,
        heatmaps="none").rows)
    copy = tmp_path / "half"
    shutil.copytree(model, copy)
    calibrate(copy, thresholds={"disc": scores[len(scores) // 2]}, device="cpu")
    return copy


def test_heatmaps_all_defects_or_none(half_defects, demo_root, tmp_path):
    model = half_defects
    folder = demo_root / "disc" / "test"
    for mode in ("all", "defects", "none"):
        summary = inspect_folder(folder, model, tmp_path / mode, category="disc", device="cpu", settle_seconds=0,
                                 heatmaps=mode)
        written = {p.name for p in (tmp_path / mode / "heatmaps").iterdir()}
        expected = {r["heatmap"].split("/")[-1] for r in summary.rows if r["heatmap"]}
        assert written == expected, mode
        wanted = [r for r in summary.rows if mode == "all" or (mode == "defects" and r["verdict"] != "OK")]
        assert len(expected) == len(wanted) and all(r["heatmap"] for r in wanted), mode
    assert any(r["verdict"] == "OK" for r in summary.rows) and any(r["verdict"] == "DEFECT" for r in summary.rows)


def test_heatmap_format_and_a_switch_of_it_leaves_one_picture_per_image(half_defects, demo_root, tmp_path):
    from PIL import Image

    folder, out = demo_root / "disc" / "test", tmp_path / "out"
    png = inspect_folder(folder, half_defects, out, category="disc", device="cpu", settle_seconds=0, heatmap_format="png")
    jpg = inspect_folder(folder, half_defects, out, category="disc", device="cpu", settle_seconds=0, force=True)
    png_names = [r["heatmap"] for r in png.rows if r["heatmap"]]
    jpg_names = [r["heatmap"] for r in jpg.rows if r["heatmap"]]
    assert png_names and all(n.endswith("_heatmap.png") for n in png_names)
    assert [n[:-4] for n in jpg_names] == [n[:-4] for n in png_names] and all(n.endswith(".jpg") for n in jpg_names)
    assert sorted(p.name for p in (out / "heatmaps").iterdir()) == sorted(n.split("/")[-1] for n in jpg_names)
    assert {Image.open(out / n).format for n in jpg_names} == {"JPEG"}
    with pytest.raises(DataError, match="--heatmap-format must be one of jpg, png"):
        inspect_folder(folder, half_defects, out, category="disc", device="cpu", heatmap_format="gif")


def test_review_page_shows_counts_and_every_defect(half_defects, demo_root, tmp_path):
    model = half_defects
    from adcli.core.errors import DataError
    from adcli.commands.report.review import render_review

    folder = tmp_path / "in"
    shutil.copytree(demo_root / "disc" / "test", folder)
    (folder / "broken.png").write_bytes(b"not a png")
    summary = inspect_folder(folder, model, tmp_path / "out", category="disc", device="cpu", settle_seconds=0)
    page = render_review(tmp_path / "out").read_text()
    defects = [r for r in summary.rows if r["verdict"] == "DEFECT"]
    assert defects and page.count("<img src='data:image/jpeg;base64,") == len(defects)  # their heatmaps
    assert page.count("<img src='data:image/png;base64,") == 1  # the score histogram
    assert f"<td><b>{len(defects)}</b></td>" in page and "broken.png" in page and "not an image" in page
    with pytest.raises(DataError, match="not an `adcli inspect` output folder"):
        render_review(folder)


def _inspect_cmd(folder, model, out):
    return [sys.executable, "-m", "adcli", "inspect", str(folder), "--model", str(model), "--out", str(out),
            "--category", "disc", "--device", "cpu", "--settle-seconds", "0"]


def _many_images(folder, n):
    for i in range(n):
        _good_png(folder / f"{i:03d}.png", seed=i)


def test_kill_and_rerun_leaves_one_row_per_image(model, tmp_path):
    folder, out, n = tmp_path / "in", tmp_path / "out", 150
    _many_images(folder, n)
    proc = subprocess.Popen(_inspect_cmd(folder, model, out), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    journal = out / "results.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and (not journal.exists() or journal.read_bytes().count(b"\n") < 5):
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    partial = journal.read_bytes().count(b"\n")
    assert 5 <= partial < n, "the run was not killed mid-way"
    rerun = subprocess.run(_inspect_cmd(folder, model, out), capture_output=True, text=True)
    assert rerun.returncode in (0, 1), rerun.stderr
    rows = read_journal(journal).rows
    assert sorted(r["path"] for r in rows) == sorted(str(p) for p in folder.iterdir())
    csv_lines = (out / "results.csv").read_text().strip().splitlines()
    assert len(csv_lines) == n + 1
    assert not [p for p in (out / "heatmaps").iterdir() if p.suffix not in (".jpg", ".png")]  # no temporary files left


def test_concurrent_runs_do_not_corrupt(model, tmp_path):
    folder, out = tmp_path / "in", tmp_path / "out"
    _many_images(folder, 15)
    procs = [subprocess.Popen(_inspect_cmd(folder, model, out), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    results = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode in (0, 1) for p in procs), results
    rows = read_journal(out / "results.jsonl").rows
    assert len(rows) == 15 and len({r["path"] for r in rows}) == 15
    assert any("15 already inspected" in err for _, err in results)  # the second waited, then skipped all


def test_lock_timeout_is_a_clear_error(model, tmp_path):
    from filelock import FileLock

    from adcli.core.errors import AdcliError
    from adcli.commands.inspect.intake import LOCK_NAME

    out = tmp_path / "out"
    out.mkdir()
    _good_png(tmp_path / "in" / "a.png")
    with FileLock(str(out / LOCK_NAME)):
        with pytest.raises(AdcliError, match="another adcli inspect is writing"):
            inspect_folder(tmp_path / "in", model, out, category="disc", device="cpu", lock_wait=0.3)


# ---- --watch ----------------------------------------------------------------------------------------
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


def _watch_after_a_first_file(run, tmp_path):
    """(folder, out, watcher): a watch started on an empty folder that has inspected a.png."""
    folder, out = tmp_path / "in", tmp_path / "out"
    folder.mkdir()
    watcher = Watcher(folder, run, out)
    try:
        _good_png(folder / "a.png", 1)
        wait_for(lambda: len(watcher.rows()) == 1, "the first file")
    except BaseException:
        watcher.close()
        raise
    return folder, out, watcher


def test_watch_inspects_each_new_file_once(model, tmp_path):
    folder, out, watcher = _watch_after_a_first_file(model, tmp_path)
    try:
        _good_png(folder / "b.png", 2)
        wait_for(lambda: len(watcher.rows()) == 2, "the second file")
        _good_png(folder / "c.png", 3)
        wait_for(lambda: len(watcher.rows()) == 3, "the third file")
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


def test_watch_rewrites_results_csv_at_most_every_30_s_and_when_it_ends(model, tmp_path):
    folder, out, watcher = _watch_after_a_first_file(model, tmp_path)
    try:
        assert (out / "results.csv").read_text().count("\n") == 2  # the first pass's table is due at once
        _good_png(folder / "b.png", 2)
        wait_for(lambda: len(watcher.rows()) == 2, "the second file")
        assert (out / "results.csv").read_text().count("\n") == 2  # within 30 s: not rewritten yet...
        assert len(read_journal(out / "results.jsonl", repair=False).rows) == 2  # ...while the journal has the row
    finally:
        watcher.close()
    assert (out / "results.csv").read_text().count("\n") == 3


def test_watch_force_redoes_inspected_files_in_its_first_pass_only(model, tmp_path):
    folder, out = tmp_path / "in", tmp_path / "out"
    _good_png(folder / "a.png")
    inspect_folder(folder, model, out, category="disc", device="cpu", settle_seconds=0)
    options = {"interval": 0.01, "category": "disc", "device": "cpu", "settle_seconds": 0}
    plain, forced = [], []
    watch_folder(folder, model, out, max_passes=2, on_pass=plain.append, **options)
    watch_folder(folder, model, out, max_passes=3, on_pass=forced.append, force=True, **options)
    assert plain == [] and [len(s.rows) for s in forced] == [1]


def test_watch_leaves_a_file_being_written_for_a_later_pass(model, tmp_path):
    folder, out = tmp_path / "in", tmp_path / "out"
    path = _good_png(folder / "a.png")
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
    run = tmp_path / "run"
    shutil.copytree(model, run)
    calibration_path = run / "calibration.json"
    calibration = json.loads(calibration_path.read_text())
    folder, out, watcher = _watch_after_a_first_file(run, tmp_path)
    try:
        aio.atomic_write_text(calibration_path, "{ not json")
        _good_png(folder / "b.png", 2)
        wait_for(lambda: "paused" in watcher.log.getvalue(), "the pause")
        time.sleep(0.3)
        assert len(watcher.rows()) == 1  # no verdict from a model whose thresholds cannot be read
        calibration["categories"]["disc"]["threshold"] *= 2
        aio.atomic_write_json(calibration_path, calibration)
        wait_for(lambda: len(watcher.rows()) == 2, "the file after the new calibration")
    finally:
        watcher.close()
    first, second = watcher.rows()
    assert float(second["threshold"]) == pytest.approx(2 * float(first["threshold"]), rel=1e-5)
    assert "loaded again" in watcher.log.getvalue()


def test_watch_pauses_while_its_folder_is_gone(model, tmp_path):
    folder, out, watcher = _watch_after_a_first_file(model, tmp_path)
    try:
        shutil.rmtree(folder)
        wait_for(lambda: "paused: folder not found" in watcher.log.getvalue(), "the pause")
        _good_png(tmp_path / "back" / "b.png", 2)
        os.rename(tmp_path / "back", folder)  # the folder returns whole, as a remounted share
        wait_for(lambda: len(watcher.rows()) == 2, "the file in the folder that came back")
    finally:
        watcher.close()
    assert watcher.log.getvalue().count("paused") == 1 and "resumed" in watcher.log.getvalue()


def test_watch_refuses_a_non_positive_interval(model, tmp_path):
    (tmp_path / "in").mkdir()
    with pytest.raises(DataError, match="positive number of seconds"):
        watch_folder(tmp_path / "in", model, tmp_path / "out", interval=0, category="disc", device="cpu")


def test_cli_watch_ends_on_sigterm_with_exit_0(model, tmp_path):
    folder, out = tmp_path / "in", tmp_path / "out"
    _good_png(folder / "a.png")
    proc = subprocess.Popen([sys.executable, "-m", "adcli", "inspect", str(folder), "--model", str(model), "--out",
                             str(out), "--category", "disc", "--device", "cpu", "--settle-seconds", "0", "--watch",
                             "0.1"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: len(read_journal(out / "results.jsonl", repair=False).rows) == 1,
                  "the watch's first row")
        time.sleep(0.3)
    finally:
        proc.send_signal(signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 0, stderr
    assert "1 file in" in stderr and "stopped after" in stderr
