"""Image-score thresholds from a few normal images, honest about how few there are.

The threshold is the (1 − target) quantile of a normal distribution fitted to the transformed
normal scores (logit for scores in (0, 1), log for positive scores, identity otherwise): it uses
every score, not just the largest one, so it stays meaningful with 20 normals. Next to it we store
the distribution-free evidence: among the n calibration normals, k score at or above the threshold,
and the one-sided 95 % Clopper–Pearson upper bound on the false-alarm rate given k of n. Confirming a
rate p at 95 % needs at least ln(0.05) / ln(1 − p) normals with none above threshold (299 for 1 %).
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

CONFIDENCE = 0.95
# Fewer normals than this and `adcli calibrate` leaves a category out (unless --allow-few); `adcli prepare`
# warns about calib splits that small. Lives here, not in calibrate.py, so prepare need not import torch.
MIN_NORMALS = 20


def choose_transform(scores: np.ndarray) -> str:
    if np.all((scores > 0) & (scores < 1)):
        return "logit"
    if np.all(scores > 0):
        return "log"
    return "identity"


def transform(scores: np.ndarray, kind: str) -> np.ndarray:
    s = np.asarray(scores, dtype=np.float64)
    if kind == "logit":
        s = np.clip(s, 1e-12, 1 - 1e-12)
        return np.log(s) - np.log1p(-s)
    if kind == "log":
        return np.log(np.clip(s, 1e-300, None))
    return s


def inverse_transform(values: np.ndarray | float, kind: str):
    v = np.asarray(values, dtype=np.float64)
    if kind == "logit":
        return 1 / (1 + np.exp(-v))
    if kind == "log":
        return np.exp(v)
    return v


def clopper_pearson_upper(k: int, n: int, confidence: float = CONFIDENCE) -> float:
    """One-sided upper confidence bound on a rate after k events in n trials."""
    if k >= n:
        return 1.0
    from scipy import stats  # here, not at the top: importing it costs `adcli inspect` ~1.2 s at every start

    return float(stats.beta.ppf(confidence, k + 1, n - k))


def normals_needed(target_fpr: float, confidence: float = CONFIDENCE) -> int:
    """Normals needed to confirm `target_fpr` when none of them scores above the threshold."""
    return int(math.ceil(math.log(1 - confidence) / math.log(1 - target_fpr)))


@dataclasses.dataclass(frozen=True)
class Threshold:
    threshold: float
    target_fpr: float
    expected_fpr: float  # under the fitted distribution (= target by construction)
    fpr_upper_95: float  # distribution-free Clopper–Pearson bound from the calibration normals
    n_normals: int
    n_above: int
    normals_needed: int
    transform: str
    fit_mean: float
    fit_std: float

    @property
    def too_few(self) -> bool:
        return self.n_normals < self.normals_needed


def fit_threshold(normal_scores: np.ndarray, target_fpr: float) -> Threshold:
    scores = np.asarray(normal_scores, dtype=np.float64)
    if scores.size < 2:
        raise ValueError("need at least 2 normal images to calibrate")
    if not 0 < target_fpr < 1:
        raise ValueError("target false-alarm rate must be in (0, 1)")
    kind = choose_transform(scores)
    z = transform(scores, kind)
    mean, std = float(z.mean()), float(z.std(ddof=1))
    std = max(std, 1e-9)
    from scipy import stats  # (see clopper_pearson_upper)

    threshold = float(inverse_transform(stats.norm.ppf(1 - target_fpr, mean, std), kind))
    n_above = int((scores >= threshold).sum())
    return Threshold(threshold, target_fpr, target_fpr, clopper_pearson_upper(n_above, scores.size), int(scores.size),
                     n_above, normals_needed(target_fpr), kind, mean, std)


def score_summary(scores: np.ndarray, kind: str) -> dict:
    """Normal-score distribution, kept for drift detection (statistics of the transformed scores too)."""
    s = np.asarray(scores, dtype=np.float64)
    z = transform(s, kind)
    return {"n": int(s.size), "min": float(s.min()), "max": float(s.max()), "mean": float(s.mean()),
            "quantiles": {q: float(np.quantile(s, float(q))) for q in ("0.5", "0.9", "0.95", "0.99")},
            "transform": kind, "transformed_mean": float(z.mean()), "transformed_std": float(z.std(ddof=1)) if s.size > 1 else 0.0}


def drift_z(recent_scores: np.ndarray, summary: dict) -> float:
    """z of the mean transformed score of recent OK images against the calibration normals:
    (mean_recent − mean_cal) / (std_cal / √n_recent)."""
    z = transform(np.asarray(recent_scores, dtype=np.float64), summary["transform"])
    std = max(summary["transformed_std"], 1e-9)
    return float((z.mean() - summary["transformed_mean"]) / (std / math.sqrt(z.size)))
