"""The self-check's arithmetic: AUROC, counts at the threshold, the floors, and its stored form."""

import dataclasses
import json

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from adcli.stats.self_check import AUROC_FLOOR, LARGE_FLOOR, evaluate, from_dict


def _scores(large, small=(0.0,)):
    return {"spot": {"small": list(small), "large": list(large)}, "blur": {"small": list(small), "large": list(large)}}


def test_auroc_and_counts_by_hand():
    normal = np.array([0.1, 0.2, 0.3, 0.4])
    check = evaluate(normal, _scores(large=[0.5, 0.35], small=[0.05]), threshold=0.45, seed=3, seconds=1.5)
    # synthetic 0.5, 0.35, 0.05 twice each against 4 normals: 0.5 beats 4, 0.35 beats 3, 0.05 beats 0 -> 14/24
    assert check.auroc == pytest.approx(14 / 24)
    assert check.found == {"spot": {"small": [0, 1], "large": [1, 2]}, "blur": {"small": [0, 1], "large": [1, 2]}}
    assert check.count("large") == (2, 4) and check.count("small") == (0, 2)
    assert check.summary() == "synthetic AUROC 0.58, 2/4 large defects found"
    assert check.seed == 3 and check.seconds == 1.5


def test_auroc_agrees_with_scikit_learn():
    rng = np.random.default_rng(0)
    normal, large, small = rng.normal(0, 1, 30), rng.normal(1, 1, 12), rng.normal(0.5, 1, 12)
    check = evaluate(normal, {"patch": {"large": large, "small": small}}, 0.0, 0, 0.0)
    labels = np.r_[np.zeros(30), np.ones(24)]
    assert check.auroc == pytest.approx(roc_auc_score(labels, np.r_[normal, large, small]))


@pytest.mark.parametrize("auroc_ok, large_found, weak", [(True, 2, False), (True, 1, True), (False, 2, True)])
def test_weak_below_either_floor(auroc_ok, large_found, weak):
    # 4 large copies: LARGE_FLOOR (half) of them is 2
    large = [10.0] * large_found + [0.5] * (4 - large_found)
    normal = np.array([0.0, 0.1, 0.2, 0.3]) if auroc_ok else np.array([5.0, 6.0, 7.0, 20.0])
    check = evaluate(normal, {"spot": {"large": large[:2], "small": [9.0]}, "blur": {"large": large[2:]}}, 1.0, 0, 0.0)
    assert (check.auroc >= AUROC_FLOOR) == auroc_ok and LARGE_FLOOR == 0.5
    assert check.weak == weak


def test_a_hand_set_threshold_recounts_from_the_stored_scores():
    check = evaluate(np.zeros(3), _scores(large=[1.0, 2.0, 3.0]), threshold=2.5, seed=0, seconds=0.0)
    assert check.count("large") == (2, 6)
    lower = check.at_threshold(1.5)
    assert lower.count("large") == (4, 6) and lower.auroc == check.auroc


def test_stored_form_round_trips_and_damage_is_named():
    check = evaluate(np.array([0.0, 1.0]), _scores(large=[2.0]), 1.5, 7, 0.25)
    tree = json.loads(json.dumps(dataclasses.asdict(check)))
    assert from_dict(tree, "cal") == check
    del tree["found"]
    with pytest.raises(ValueError, match="cal: not a self-check"):
        from_dict(tree, "cal")
    with pytest.raises(ValueError, match="cal: expected an object"):
        from_dict([1], "cal")


def test_labelled_defects_beside_the_check_recount_and_round_trip():
    check = evaluate(np.zeros(3), _scores(large=[2.0]), threshold=1.5, seed=0, seconds=1.0)
    assert check.real_found is None and "real_found" not in check.to_record()
    real = check.with_real_defects([0.5, 1.5, 3.0], threshold=1.5, seconds=0.5)
    assert real.real_found == [2, 3] and real.seconds == 1.5 and real.to_record()["real_found"] == [2, 3]
    assert real.weak == check.weak  # beside the check, not part of it
    assert not check.misses_real_defects and not real.misses_real_defects  # 2/3 found
    assert real.at_threshold(2.0).misses_real_defects  # 1/3
    assert real.at_threshold(0.0).real_found == [3, 3] and real.at_threshold(9.0).real_found == [0, 3]
    tree = json.loads(json.dumps(dataclasses.asdict(real)))
    assert from_dict(tree, "cal") == real
    for key in ("real_scores", "real_found"):  # as an adcli before the labelled defects wrote it
        del tree[key]
    assert from_dict(tree, "cal").real_found is None
