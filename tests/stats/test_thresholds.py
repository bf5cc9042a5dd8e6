import math

import numpy as np
import pytest
from scipy import stats

from adcli.stats import thresholds as T


def test_known_false_alarm_rate_is_met_on_average():
    """Log-normal scores: the threshold's true FPR, averaged over many calibrations, is near the target."""
    rng = np.random.default_rng(0)
    true_fprs, covered = [], 0
    for _ in range(300):
        normals = rng.lognormal(mean=1.0, sigma=0.5, size=40)
        th = T.fit_threshold(normals, 0.05)
        fpr = 1 - stats.lognorm.cdf(th.threshold, s=0.5, scale=math.e)
        true_fprs.append(fpr)
        covered += fpr <= th.fpr_upper_95
    assert np.mean(true_fprs) == pytest.approx(0.05, abs=0.015)
    assert covered / 300 >= 0.9  # the distribution-free bound holds at (about) its confidence


def test_probability_scores_use_logit_and_stay_in_range():
    rng = np.random.default_rng(1)
    normals = 1 / (1 + np.exp(-rng.normal(-3, 0.5, 25)))
    th = T.fit_threshold(normals, 0.01)
    assert th.transform == "logit" and 0 < th.threshold < 1
    z = np.log(normals / (1 - normals))
    expected = 1 / (1 + np.exp(-(z.mean() + stats.norm.ppf(0.99) * z.std(ddof=1))))
    assert th.threshold == pytest.approx(expected, rel=1e-9)
    assert th.too_few and th.normals_needed == 299


def test_clopper_pearson_and_needed_counts():
    assert T.normals_needed(0.01) == 299 and T.normals_needed(0.05) == 59
    assert T.clopper_pearson_upper(0, 299) <= 0.01 < T.clopper_pearson_upper(0, 298)
    assert T.clopper_pearson_upper(5, 5) == 1.0


def test_drift_statistic():
    rng = np.random.default_rng(2)
    normals = rng.lognormal(0, 0.3, 200)
    summary = T.score_summary(normals, "log")
    assert abs(T.drift_z(rng.lognormal(0, 0.3, 50), summary)) < 4
    assert T.drift_z(rng.lognormal(0.5, 0.3, 50), summary) > 4


def test_bad_inputs():
    with pytest.raises(ValueError, match="at least 2"):
        T.fit_threshold(np.array([0.1]), 0.01)
    with pytest.raises(ValueError, match="in \\(0, 1\\)"):
        T.fit_threshold(np.array([0.1, 0.2]), 1.5)


def test_inspecting_does_not_import_scipy():
    """scipy.stats costs ~1.2 s at every `adcli inspect` start; only calibrating needs it."""
    import subprocess
    import sys

    code = ("import sys, adcli.commands.inspect.folder, adcli.inference.detector, adcli.bundle.calibration; "
            "print('scipy.stats' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
