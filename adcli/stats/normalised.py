"""A score scale shared by every model and product: 0.5 exactly at the category's threshold.

Raw image scores live on each method's own scale (thresholds of three models on one product were 0.748,
2.48 and 31.77). The normalised score measures how far a raw score lies from the threshold in units of
the calibration normals' spread, on the scale the threshold was fitted on (adcli/stats/thresholds.py:
logit, log or identity), and squashes it into (0, 1):

    z(raw)     = (T(raw) − T(t)) / σ_T         T: the calibration's transform, t: the threshold,
    normalised = 1 / (1 + exp(−z))             σ_T: std of the transformed calibration normals

So 0.5 is the threshold, whatever the model; a typical good image (at the normals' mean, about 2.3 σ below a
1 % threshold) sits near 0.09; one σ above the threshold is 0.73, three are 0.95. Monotone in the raw score.
A calibration whose normals' spread is unknown or zero uses DEFAULT_RELATIVE_SPREAD of the threshold's size,
on the raw scale.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from adcli.stats.thresholds import choose_transform, transform

DECIMALS = 4  # as written to results.csv / .jsonl and shown on pictures
DEFAULT_RELATIVE_SPREAD = 0.1  # σ = 10 % of |threshold| (1.0 for a threshold of 0) when the normals give none
MIN_SPREAD = 1e-9


@dataclasses.dataclass(frozen=True)
class ScoreScale:
    """What maps one category's raw scores to the shared scale."""

    threshold: float  # raw score that maps to 0.5
    kind: str  # transform: logit | log | identity
    spread: float  # σ_T > 0, in transformed units

    def z(self, raw):
        """Raw score(s) -> distance from the threshold in normal spreads (float or array)."""
        t = transform(np.array([self.threshold]), self.kind)[0]
        return (transform(np.asarray(raw, dtype=np.float64), self.kind) - t) / self.spread


def score_scale(threshold: float, summary: dict | None = None, normal_scores=None) -> ScoreScale:
    """The scale of a category from its threshold and calibration normals: the stored summary's transform
    and transformed std (adcli/stats/thresholds.py: score_summary), else the std of `normal_scores` under
    the same choice of transform, else the default."""
    summary = summary if isinstance(summary, dict) else {}
    kind, spread = summary.get("transform"), summary.get("transformed_std")
    if kind in ("logit", "log", "identity") and _usable(spread) and _in_domain(threshold, kind):
        return ScoreScale(float(threshold), kind, float(spread))
    scores = np.asarray(normal_scores if normal_scores is not None else [], dtype=np.float64)
    if scores.size >= 2 and np.isfinite(scores).all():
        kind = choose_transform(scores)
        spread = float(transform(scores, kind).std(ddof=1))
        if _usable(spread) and _in_domain(threshold, kind):
            return ScoreScale(float(threshold), kind, spread)
    return ScoreScale(float(threshold), "identity", DEFAULT_RELATIVE_SPREAD * abs(threshold) or 1.0)


def _usable(spread) -> bool:
    return isinstance(spread, (int, float)) and not isinstance(spread, bool) and math.isfinite(spread) \
        and spread > MIN_SPREAD


def _in_domain(threshold: float, kind: str) -> bool:
    """A hand-set threshold outside the transform's domain (≤ 0 for log) would put 0.5 nowhere."""
    return kind == "identity" or (threshold > 0 and (kind == "log" or threshold < 1))


def normalised(raw: float, scale: ScoreScale) -> float:
    """The normalised score of one raw score, rounded to DECIMALS and kept on the verdict's side of 0.5:
    exactly 0.5 at the threshold, ≥ 0.5 iff raw ≥ threshold (DEFECT), < 0.5 below it; in [0, 1]."""
    if math.isnan(raw):
        return math.nan
    value = round(0.5 if raw == scale.threshold else _sigmoid(float(scale.z(raw))), DECIMALS)
    step = 10.0 ** -DECIMALS
    # Rounding must not move a score across 0.5: a CSV reader's `>= 0.5` is the verdict.
    return max(value, 0.5) if raw >= scale.threshold else min(value, 0.5 - step)


def _sigmoid(z: float) -> float:
    """1 / (1 + e^−z) without overflow for any z (±inf included)."""
    if z >= 0:
        return 1.0 / (1.0 + math.exp(-z))
    e = math.exp(z)
    return e / (1.0 + e)
