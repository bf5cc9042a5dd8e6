"""A model's calibration as typed values: per category the image threshold and what goes with it.

`adcli calibrate` (adcli/commands/calibrate.py) makes it; inspect, report and the Python API read it through
`CategoryCalibration.verdict` and `is_defect`, the one place where a score meets its threshold.
Stored as RUN/calibration.json (adcli/bundle/calibration_files.py) next to the category router RUN/routing.safetensors
(adcli/model/routing.py), whose SHA-256 it records; a damaged or foreign file is a one-line error.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np

from adcli.core.errors import BundleError
from adcli.stats import self_check
from adcli.stats.self_check import SelfCheck

FORMAT_VERSION = 2  # 2: patch-feature routing in routing.safetensors, sources, normal scores
SOURCES = ("prepared", "normals", "manual")


@dataclasses.dataclass(frozen=True)
class CategoryCalibration:
    threshold: float  # image score at or above which an image is a DEFECT
    target_fpr: float
    expected_fpr: float  # under the fitted normal-score distribution
    fpr_upper_95: float  # one-sided Clopper–Pearson bound supported by the calibration normals
    n_normals: int
    n_above: int
    normals_needed: int  # to confirm target_fpr at 95 % confidence
    pixel_threshold: float  # anomaly-map level of the defect contours (99.9th pct of normal pixels)
    pixel_median: float  # median normal pixel: the bottom of the heatmap colour scale
    scores: dict  # normal-score summary for drift (adcli/stats/thresholds.py: score_summary)
    normal_scores: list  # every calibration normal's raw score: a manual threshold's evidence
    source: str  # prepared (a prepared dataset's calib split) | normals (a folder) | manual (threshold set by hand)
    source_path: str  # the prepared dataset or normals folder the normals came from
    # Scores on synthetic defects (adcli/stats/self_check.py); None: calibrated with --no-self-check, or by
    # an adcli before the self-check (such files load unchanged).
    self_check: SelfCheck | None = None

    def is_defect(self, scores):
        """scores: a float or an array -> bool (array)."""
        return np.asarray(scores) >= self.threshold

    def verdict(self, score: float) -> str:
        return "DEFECT" if self.is_defect(score) else "OK"

    def normalised(self, score: float) -> float:
        """The score on the scale every model shares: 0.5 exactly at the threshold, in [0, 1], rounded to
        4 decimals on the verdict's side of 0.5 (adcli/stats/normalised.py)."""
        from adcli.stats.normalised import normalised, score_scale

        return normalised(float(score), score_scale(self.threshold, self.scores, self.normal_scores))

    def with_manual_threshold(self, threshold: float) -> CategoryCalibration:
        """The same calibration with a threshold set by hand: the false-alarm figures are recomputed
        from the stored normal scores, so the table still says what the hand-set value costs."""
        from scipy import stats

        from adcli.stats.thresholds import clopper_pearson_upper, transform

        scores = np.asarray(self.normal_scores, dtype=np.float64)
        n_above = int((scores >= threshold).sum())
        z = (float(transform(np.array([threshold]), self.scores["transform"])[0]) - self.scores["transformed_mean"]) \
            / max(self.scores["transformed_std"], 1e-9)
        checked = self.self_check.at_threshold(float(threshold)) if self.self_check else None
        return dataclasses.replace(self, threshold=float(threshold), expected_fpr=float(stats.norm.sf(z)),
                                   fpr_upper_95=clopper_pearson_upper(n_above, scores.size), n_above=n_above,
                                   source="manual", self_check=checked)

    @property
    def display_range(self) -> tuple[float, float]:
        """Heatmap colour scale: blue at the normal pixels' median, orange (¾ of the scale) at the pixel
        threshold, so what lights up is what the calibration calls abnormal."""
        low = self.pixel_median
        return low, low + (self.pixel_threshold - low) / 0.75


@dataclasses.dataclass(frozen=True)
class Calibration:
    format_version: int
    adcli_version: str
    model_id: str  # the model it was made for (adcli/bundle/model_bundle.py: Bundle.model_id)
    created: str
    target_fpr: float
    routing: str  # SHA-256 of RUN/routing.safetensors, "" when the model has no router
    categories: dict[str, CategoryCalibration]

    @classmethod
    def from_dict(cls, tree: Any, source: str) -> Calibration:
        if not isinstance(tree, dict):
            raise BundleError(f"{source}: not a calibration (expected a JSON object); run `adcli calibrate` again")
        version = tree.get("format_version", 0)
        if not isinstance(version, int) or version > FORMAT_VERSION:
            raise BundleError(f"{source} was written by a newer adcli; upgrade adcli")
        categories = tree.get("categories")
        if not isinstance(categories, dict):
            raise BundleError(f"{source}: missing 'categories'; run `adcli calibrate` again")
        if version < FORMAT_VERSION:
            raise BundleError(f"{source} was written by an older adcli (format {version}); run `adcli calibrate` again")
        top = {f.name: tree.get(f.name, "") for f in dataclasses.fields(cls) if f.name != "categories"}
        top["format_version"] = version
        return cls(**top, categories={str(c): _category(v, f"{source}: categories.{c}") for c, v in categories.items()})


def weak_self_check_lines(calibration: Calibration | None, model: str, categories: list[str] | None = None) -> list[str]:
    """One warning line per category (of `categories`, default all) whose calibration self-check is weak: what
    calibrate, every inspect and `adcli.load` say."""
    if calibration is None:
        return []
    return [f"model {model} cannot reliably see defects on {cat}: {c.self_check.summary()}"
            for cat, c in calibration.categories.items()
            if (categories is None or cat in categories) and c.self_check is not None and c.self_check.weak]


def _category(tree: Any, where: str) -> CategoryCalibration:
    if not isinstance(tree, dict):
        raise BundleError(f"{where}: expected an object; run `adcli calibrate` again")
    values = {}
    for f in dataclasses.fields(CategoryCalibration):
        if f.name == "self_check":
            values[f.name] = _self_check(tree.get(f.name), f"{where}.self_check")
            continue
        if f.name not in tree:
            raise BundleError(f"{where}: missing '{f.name}'; run `adcli calibrate` again")
        value = tree[f.name]
        if f.type in ("float", "int"):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise BundleError(f"{where}.{f.name}: expected a finite number, got {value!r}")
            value = int(value) if f.type == "int" else float(value)
        values[f.name] = value
    if values["source"] not in SOURCES:
        raise BundleError(f"{where}.source: expected one of {', '.join(SOURCES)}, got {values['source']!r}")
    return CategoryCalibration(**values)


def _self_check(tree: Any, where: str) -> SelfCheck | None:
    if tree is None:
        return None
    try:
        return self_check.from_dict(tree, where)
    except ValueError as exc:
        raise BundleError(f"{exc}; run `adcli calibrate` again") from None
