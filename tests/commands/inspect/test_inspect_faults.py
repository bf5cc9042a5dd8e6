"""Fault injection: no file may stop the line, no row may be lost, no crash may exit 1.

The corpus, the FIFO, damaged journals, read-only and full disks, malformed bundle files, path
spellings and kill -9 at random moments. ADCLI_FAULT_ITERATIONS (default 3) sets how many random
kills the kill test makes; ADCLI_FUZZ_EXAMPLES (default 60) how many inputs the decoder fuzzer tries.
"""

import errno
import io
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import run_cli
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from adcli.commands.calibrate import calibrate
from adcli.core.errors import ImageError
from adcli.commands.inspect import inspect_folder
from adcli.core.io import decode_image
from adcli.commands.inspect.journal import read_journal
from adcli.model.recipe import load_recipe
from adcli.bundle.calibration_files import CalibrationFiles
from adcli.commands.train import train
from tests.conftest import save_png

ITERATIONS = int(os.environ.get("ADCLI_FAULT_ITERATIONS", "3"))
FUZZ_EXAMPLES = int(os.environ.get("ADCLI_FUZZ_EXAMPLES", "60"))


@pytest.fixture(scope="module")
def run(prepared, tmp_path_factory):
    run = train(prepared, tmp_path_factory.mktemp("faults") / "run", load_recipe("diffusionad", "test"), device="cpu")
    # This tiny model fails its self-check (rightly); its warning line is tested in test_require_self_check.py,
    # and would be one line more in every error output counted here.
    calibrate(run, prepared, 0.05, device="cpu", self_check=False)
    return run


def _png_bytes(seed=0, size=32, mode="RGB"):
    arr = np.random.default_rng(seed).integers(0, 255, (size, size, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).convert(mode).save(buf, format="PNG")
    return buf.getvalue()


def _encoded(fmt, mode="RGB", **kw):
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (32, 32, 3), dtype=np.uint8)).convert(mode).save(buf, format=fmt, **kw)
    return buf.getvalue()


def _corpus(folder: Path) -> dict[str, str | None]:
    """Every kind of file a camera folder has held; name -> the error it must give (None: it is scored)."""
    folder.mkdir(parents=True, exist_ok=True)
    png = _png_bytes()
    dds = bytearray(_encoded("DDS"))
    dds[80:84] = b"\0\0\0\0"  # the damaged DDS that crashed Pillow's decoder with NotImplementedError
    files = {
        "empty.png": (b"", "empty file"), "truncated.png": (png[:100], "corrupt or truncated"),
        "header_only.png": (png[:8] + b"\0" * 64, "not an image"), "text.png": (b"hello world", "not an image"),
        "notes.txt": (b"hello", "not an image"), "dds_damaged.png": (bytes(dds), "not an image"),
        "dds_whole.png": (_encoded("DDS"), "not an image"), "zip.png": (b"PK\x03\x04" + b"\0" * 100, "not an image"),
        "random.jpg": (bytes(random.Random(0).randrange(256) for _ in range(500)), "not an image"),
        "jpeg_cut.jpg": (_encoded("JPEG")[:200], "corrupt or truncated"),
        "gray.png": (_encoded("PNG", "L"), None), "rgba.png": (_encoded("PNG", "RGBA"), None),
        "palette.png": (_encoded("PNG", "P"), None), "sixteen.tif": (None, None), "image.bmp": (_encoded("BMP"), None),
        "image.tiff": (_encoded("TIFF"), None), "image.webp": (_encoded("WEBP"), None), "image.gif": (_encoded("GIF"), None),
        "png_named.jpg": (png, None), "ok.png": (png, None),
    }
    expected = {}
    for name, (data, reason) in files.items():
        if name == "sixteen.tif":
            Image.fromarray(np.arange(32 * 32, dtype=np.uint16).reshape(32, 32) * 60).save(folder / name)
        else:
            (folder / name).write_bytes(data)
        expected[name] = reason
    os.mkfifo(folder / "pipe.png")
    expected["pipe.png"] = "named pipe"
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(folder / "sock.png"))
    server.close()
    expected["sock.png"] = "socket"
    os.symlink("missing_target.png", folder / "dangling.png")
    expected["dangling.png"] = "cannot read"
    (folder / "a folder.png").mkdir()  # a folder named like an image is walked into, not read
    return expected


