"""The calibration self-check: can this model see defects on this category at all?

`adcli calibrate` calls `run_self_check` per category after fitting its threshold: it copies the
calibration normals with synthetic defects (adcli/data/defects.py; families no recipe trains on, each
at a small and a large size), scores the copies with the same Detector, and keeps the summary
(adcli/stats/self_check.py) in calibration.json. Where the prepared data has labelled test defects,
`score_real_defects` scores them too, so the table shows the real detection rate beside the synthetic
one (the threshold never sees them). What calibrate, inspect and `adcli.load` say of a model that
fails it is adcli/bundle/calibration.py's `weak_self_check_lines`; `require_self_check` is inspect's
`--require-self-check`.
"""

from __future__ import annotations

import time
import zlib
from typing import Callable

import numpy as np
from PIL import Image

from adcli.bundle.calibration import Calibration
from adcli.core.errors import BundleError, ImageError
from adcli.core.io import read_image
from adcli.data.batches import resized
from adcli.data.defects import FAMILIES, SIZES, defect_region, make_defect
from adcli.data.manifest import Sample
from adcli.data.synth import is_object_category
from adcli.inference.detector import Detector, ToScore
from adcli.stats.self_check import SelfCheck, evaluate

SEED = 0  # fixed: a recalibration of the same model on the same normals gives the same self-check
# Copies: at most one per calibration normal, in whole rounds over the families and sizes (each gets
# the same count), at least one round. Scoring them costs at most what scoring the normals did, so the
# self-check at most doubles calibration (calibrate prints its cost). MAX_COPIES bounds large calib splits.
MAX_COPIES = 100
COMBINATIONS = [(family, size) for size in SIZES for family in FAMILIES]


def copies_for(n_normals: int) -> int:
    """How many synthetic copies a category with `n_normals` calibration normals gets."""
    rounds = max(1, min(n_normals, MAX_COPIES) // len(COMBINATIONS))
    return rounds * len(COMBINATIONS)


def is_object(detector: Detector, category: str, images: np.ndarray) -> bool:
    """Defects go on the object for a category the recipe lists as an object, or whose normals look like
    one (adcli/data/synth.py's test, the one training uses when the recipe's list is null). The list is
    not a veto: a recipe that trains on the whole image (`object_categories: []`) still has its
    self-check put defects where a product's defects are."""
    synth = getattr(detector.bundle.read_config(), "synth", None)
    listed = set(getattr(synth, "object_categories", None) or ())
    return category in listed or is_object_category(images)


def synthetic_copies(images: np.ndarray, category: str, object_category: bool, seed: int = SEED):
    """images uint8 (N, S, S, 3), the category's normals at the model's size -> yields
    (family, size, defective copy uint8 (S, S, 3)), `copies_for(N)` of them. Copy k is normal k mod N
    with COMBINATIONS[k mod len]; its randomness is keyed by (seed, category, k) alone."""
    n = len(images)
    regions = [defect_region(im, object_category) for im in images]
    for k in range(copies_for(n)):
        rng = np.random.default_rng([seed, zlib.crc32(category.encode()), k])
        family, size = COMBINATIONS[k % len(COMBINATIONS)]
        i = k % n
        donor = images[(i + 1 + int(rng.integers(0, n - 1))) % n] if n > 1 else images[i]
        copy, _ = make_defect(images[i], family, size, rng, regions[i], donor)
        yield family, size, copy


def run_self_check(detector: Detector, category: str, normals: list[Sample], normal_scores: np.ndarray,
                   threshold: float, seed: int = SEED, progress: Callable[[], None] | None = None) -> SelfCheck:
    """Score synthetic defective copies of `normals` (whose scores are `normal_scores`) -> SelfCheck."""
    start = time.perf_counter()
    images = np.stack([resized(read_image(s.path), detector.image_size) for s in normals])  # (N, S, S, 3)
    copies = synthetic_copies(images, category, is_object(detector, category, images), seed)
    scores: dict = {f: {s: [] for s in SIZES} for f in FAMILIES}
    for r in detector.stream(copies, lambda c: ToScore(Image.fromarray(c[2]), c[:2], category)):
        family, size = r.payload
        scores[family][size].append(r.judged.score)
        if progress:
            progress()
    return evaluate(normal_scores, scores, threshold, seed, time.perf_counter() - start)


def score_real_defects(detector: Detector, category: str, defects: list[Sample],
                       progress: Callable[[], None] | None = None) -> list[float]:
    """Raw scores of a prepared dataset's labelled test defects of `category` (a file that no longer
    decodes is left out: prepare checked them, this only reports)."""

    def load(sample: Sample):
        try:
            return ToScore(read_image(sample.path), None, category)
        except ImageError:
            return None

    scores = []
    for r in detector.stream(defects, load):
        if r.judged is not None:
            scores.append(float(r.judged.score))
        if progress:
            progress()
    return scores


def summary_record(calibration: Calibration | None) -> dict:
    """inspect's summary.json `self_check`: the weak and unchecked categories, and each one's figures."""
    categories = calibration.categories if calibration else {}
    return {"weak": [c for c, cal in categories.items() if cal.self_check is not None and cal.self_check.weak],
            "unchecked": [c for c, cal in categories.items() if cal.self_check is None],
            "categories": {c: cal.self_check.to_record() for c, cal in categories.items() if cal.self_check is not None}}


def require_self_check(calibration: Calibration | None, categories: list[str], model: str) -> None:
    """`inspect --require-self-check`: a BundleError (exit 2, one line) unless every category to be judged
    passed its self-check."""
    cals = calibration.categories if calibration else {}
    weak = [c for c in categories if c in cals and cals[c].self_check is not None and cals[c].self_check.weak]
    unchecked = [c for c in categories if c in cals and cals[c].self_check is None]
    if weak:
        details = "; ".join(f"{c}: {cals[c].self_check.summary()}" for c in weak)
        raise BundleError(f"--require-self-check: model {model} cannot reliably see defects ({details}); "
                          "train a stronger recipe or profile, then `adcli calibrate` it")
    if unchecked:
        raise BundleError(f"--require-self-check: model {model} has no self-check for {', '.join(unchecked)}; "
                          f"run `adcli calibrate {model} --data PREPARED` (without --no-self-check)")
