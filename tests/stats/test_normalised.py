"""The shared score scale (adcli/stats/normalised.py): 0.5 exactly at the threshold, monotone, in [0, 1]."""

import math

import numpy as np
import pytest

from adcli.stats.normalised import DEFAULT_RELATIVE_SPREAD, ScoreScale, normalised, score_scale
from adcli.stats.thresholds import fit_threshold, inverse_transform, score_summary, transform


def _scale(normals, target_fpr=0.01):
    th = fit_threshold(normals, target_fpr)
    return score_scale(th.threshold, score_summary(normals, th.transform), normals)


@pytest.mark.parametrize("normals", [
    np.random.default_rng(0).uniform(0.2, 0.6, 50),  # in (0, 1): logit
    np.random.default_rng(1).lognormal(0.5, 0.3, 50),  # positive: log
    np.random.default_rng(2).normal(0.0, 4.0, 50),  # any sign: identity
])
def test_half_exactly_at_the_threshold_monotone_and_in_the_unit_interval(normals):
    scale = _scale(normals)
    assert normalised(scale.threshold, scale) == 0.5
    raw = np.sort(np.r_[normals, np.linspace(normals.min() - 10, normals.max() + 10, 400), scale.threshold,
                        np.nextafter(scale.threshold, -np.inf), np.nextafter(scale.threshold, np.inf), -1e308, 1e308])
    values = [normalised(float(r), scale) for r in raw]
    assert all(0.0 <= v <= 1.0 for v in values) and values == sorted(values)
    # The verdict's side of 0.5, after rounding to 4 decimals: >= 0.5 iff raw >= threshold.
    assert all((v >= 0.5) == (r >= scale.threshold) for r, v in zip(raw, values))
    assert normalised(float(np.nextafter(scale.threshold, -np.inf)), scale) == 0.4999


def test_the_same_on_every_scale():
    """Three models whose scores are one another's rescalings give one normalised score per image."""
    base = np.random.default_rng(3).lognormal(0.0, 0.4, 60)
    probe = np.array([0.5, 1.0, 2.0, 4.0])
    per_model = [[normalised(float(p * k), _scale(base * k)) for p in probe] for k in (0.3, 1.0, 12.8)]
    assert np.allclose(per_model[0], per_model[1], atol=1e-4) and np.allclose(per_model[1], per_model[2], atol=1e-4)


def test_a_typical_good_image_sits_well_below_half_and_a_clear_defect_near_one():
    normals = np.random.default_rng(4).normal(10.0, 1.0, 500)
    scale = _scale(normals)
    assert 0.05 < normalised(float(np.median(normals)), scale) < 0.15  # ~2.3 spreads below a 1 % threshold
    five_spreads_above = float(inverse_transform(transform(np.array([scale.threshold]), scale.kind) + 5 * scale.spread,
                                                 scale.kind)[0])
    assert normalised(five_spreads_above, scale) == round(1 / (1 + math.exp(-5)), 4)


def test_hand_computed_case():
    scale = ScoreScale(threshold=2.0, kind="identity", spread=0.5)
    assert normalised(2.5, scale) == round(1 / (1 + math.exp(-1.0)), 4) == 0.7311
    assert normalised(1.0, scale) == round(1 / (1 + math.exp(2.0)), 4) == 0.1192


def test_fallbacks_for_calibrations_without_a_usable_spread():
    # Summary without the transformed std: the normal scores give it.
    normals = [1.0, 1.2, 0.9, 1.1, 1.05]
    from_scores = score_scale(1.5, {}, normals)
    assert from_scores.kind == "log" and from_scores.spread == pytest.approx(np.log(normals).std(ddof=1))
    # Nothing usable (no normals, zero spread): 10 % of the threshold, on the raw scale.
    for summary, scores in (({}, []), ({"transform": "log", "transformed_std": 0.0}, [2.0, 2.0]), (None, None)):
        scale = score_scale(2.48, summary, scores)
        assert (scale.kind, scale.spread) == ("identity", pytest.approx(DEFAULT_RELATIVE_SPREAD * 2.48))
        assert normalised(2.48, scale) == 0.5
    assert score_scale(0.0).spread == 1.0
    # A hand-set threshold outside the fitted transform's domain (a log scale and t <= 0) still maps to 0.5.
    scale = score_scale(-1.0, {"transform": "log", "transformed_std": 0.3}, [0.5, 0.7, 0.6])
    assert scale.kind == "identity" and normalised(-1.0, scale) == 0.5 and normalised(0.0, scale) > 0.5
