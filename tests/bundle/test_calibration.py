import json
import math

import numpy as np
import pytest

from adcli.bundle.calibration import Calibration, CategoryCalibration
from adcli.core.errors import BundleError
from adcli.bundle.calibration_files import CalibrationFiles

GOOD = {"threshold": 0.5, "target_fpr": 0.05, "expected_fpr": 0.05, "fpr_upper_95": 0.2, "n_normals": 20, "n_above": 1,
        "normals_needed": 59, "pixel_threshold": 0.4, "pixel_median": 0.1, "scores": {"n": 20, "transform": "identity", "transformed_mean": 0.3, "transformed_std": 0.1},
        "normal_scores": [0.2, 0.3, 0.4, 0.55], "source": "prepared", "source_path": "p"}


def _tree(**category):
    return {"format_version": 2, "adcli_version": "0", "model_id": "abc", "created": "", "target_fpr": 0.05,
            "routing": "", "categories": {"disc": {**GOOD, **category}}}


def test_verdict_is_score_at_or_above_threshold():
    cal = Calibration.from_dict(_tree(), "c.json").categories["disc"]
    assert [cal.verdict(s) for s in (0.49, 0.5, 0.51)] == ["OK", "DEFECT", "DEFECT"]
    assert cal.is_defect(np.array([0.1, 0.5])).tolist() == [False, True]
    lo, hi = cal.display_range
    assert lo == 0.1 and math.isclose(lo + 0.75 * (hi - lo), 0.4)  # the pixel threshold sits at ¾ of the scale


def test_normalised_score_is_half_at_the_threshold_and_on_the_verdicts_side():
    cal = Calibration.from_dict(_tree(), "c.json").categories["disc"]
    assert cal.normalised(0.5) == 0.5 and cal.normalised(0.6) == round(1 / (1 + math.exp(-1.0)), 4)  # σ 0.1
    assert [cal.normalised(s) >= 0.5 for s in (0.49, 0.5, 0.51)] == [cal.is_defect(s) for s in (0.49, 0.5, 0.51)]
    # A calibration whose summary lacks the spread and which kept no normal scores: 10 % of the threshold.
    bare = Calibration.from_dict(_tree(scores={"n": 0}, normal_scores=[]), "c.json").categories["disc"]
    assert bare.normalised(0.5) == 0.5 and bare.normalised(0.55) == round(1 / (1 + math.exp(-1.0)), 4)


@pytest.mark.parametrize("bad, message", [
    ([], "expected a JSON object"),
    ({"format_version": 2}, "missing 'categories'"),
    ({**_tree(), "format_version": 1}, "older adcli"),
    (_tree(source="guess"), "source: expected one of"),
    (_tree(threshold="0.5"), "threshold: expected a finite number"),
    (_tree(threshold=float("nan")), "threshold: expected a finite number"),
    (_tree(pixel_threshold=float("inf")), "pixel_threshold: expected a finite number"),
    ({**_tree(), "categories": {"disc": {"threshold": 0.5}}}, "missing 'target_fpr'"),
    ({**_tree(), "format_version": 99}, "newer adcli"),
])
def test_malformed_calibration_is_one_line_error(tmp_path, bad, message):
    (tmp_path / "calibration.json").write_text(json.dumps(bad))
    with pytest.raises(BundleError, match=message):
        CalibrationFiles(tmp_path).read_calibration()


def test_round_trip_through_the_run_folder(tmp_path):
    cal = Calibration.from_dict(_tree(), "c.json")
    CalibrationFiles(tmp_path).write_calibration(cal)
    assert CalibrationFiles(tmp_path).read_calibration() == cal
    CalibrationFiles(tmp_path).write_calibration(cal)
    assert (tmp_path / "calibration.prev.json").is_file()
    assert isinstance(cal.categories["disc"], CategoryCalibration)


def test_manual_threshold_recomputes_what_it_costs_from_the_normal_scores():
    cal = Calibration.from_dict(_tree(), "c.json").categories["disc"]
    manual = cal.with_manual_threshold(0.35)
    assert manual.source == "manual" and manual.threshold == 0.35
    assert manual.n_above == 2  # 0.4 and 0.55 of the four stored normal scores
    assert math.isclose(manual.expected_fpr, 0.3085, abs_tol=1e-3)  # P(N(0.3, 0.1) > 0.35)
    assert manual.fpr_upper_95 > cal.with_manual_threshold(0.6).fpr_upper_95
