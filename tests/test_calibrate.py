"""adcli calibrate's sources: a prepared calib split, a folder of normals, thresholds set by hand."""

import shutil

import pytest

from adcli.calibrate import calibrate, parse_thresholds
from adcli.detector import Detector
from adcli.errors import AdcliError, DataError
from adcli.train import train
from tests.conftest import recipe_with_weights


@pytest.fixture(scope="module")
def knn_run(prepared, mobilenet_weights, tmp_path_factory):
    return train(prepared, tmp_path_factory.mktemp("cal") / "run", recipe_with_weights("knn", mobilenet_weights),
                 device="cpu")


@pytest.fixture
def run(knn_run, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(knn_run, copy)
    return copy


def test_too_few_normals_are_refused_saying_how_many_more(run, demo_root, tmp_path):
    few = tmp_path / "few"
    few.mkdir()
    for p in sorted((demo_root / "disc" / "validation" / "good").glob("*.png"))[:3]:
        shutil.copy(p, few / p.name)
    with pytest.raises(DataError, match=r"only 3 calibration normals; at least 20 are needed \(17 more\).*--allow-few"):
        calibrate(run, normals=few, category="disc", device="cpu")
    assert not (run / "calibration.json").exists()
    cal = calibrate(run, normals=few, category="disc", device="cpu", allow_few=True, target_fpr=0.2)
    assert cal.categories["disc"].n_normals == 3


def test_normals_folder_recalibrates_one_category_and_keeps_the_others(run, prepared, demo_root):
    first = calibrate(run, prepared, 0.2, device="cpu")
    assert {c.source for c in first.categories.values()} == {"prepared"}
    folder = demo_root / "disc" / "validation" / "good"
    cal = calibrate(run, normals=folder, category="disc", target_fpr=0.1, device="cpu")
    disc = cal.categories["disc"]
    assert disc.source == "normals" and disc.source_path == str(folder.resolve()) and disc.n_normals == 24
    assert disc.target_fpr == 0.1 and cal.categories["weave"] == first.categories["weave"]
    det = Detector.load(run, "cpu")
    assert det.router is not None and det.router.categories == ["disc", "weave"]
    with pytest.raises(AdcliError, match="add --category"):
        calibrate(run, normals=folder, device="cpu")


def test_threshold_by_hand_is_stored_as_manual_and_used(run, prepared, demo_root):
    before = calibrate(run, prepared, 0.2, device="cpu")
    cal = calibrate(run, thresholds={"disc": 1e6}, device="cpu")
    assert cal.categories["disc"].threshold == 1e6 and cal.categories["disc"].source == "manual"
    assert cal.categories["disc"].n_above == 0 and cal.categories["weave"] == before.categories["weave"]
    result = Detector.load(run, "cpu").predict(sorted((demo_root / "disc" / "test").rglob("*.png"))[0], category="disc")
    assert result.threshold == 1e6 and result.verdict == "OK"
    with pytest.raises(AdcliError, match="'gear' is not in this model"):
        calibrate(run, thresholds={"gear": 1.0}, device="cpu")


def test_threshold_needs_normals_for_a_category_never_calibrated(run):
    with pytest.raises(AdcliError, match="disc has no calibration normals yet"):
        calibrate(run, thresholds={"disc": 0.5}, device="cpu")
    with pytest.raises(AdcliError, match="nothing to calibrate from"):
        calibrate(run, device="cpu")


@pytest.mark.parametrize("bad", ["disc", "disc=", "=0.5", "disc=high", "disc=nan"])
def test_threshold_syntax_errors_say_the_form(bad):
    with pytest.raises(AdcliError, match="expected CATEGORY=NUMBER"):
        parse_thresholds([bad])
    assert parse_thresholds(["disc=0.5", "weave = 2"]) == {"disc": 0.5, "weave": 2.0}
