"""Whether a model can see defects at all: its scores on synthetic defects against held-out normals.

`adcli calibrate` copies each calibration normal with a synthetic defect of a family no recipe trains on
(adcli/data/defects.py) and scores the copies with the same detector; this module turns those scores
into the self-check stored with the category's calibration. Pure: scores in, summary out.

    auroc      image AUROC of the synthetic copies against the normals (0.5 = blind, 1 = perfect)
    found      per family and size: [copies at or above the threshold, copies]
    weak       auroc < AUROC_FLOOR, or fewer than LARGE_FLOOR of the large defects found
    real_found [labelled test defects at or above the threshold, defects], where the prepared data has
               them: what the synthetic figures stand in for on a line without labels (not part of `weak`)
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from adcli.stats.metrics import curve_summary

# Floors, from the models measured for the self-check (table in docs/benchmarks.md: six recipes, `cpu` and
# `test` profiles, each trained on bottle, metal_plate or magnetic_tile alone). Every model below either
# floor found at most 54 % of the real defects at its threshold (the blind ones, real image AUROC 17-68,
# score 0.37-0.67); on bottle and metal_plate every model above both found at least 78 % (synthetic AUROC
# 0.84-1.00, at least 6/10 of the large). Half of the large ones is the least a line can rely on: a model
# that misses most defects a person sees at a glance is not inspecting. Passing is necessary, not
# sufficient: on magnetic_tile, whose real defects are faint, two models that pass (0.85, 0.87) find only
# about 30 % of them. `real_found` shows that where labelled defects exist, and calibrate warns.
AUROC_FLOOR = 0.8
LARGE_FLOOR = 0.5


@dataclasses.dataclass(frozen=True)
class SelfCheck:
    """One category's self-check (stored in calibration.json under the category's `self_check`)."""

    auroc: float  # synthetic copies vs the calibration normals, image scores
    found: dict  # family -> size -> [detected, copies] at the category's threshold
    synthetic_scores: dict  # family -> size -> the copies' raw scores: a hand-set threshold's evidence
    seed: int
    seconds: float  # wall time of making and scoring the copies (and the labelled test defects)
    # The prepared dataset's labelled test defects of this category: their raw scores and how many reach the
    # threshold. None: calibrated from --normals, or a dataset without labelled defects.
    real_scores: list | None = None
    real_found: list | None = None

    def count(self, size: str) -> tuple[int, int]:
        """(detected, copies) of one size over every family."""
        pairs = [by_size[size] for by_size in self.found.values() if size in by_size]
        return sum(p[0] for p in pairs), sum(p[1] for p in pairs)

    @property
    def weak(self) -> bool:
        found, copies = self.count("large")
        return not self.auroc >= AUROC_FLOOR or (copies > 0 and found < LARGE_FLOOR * copies)

    @property
    def misses_real_defects(self) -> bool:
        """Fewer than LARGE_FLOOR of the labelled test defects reach the threshold (False without them):
        direct evidence, said at calibration beside `weak`, which stays the synthetic verdict a line
        without labels gets."""
        return self.real_found is not None and self.real_found[0] < LARGE_FLOOR * self.real_found[1]

    def summary(self) -> str:
        """'synthetic AUROC 0.41, 2/12 large defects found'."""
        found, copies = self.count("large")
        return f"synthetic AUROC {self.auroc:.2f}, {found}/{copies} large defects found"

    def at_threshold(self, threshold: float) -> SelfCheck:
        """The same check with `found` recounted at another threshold (a threshold set by hand)."""
        return dataclasses.replace(self, found=_found(self.synthetic_scores, threshold),
                                   real_found=_real_found(self.real_scores, threshold))

    def with_real_defects(self, scores, threshold: float, seconds: float) -> SelfCheck:
        """The check with the labelled test defects' raw `scores` beside it (`seconds`: what scoring them took)."""
        real = [float(v) for v in np.asarray(scores, np.float64).ravel()]
        return dataclasses.replace(self, real_scores=real, real_found=_real_found(real, threshold),
                                   seconds=self.seconds + float(seconds))

    def to_record(self) -> dict:
        """What inspect's summary.json and review show per category."""
        (fl, nl), (fs, ns) = self.count("large"), self.count("small")
        record = {"auroc": round(self.auroc, 4), "large_found": [fl, nl], "small_found": [fs, ns], "weak": self.weak}
        if self.real_found is not None:
            record["real_found"] = list(self.real_found)
        return record


def _found(synthetic_scores: dict, threshold: float) -> dict:
    return {family: {size: [int((np.asarray(s) >= threshold).sum()), len(s)] for size, s in by_size.items()}
            for family, by_size in synthetic_scores.items()}


def _real_found(real_scores: list | None, threshold: float) -> list | None:
    if not real_scores:
        return None
    return [int((np.asarray(real_scores) >= threshold).sum()), len(real_scores)]


def evaluate(normal_scores: np.ndarray, synthetic_scores: dict, threshold: float, seed: int,
             seconds: float) -> SelfCheck:
    """normal_scores (N,); synthetic_scores: family -> size -> scores (M_fs,) -> SelfCheck."""
    synthetic = np.concatenate([np.asarray(s, np.float64).ravel() for by_size in synthetic_scores.values()
                                for s in by_size.values()] or [np.zeros(0)])
    normal = np.asarray(normal_scores, np.float64).ravel()
    labels = np.r_[np.zeros(normal.size, bool), np.ones(synthetic.size, bool)]
    auroc = curve_summary(np.r_[normal, synthetic], labels).auroc
    stored = {f: {s: [float(v) for v in np.asarray(scores).ravel()] for s, scores in by_size.items()}
              for f, by_size in synthetic_scores.items()}
    return SelfCheck(float(auroc), _found(stored, threshold), stored, int(seed), float(seconds))


def from_dict(tree: Any, where: str) -> SelfCheck:
    """calibration.json's `self_check` -> SelfCheck; ValueError naming `where` when it is not one."""
    if not isinstance(tree, dict):
        raise ValueError(f"{where}: expected an object")
    try:
        auroc, seed, seconds = float(tree["auroc"]), int(tree["seed"]), float(tree["seconds"])
        scores = {str(f): {str(s): [float(v) for v in values] for s, values in by_size.items()}
                  for f, by_size in tree["synthetic_scores"].items()}
        found = {str(f): {str(s): [int(pair[0]), int(pair[1])] for s, pair in by_size.items()}
                 for f, by_size in tree["found"].items()}
        real = tree.get("real_scores")
        real = None if real is None else [float(v) for v in real]
        real_found = tree.get("real_found")
        real_found = None if real_found is None else [int(real_found[0]), int(real_found[1])]
    except (KeyError, TypeError, ValueError, AttributeError, IndexError) as exc:
        raise ValueError(f"{where}: not a self-check ({exc.__class__.__name__}: {exc})") from None
    return SelfCheck(auroc, found, scores, seed, seconds, real, real_found)