def test_every_kind_of_bad_file_is_one_error_row_and_nothing_hangs(run, tmp_path):
    expected = _corpus(tmp_path / "in")
    # A subprocess with a timeout: a hang (the named pipe) fails the test instead of stalling the suite.
    done = subprocess.run([sys.executable, "-m", "adcli", "inspect", str(tmp_path / "in"), "--model", str(run), "--out",
                           str(tmp_path / "out"), "--category", "disc", "--settle-seconds", "0", "--device", "cpu"],
                          capture_output=True, text=True, timeout=180)
    assert done.returncode in (1, 3), done.stderr
    rows = {Path(r["path"]).name: r for r in read_journal(tmp_path / "out" / "results.jsonl").rows}
    assert set(rows) == set(expected), set(rows) ^ set(expected)
    for name, reason in expected.items():
        row = rows[name]
        if reason is None:
            assert row["verdict"] in ("OK", "DEFECT"), (name, row)
        else:
            assert row["verdict"] == "ERROR" and reason in row["error"], (name, row)
    assert "Traceback" not in done.stderr
    # The lock was released: the next run starts at once and has nothing new to do.
    again = subprocess.run([sys.executable, "-m", "adcli", "inspect", str(tmp_path / "in"), "--model", str(run), "--out",
                            str(tmp_path / "out"), "--category", "disc", "--settle-seconds", "0", "--lock-wait", "0"],
                           capture_output=True, text=True, timeout=180)
    assert again.returncode in (1, 3), again.stderr


