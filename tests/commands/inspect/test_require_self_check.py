"""A model whose self-check is weak is named at the start of every inspect and in summary.json, and
`--require-self-check` refuses it (exit 2, one line); a model that passes inspects as usual."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import without_test_profile_line

from adcli.commands.calibrate import calibrate
from adcli.commands.report.review import render_review
from adcli.commands.train import train
from adcli.inference.detector import Detector
from adcli.model.recipe import load_recipe

ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def passing(prepared, tmp_path_factory):
    """knn on the demo's disc: its self-check passes (tests/commands/test_synthetic_defects.py)."""
    run = train(prepared, tmp_path_factory.mktemp("pass") / "run", load_recipe("knn", "test"), device="cpu")
    cal = calibrate(run, prepared, 0.05, device="cpu", category="disc")
    assert not cal.categories["disc"].self_check.weak
    return run


@pytest.fixture(scope="module")
def weak(passing, prepared, tmp_path_factory):
    """The same model calibrated while blind (scores that ignore the image): its self-check is weak."""
    run = tmp_path_factory.mktemp("weak") / "run"
    shutil.copytree(passing, run)
    rng = np.random.default_rng(0)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(Detector, "score_pixels", lambda self, pixels, categories: (
            rng.normal(0, 1, len(pixels)).astype(np.float32), np.zeros(pixels.shape[:3], np.float32)))
        cal = calibrate(run, prepared, 0.05, device="cpu", category="disc")
    assert cal.categories["disc"].self_check.weak
    return run


def _inspect(model, demo_root, out, *extra):
    folder = demo_root / "disc" / "test"
    return subprocess.run([sys.executable, "-m", "adcli", "inspect", str(folder), "--model", str(model), "--out",
                           str(out), "--category", "disc", "--device", "cpu", "--settle-seconds", "0", *extra],
                          capture_output=True, text=True, cwd=ROOT, timeout=300)


def _stderr_lines(done) -> list[str]:
    """stderr without blank lines and without the test-profile line these test models get (tested in
    tests/test_pipeline.py)."""
    return [line for line in without_test_profile_line(done.stderr).splitlines() if line.strip()]


def test_a_weak_model_is_named_at_the_start_and_in_the_summary(weak, demo_root, tmp_path):
    done = _inspect(weak, demo_root, tmp_path / "out")
    assert done.returncode in (0, 1), done.stderr
    first = _stderr_lines(done)[0]
    assert first.startswith(f"warning: model {weak} cannot reliably see defects on disc: synthetic AUROC")
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["self_check"]["weak"] == ["disc"] and summary["self_check"]["categories"]["disc"]["weak"]
    page = render_review(tmp_path / "out").read_text()
    assert "self-check failed</b>: this model cannot reliably see defects on disc (synthetic AUROC" in page


def test_require_self_check_refuses_a_weak_model_with_one_line(weak, demo_root, tmp_path):
    done = _inspect(weak, demo_root, tmp_path / "out", "--require-self-check")
    assert done.returncode == 2
    lines = _stderr_lines(done)
    assert len(lines) == 1 and lines[0].startswith("error: --require-self-check: model") and "disc" in lines[0]
    assert not (tmp_path / "out" / "results.jsonl").exists()


def test_require_self_check_lets_a_passing_model_inspect(passing, demo_root, tmp_path):
    done = _inspect(passing, demo_root, tmp_path / "out", "--require-self-check")
    assert done.returncode in (0, 1), done.stderr
    assert "cannot reliably see defects" not in done.stderr
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["self_check"]["weak"] == [] and summary["exit_code"] == done.returncode
    found, defects = summary["self_check"]["categories"]["disc"]["real_found"]  # the prepared data's labelled defects
    page = render_review(tmp_path / "out").read_text()
    assert "self-check passed: synthetic AUROC" in page and f"labelled test defects found {found}/{defects}" in page


def test_the_python_api_names_a_weak_model_in_a_warning(weak, passing):
    import adcli
    from adcli.core.errors import ModelWarning

    with pytest.warns(ModelWarning) as caught:
        det = adcli.load(weak, device="cpu")
    said = [str(w.message) for w in caught]
    assert f"model {weak} cannot reliably see defects on disc: synthetic AUROC" in " ".join(said)
    assert said == det.warnings and any("trained with the test profile" in line for line in said)
    assert not [line for line in adcli.load(passing, device="cpu").warnings if "cannot reliably see" in line]
