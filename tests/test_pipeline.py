"""train -> bundle -> inspect on tiny generated data with the `test` profile."""

import csv
import json
import re
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from adcli.bundle.model_bundle import Bundle
from adcli.core.errors import BundleError
from adcli.commands.inspect import inspect_folder
from adcli.model.methods.diffusionad import DiffusionAD
from adcli.model.recipe import load_recipe
from adcli.commands.train import train


def _train(prepared, out, overrides=()):
    return train(prepared, out, load_recipe("diffusionad", "test", list(overrides)), device="cpu")


@pytest.fixture(scope="module")
def run(prepared, tmp_path_factory):
    return _train(prepared, tmp_path_factory.mktemp("runs") / "run")


def _rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_bundle_contents(run):
    for name in ("model.safetensors", "recipe.yaml", "meta.json", "results.csv"):
        assert (run / name).is_file()
    assert not (run / "checkpoint").exists()
    meta = json.loads((run / "meta.json").read_text())
    assert meta["categories"] == ["disc", "weave"] and meta["image_size"] == 32 and meta["format_version"] == 1
    assert meta["train_images"] == {"disc": 8, "weave": 8}  # validation/good is the calib split, never trained on
    model, _ = Bundle(run).load_model()
    assert isinstance(model, DiffusionAD) and not model.training


def test_inspect_writes_heatmaps_and_rows(run, demo_root, tmp_path):
    folder = demo_root / "disc" / "test"
    (folder / "broken.png").write_bytes(b"not a png")
    try:
        summary = inspect_folder(folder, run, tmp_path / "out", category="disc", device="cpu", settle_seconds=0,
                                 scores_only=True)
    finally:
        (folder / "broken.png").unlink()
    rows = _rows(tmp_path / "out" / "results.csv")
    assert len(rows) == 6 and summary.errors == 1
    bad = [r for r in rows if r["verdict"] == "ERROR"]
    assert bad[0]["path"].endswith("broken.png") and "not an image" in bad[0]["error"]
    good = [r for r in rows if r["verdict"] != "ERROR"]
    assert all(r["verdict"] == "uncalibrated" and 0 <= float(r["score"]) <= 1 for r in good)
    assert all((tmp_path / "out" / r["heatmap"]).is_file() for r in good)