@settings(max_examples=FUZZ_EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_decoder_fuzz_gives_an_image_or_an_image_error(data):
    base = data.draw(st.sampled_from([_png_bytes(), _encoded("JPEG"), _encoded("GIF"), _encoded("TIFF"), _encoded("BMP"),
                                      _encoded("WEBP"), b""]))
    blob = bytearray(base)
    for _ in range(data.draw(st.integers(0, 8))):  # flip, zero or cut
        if not blob:
            break
        at = data.draw(st.integers(0, len(blob) - 1))
        action = data.draw(st.sampled_from(["flip", "zero", "cut"]))
        if action == "cut":
            del blob[at:]
        else:
            blob[at] = (blob[at] ^ data.draw(st.integers(1, 255))) if action == "flip" else 0
    try:
        image = decode_image(bytes(blob), "fuzz")
    except ImageError as exc:
        assert "\n" not in str(exc)
    else:
        assert image.mode == "RGB" and image.width > 0


def _inspect(run, folder, out, **kw):
    return inspect_folder(folder, run, out, category="disc", device="cpu", settle_seconds=0, **kw)


def test_damaged_journal_line_costs_no_other_row(run, tmp_path, capsys):
    folder, out = tmp_path / "in", tmp_path / "out"
    for i in range(4):
        (folder / f"{i}.png").parent.mkdir(exist_ok=True)
        (folder / f"{i}.png").write_bytes(_png_bytes(i))
    _inspect(run, folder, out)
    journal = out / "results.jsonl"
    lines = journal.read_bytes().splitlines(keepends=True)
    lines[1] = lines[1][:20] + b"\n"  # a short write, as a full disk leaves it
    journal.write_bytes(b"".join(lines))
    (folder / "3.png").unlink()  # a file deleted since: its row must survive
    summary = _inspect(run, folder, out)
    assert [Path(r["path"]).name for r in summary.rows] == ["1.png"]  # only the damaged row's file again
    names = sorted(Path(r["path"]).name for r in read_journal(journal).rows)
    assert names == ["0.png", "1.png", "2.png", "3.png"]
    # The console wraps at its width, where the temporary path's length puts the break: compare words.
    assert "skipped 1 damaged line(s) (line 2)" in " ".join(capsys.readouterr().err.split())


_cli = run_cli


def _inspect_args(run, folder, out):
    return ["inspect", folder, "--model", run, "--out", out, "--category", "disc", "--settle-seconds", "0", "--device", "cpu"]


@pytest.mark.parametrize("code, message", [(errno.ENOSPC, "No space left on device"), (errno.EROFS, "Read-only file system")])
def test_full_or_read_only_disk_exits_5_and_keeps_written_rows(run, tmp_path, monkeypatch, capsys, code, message):
    import adcli.commands.inspect.journal

    folder, out = tmp_path / "in", tmp_path / "out"
    for i in range(5):
        save_png(folder / f"{i}.png", np.random.default_rng(i).integers(0, 255, (32, 32, 3), dtype=np.uint8))
    real_write, calls = os.write, {"n": 0}

    def failing_write(fd, data):
        calls["n"] += 1
        if calls["n"] > 2:  # the third journal line finds the disk full
            raise OSError(code, os.strerror(code))
        return real_write(fd, data)

    monkeypatch.setattr(adcli.commands.inspect.journal.os, "write", failing_write)
    exit_code, err = _cli(_inspect_args(run, folder, out), monkeypatch, capsys)
    assert exit_code == 5 and message in err and "Traceback" not in err and err.strip().count("\n") == 0, err
    assert "results.csv and summary.json catch up at the next run" in err  # the tables lag: say so
    monkeypatch.setattr(adcli.commands.inspect.journal.os, "write", real_write)
    assert len(read_journal(out / "results.jsonl").rows) == 2  # what was written stays
    exit_code, err = _cli(_inspect_args(run, folder, out), monkeypatch, capsys)
    assert exit_code in (0, 1) and len(read_journal(out / "results.jsonl").rows) == 5


def test_an_unexpected_error_exits_4_with_a_log_not_1(run, tmp_path, monkeypatch, capsys):
    import adcli.commands.inspect.folder

    save_png(tmp_path / "in" / "a.png", np.zeros((32, 32, 3), np.uint8))
    monkeypatch.setenv("ADCLI_LOG_DIR", str(tmp_path / "logs"))
    (tmp_path / "logs").mkdir()
    monkeypatch.setattr(adcli.commands.inspect.folder, "heatmap_name", lambda *a: 1 / 0)  # called for every scored image
    exit_code, err = _cli(_inspect_args(run, tmp_path / "in", tmp_path / "out"), monkeypatch, capsys)
    assert exit_code == 4 and "internal error: ZeroDivisionError" in err and err.strip().count("\n") == 0
    logs = list((tmp_path / "logs").glob("adcli-crash-*.log"))
    assert len(logs) == 1 and "Traceback" in logs[0].read_text() and str(logs[0]) in err


def _damage(path: Path, text: str):
    path.write_text(text)


@pytest.mark.parametrize("file, content, message", [
    ("meta.json", "{}", "not an adcli bundle"),
    ("meta.json", None, "'categories' must be a list"),
    ("meta.json", "not json", "unreadable"),
    ("calibration.json", "{}", "missing 'categories'"),
    ("routing.safetensors", "not a router", "does not belong to"),
    ("calibration.json", "[1, 2]", "expected a JSON object"),
    ("calibration.json", "threshold-string", "threshold: expected a finite number"),
    ("calibration.json", "threshold-nan", "threshold: expected a finite number"),
    ("calibration.json", "other-model", "made for another model"),
    ("recipe.yaml", "method: [", "invalid YAML"),
    ("model.safetensors", "garbage", "cannot read weights"),
])
def test_malformed_bundle_files_are_one_line_errors_with_exit_2(run, tmp_path, monkeypatch, capsys, file, content, message):
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    # The router's file is the one calibration.json names (routing-HASH.safetensors).
    target = CalibrationFiles(copy).calibration_files()[1] if file == "routing.safetensors" else copy / file
    if file == "meta.json" and content is None:
        meta = json.loads(target.read_text())
        meta["categories"] = "disc"
        content = json.dumps(meta)
    elif content and content.startswith(("threshold-", "other-")):
        cal = json.loads(target.read_text())
        if content == "threshold-string":
            cal["categories"]["disc"]["threshold"] = "0.5"
        elif content == "threshold-nan":
            cal["categories"]["disc"]["threshold"] = float("nan")
        else:
            cal["model_id"] = "0123456789ab"
        content = json.dumps(cal)
    target.write_text(content)
    save_png(tmp_path / "in" / "a.png", np.zeros((32, 32, 3), np.uint8))
    exit_code, err = _cli(_inspect_args(copy, tmp_path / "in", tmp_path / "out"), monkeypatch, capsys)
    assert exit_code == 2 and message in err and err.strip().count("\n") == 0, err


def test_damaged_report_cache_is_recomputed(run, prepared, tmp_path):
    from adcli.commands.report import make_report

    metrics = ("image_auroc", "pixel_auroc", "aupro")
    first = make_report(run, prepared, tmp_path / "r", device="cpu")
    (tmp_path / "r" / "outputs.safetensors").write_bytes(b"\0" * 50)
    again = make_report(run, prepared, tmp_path / "r", device="cpu")
    assert [[r[k] for k in metrics] for r in again] == [[r[k] for k in metrics] for r in first]
    assert "cached" not in again[0]["device"]


def test_bad_arguments_are_clear(run, tmp_path, monkeypatch, capsys):
    save_png(tmp_path / "in" / "a.png", np.zeros((32, 32, 3), np.uint8))
    (tmp_path / "file").write_text("x")
    code, err = _cli(_inspect_args(run, tmp_path / "in", tmp_path / "file"), monkeypatch, capsys)
    assert code == 5 and "is a file" in err
    code, err = _cli(_inspect_args(run, tmp_path / "in", tmp_path / "in"), monkeypatch, capsys)
    assert code == 2 and "is the folder being inspected" in err
    code, err = _cli(_inspect_args(run, tmp_path / "in" / "a.png", tmp_path / "o"), monkeypatch, capsys)
    assert code in (0, 1) and (tmp_path / "o" / "results.csv").is_file()  # one file is judged (files.py)
    code, err = _cli(_inspect_args(run, tmp_path / "nope.png", tmp_path / "o2"), monkeypatch, capsys)
    assert code == 2 and "no such file: " in err and not (tmp_path / "o2").exists()
    for value in ("0", "100000"):
        code, err = _cli(["train", "--recipe", "knn", "--profile", "test", "--data", tmp_path, "--out", tmp_path / "t",
                          "--set", f"data.image_size={value}"], monkeypatch, capsys)
        assert code == 2 and "data.image_size must be between 16 and 2048" in err


def test_out_inside_the_input_is_never_inspected(run, tmp_path):
    folder = tmp_path / "in"
    for i in range(3):
        (folder / f"{i}.png").parent.mkdir(exist_ok=True)
        (folder / f"{i}.png").write_bytes(_png_bytes(i))
    for _ in range(2):
        summary = _inspect(run, folder, folder / "inspected")
    rows = read_journal(folder / "inspected" / "results.jsonl").rows
    assert sorted(Path(r["path"]).name for r in rows) == ["0.png", "1.png", "2.png"] and summary.skipped == 3


def test_path_spellings_share_rows_and_unchanged_files_are_not_read(run, tmp_path, monkeypatch):
    import adcli.commands.inspect.folder

    folder = tmp_path / "in"
    for i in range(3):
        (folder / f"{i}.png").parent.mkdir(exist_ok=True)
        (folder / f"{i}.png").write_bytes(_png_bytes(i))
    monkeypatch.chdir(tmp_path)
    _inspect(run, Path("in"), tmp_path / "out")
    reads = {"n": 0}
    real = adcli.commands.inspect.folder.read_settled

    def counting(*args, **kw):
        reads["n"] += 1
        return real(*args, **kw)

    monkeypatch.setattr(adcli.commands.inspect.folder, "read_settled", counting)
    for spelling in (folder, Path("./in/../in"), Path("in/")):
        assert _inspect(run, spelling, tmp_path / "out").skipped == 3
    assert reads["n"] == 0  # size + mtime + inode unchanged: not even read
    assert len(read_journal(tmp_path / "out" / "results.jsonl").rows) == 3
    (folder / "1.png").write_bytes(_png_bytes(7))  # new content: read, hashed and inspected again
    assert [Path(r["path"]).name for r in _inspect(run, folder, tmp_path / "out").rows] == ["1.png"]


def test_a_name_with_a_newline_is_one_line_everywhere(run, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "bad\nname.png").write_bytes(b"garbage")
    summary = _inspect(run, folder, tmp_path / "out")
    assert summary.rows[0]["path"].endswith("bad\\nname.png") and "\n" not in summary.rows[0]["error"]
    assert (tmp_path / "out" / "results.csv").read_text().count("\n") == 2


def test_kill_9_at_random_moments_then_one_row_per_file_and_the_same_scores(run, tmp_path):
    folder = tmp_path / "in"
    for i in range(60):
        (folder / f"{i:03d}.png").parent.mkdir(exist_ok=True)
        (folder / f"{i:03d}.png").write_bytes(_png_bytes(i))
    reference = {Path(r["path"]).name: r["score"] for r in _inspect(run, folder, tmp_path / "reference").rows}
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "adcli", "inspect", str(folder), "--model", str(run), "--out", str(out), "--category",
           "disc", "--settle-seconds", "0", "--device", "cpu"]
    rng = random.Random(0)
    for _ in range(ITERATIONS):
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(1.0, 4.0))  # start-up (imports) takes most of this: kills land early and late
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    final = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert final.returncode in (0, 1), final.stderr
    rows = read_journal(out / "results.jsonl").rows
    assert sorted(Path(r["path"]).name for r in rows) == sorted(reference)
    assert {Path(r["path"]).name: r["score"] for r in rows} == reference
    assert not [p for p in (out / "heatmaps").iterdir() if p.suffix not in (".jpg", ".png")]
    assert (out / "results.csv").read_text().count("\n") == 61


