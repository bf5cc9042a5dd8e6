"""The self-check's copies and its verdict on a model that sees defects and on one that cannot."""

import collections

import numpy as np
import pytest

from adcli.bundle.calibration import Calibration
from adcli.bundle.calibration import weak_self_check_lines as weak_lines
from adcli.commands.synthetic_defects import (COMBINATIONS, copies_for, require_self_check, run_self_check, summary_record,
                                       synthetic_copies)
from adcli.core.errors import BundleError
from adcli.data.defects import defect_region
from adcli.data.manifest import load_manifest
from adcli.inference.detector import Detector
from adcli.model.recipe import load_recipe
from adcli.commands.train import train
from adcli.stats.self_check import evaluate


@pytest.fixture(scope="module")
def knn_run(prepared, tmp_path_factory):
    return train(prepared, tmp_path_factory.mktemp("sc") / "run", load_recipe("knn", "test"), device="cpu")


def _disc_images(n=4, side=32):
    yy, xx = np.mgrid[:side, :side]
    disc = (yy - side // 2) ** 2 + (xx - side // 2) ** 2 <= (side // 3) ** 2
    images = np.full((n, side, side, 3), 220, np.uint8)
    for i in range(n):
        images[i][disc] = np.random.default_rng(i).integers(20, 90, (int(disc.sum()), 3))
    return images, disc


def test_copies_cover_every_family_and_size_equally_and_at_most_double_the_normals():
    assert copies_for(1) == len(COMBINATIONS) == 10 and copies_for(21) == 20 and copies_for(30) == 30
    assert copies_for(10_000) == 100
    images, _ = _disc_images(n=23)
    made = list(synthetic_copies(images, "disc", True))
    assert len(made) == copies_for(23) == 20
    assert set(collections.Counter((f, s) for f, s, _ in made).values()) == {2}


def test_copies_are_deterministic_and_keyed_by_category():
    images, disc = _disc_images()
    a = [c for _, _, c in synthetic_copies(images, "disc", True)]
    b = [c for _, _, c in synthetic_copies(images, "disc", True)]
    other = [c for _, _, c in synthetic_copies(images, "other", True)]
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not all(np.array_equal(x, y) for x, y in zip(a, other))
    for k, copy in enumerate(a):  # object category: the damage stays on the disc
        changed = (copy != images[k % len(images)]).any(axis=-1)
        assert changed.any() and not (changed & ~disc).any()
    assert defect_region(images[0], True).sum() == disc.sum()


def _normals(prepared, category):
    return [s for s in load_manifest(prepared) if s.split == "calib" and s.category == category]


def test_a_model_that_sees_defects_passes(knn_run, prepared):
    det = Detector.load(knn_run, "cpu")
    for category in ("disc",):  # (weave at 32 px from 8 images is a weak model: its check says so, AUROC 0.65)
        normals = _normals(prepared, category)
        normal_scores = np.array([det.predict(s.path, category).score for s in normals])
        check = run_self_check(det, category, normals, normal_scores, threshold=float(np.quantile(normal_scores, 0.95)))
        assert sum(check.count(size)[1] for size in ("small", "large")) == copies_for(len(normals))
        assert check.auroc >= 0.8 and not check.weak, (category, check.summary())
        again = run_self_check(det, category, normals, normal_scores, float(np.quantile(normal_scores, 0.95)))
        assert again.synthetic_scores == check.synthetic_scores


def test_a_model_blind_to_defects_is_weak(knn_run, prepared, monkeypatch):
    det = Detector.load(knn_run, "cpu")
    rng = np.random.default_rng(0)

    def blind(pixels, categories):  # scores that ignore the image
        return rng.normal(0, 1, len(pixels)).astype(np.float32), np.zeros(pixels.shape[:3], np.float32)

    monkeypatch.setattr(det, "score_pixels", blind)
    normals = _normals(prepared, "disc")
    check = run_self_check(det, "disc", normals, rng.normal(0, 1, len(normals)), threshold=1.64)
    assert check.auroc < 0.8 and check.weak


def _calibration(checks: dict) -> Calibration:
    from adcli.bundle.calibration import CategoryCalibration

    cats = {c: CategoryCalibration(1.0, 0.01, 0.01, 0.1, 20, 0, 299, 1.0, 0.0, {}, [], "prepared", "/p", self_check=sc)
            for c, sc in checks.items()}
    return Calibration(2, "x", "id", "now", 0.01, "", cats)


def test_warning_lines_record_and_requirement():
    weak = evaluate(np.array([1.0, 2.0]), {"spot": {"large": [0.0, 0.5], "small": [0.0]}}, 1.5, 0, 0.1)
    strong = evaluate(np.array([0.0, 0.1]), {"spot": {"large": [2.0, 3.0], "small": [2.0]}}, 1.0, 0, 0.1)
    cal = _calibration({"bottle": weak, "cap": strong, "screw": None})
    assert weak_lines(cal, "runs/m") == ["model runs/m cannot reliably see defects on bottle: synthetic AUROC 0.00, "
                                         "0/2 large defects found"]
    assert weak_lines(cal, "runs/m", ["cap"]) == []
    record = summary_record(cal)
    assert record["weak"] == ["bottle"] and record["unchecked"] == ["screw"]
    assert record["categories"]["cap"] == {"auroc": 1.0, "large_found": [2, 2], "small_found": [1, 1], "weak": False}
    require_self_check(cal, ["cap"], "runs/m")
    with pytest.raises(BundleError, match=r"cannot reliably see defects \(bottle: synthetic AUROC 0.00"):
        require_self_check(cal, ["bottle", "cap"], "runs/m")
    with pytest.raises(BundleError, match="no self-check for screw"):
        require_self_check(cal, ["cap", "screw"], "runs/m")