def test_same_seed_same_weights_and_scores(run, prepared, demo_root, tmp_path):
    again = _train(prepared, tmp_path / "again")
    a, b = load_file(run / "model.safetensors"), load_file(again / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # Byte for byte (safetensors writes several metadata keys in a random order): the same model id, so
    # inspect's journal and calibrations carry over to a retrained, identical model.
    assert (run / "model.safetensors").read_bytes() == (again / "model.safetensors").read_bytes()
    assert Bundle(run).model_id() == Bundle(again).model_id()
    folder = demo_root / "weave" / "test"
    s1 = inspect_folder(folder, run, tmp_path / "i1", category="weave", device="cpu", settle_seconds=0, scores_only=True)
    s2 = inspect_folder(folder, again, tmp_path / "i2", category="weave", device="cpu", settle_seconds=0, scores_only=True)
    assert [r["score"] for r in s1.rows] == [r["score"] for r in s2.rows]
    other = _train(prepared, tmp_path / "other", ["seed=1"])
    assert not torch.equal(load_file(other / "model.safetensors")["segnet.head.weight"], a["segnet.head.weight"])


def test_resume_continues_exactly(prepared, tmp_path, monkeypatch):
    full = _train(prepared, tmp_path / "full", ["train.epochs=2"])
    calls = {"n": 0}
    original = DiffusionAD.training_losses

    def dies_in_second_epoch(self, batch, gen):
        calls["n"] += 1
        if calls["n"] == 5:  # 3 steps per epoch: the 5th call is in epoch 2
            raise KeyboardInterrupt
        return original(self, batch, gen)

    monkeypatch.setattr(DiffusionAD, "training_losses", dies_in_second_epoch)
    with pytest.raises(KeyboardInterrupt):
        _train(prepared, tmp_path / "killed", ["train.epochs=2"])
    monkeypatch.setattr(DiffusionAD, "training_losses", original)
    with pytest.raises(BundleError, match="not a finished adcli model.*--resume"):
        Bundle(tmp_path / "killed").load_model()
    with pytest.raises(BundleError, match="unfinished run"):
        _train(prepared, tmp_path / "killed", ["train.epochs=2"])
    train(prepared, tmp_path / "killed", None, resume=True, device="cpu")
    a, b = load_file(full / "model.safetensors"), load_file(tmp_path / "killed" / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    log = (tmp_path / "killed" / "train.log").read_text().splitlines()  # appended to, never rewritten
    starts = [i for i, line in enumerate(log) if "adcli" in line and " train" in line and "method diffusionad" in line]
    assert len(starts) == 2 and "--resume" in log[starts[1]] and "--resume" not in log[starts[0]]
    stopped = [line for line in log[:starts[1]] if "stopped" in line]
    assert len(stopped) == 1 and re.search(r"stopped by SIGINT \(Ctrl-C\) in stage model of diffusionad, epoch 2/2; `adcli train --resume "
                                           r"--data .+ --out .+` continues from the checkpoint \(stage \w+, epoch 2, step 0\)",
                                           stopped[0]), stopped
    assert "model written to" in log[-1]
    assert all(re.match(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d ", line) for line in log)  # every line time-stamped


def test_sigterm_is_recorded_in_train_log_and_exits_143(prepared, tmp_path):
    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "adcli", "train", "--recipe", "diffusionad", "--profile", "test",
                             "--data", str(prepared), "--out", str(out), "--device", "cpu", "--set", "train.epochs=1000"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not (out / "checkpoint" / "last.safetensors").is_file():  # the first epoch is done: mid-training
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.1)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 143, err
    assert err.strip().splitlines()[-1] == "stopped by SIGTERM", err
    last = (out / "train.log").read_text().splitlines()[-1]
    assert re.search(r"stopped by SIGTERM in stage model of diffusionad, epoch \d+/1000; `adcli train --resume --data .+ --out .+` "
                     r"continues from the checkpoint \(stage \w+, epoch \d+, step \d+\)$", last), last


def test_bundle_format_errors(run, prepared, tmp_path):
    import shutil

    newer = tmp_path / "newer"
    shutil.copytree(run, newer)
    meta = json.loads((newer / "meta.json").read_text())
    (newer / "meta.json").write_text(json.dumps({**meta, "format_version": 99}))
    with pytest.raises(BundleError, match="format v99 is newer"):
        Bundle(newer).load_model()
    with pytest.raises(BundleError, match="not found"):
        Bundle(tmp_path / "nope").load_model()
    with pytest.raises(BundleError, match="already holds a finished model"):
        _train(prepared, run)


def test_a_test_profile_model_and_a_cpu_trap_say_so(prepared, demo_root, tmp_path):
    """train's first line points a CPU-only line at knn; calibrate and inspect name a test-profile model."""
    import io

    from rich.console import Console

    from adcli.commands.calibrate import calibrate

    said = io.StringIO()
    run = train(prepared, tmp_path / "run", load_recipe("diffusionad", "test"), device="cpu",
                console=Console(file=said, width=300))
    assert said.getvalue().splitlines()[0].startswith("note: for a CPU-only line use --recipe knn")
    warning = f"warning: {run} was trained with the test profile: for tests only, not for a line"
    said = io.StringIO()
    calibrate(run, prepared, 0.2, device="cpu", console=Console(file=said, width=300))
    assert said.getvalue().splitlines()[0] == warning
    said = io.StringIO()
    inspect_folder(demo_root / "weave" / "test", run, tmp_path / "out", device="cpu", category="weave",
                   console=Console(file=said, width=300))
    assert said.getvalue().splitlines()[0] == warning