def test_prepare_does_not_follow_links_out_of_the_dataset(demo_root, tmp_path):
    from adcli.data.manifest import prepare

    root = tmp_path / "data"
    shutil.copytree(demo_root, root)
    stray = root / "weave" / "train" / "good" / "stray.png"
    os.symlink(next((root / "disc" / "train" / "good").iterdir()), stray)  # inside the root: accepted
    outside = tmp_path / "elsewhere.png"
    outside.write_bytes(_png_bytes())
    os.symlink(outside, root / "weave" / "train" / "good" / "outside.png")
    result = prepare(root)
    paths = {Path(s.path).name for s in result.samples}
    assert "elsewhere.png" not in paths and any("link out of the dataset" in p for p in result.problems)
    assert "elsewhere.png" in {Path(s.path).name for s in prepare(root, follow_links=True).samples}


def test_train_killed_before_its_first_checkpoint_can_resume(prepared, tmp_path):
    from adcli.core.errors import BundleError
    from adcli.bundle.training_state import TrainingRun

    recipe = load_recipe("diffusionad", "test")
    TrainingRun(tmp_path / "r").start(recipe.config, recipe.path, "test")  # what a kill right after start leaves
    train(prepared, tmp_path / "r", resume=True, device="cpu")
    assert TrainingRun(tmp_path / "r").bundle.is_finished
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("x")
    with pytest.raises(BundleError, match="is not empty .* and is not an adcli run"):
        train(prepared, tmp_path / "other", recipe, device="cpu")
    with pytest.raises(BundleError, match="nothing to resume"):
        train(prepared, tmp_path / "other", resume=True, device="cpu")
