"""The synthetic-anomaly probe on tiny generated data."""

import numpy as np
import pytest

from adcli.core.errors import DataError
from adcli.commands.probe import probe
from adcli.model.recipe import load_recipe


def test_probe_trains_and_scores_a_fixed_held_out_set(prepared):
    recipe = load_recipe("diffusionad", "test", ["train.batch_size=2"])
    seen = []
    points = probe(prepared, recipe, steps=3, every=2, eval_images=4, report=seen.append)
    assert [p.step for p in points] == [2, 3] and seen == points
    for p in points:
        assert 0 <= p.outside <= 1 and 0 <= p.inside <= 1 and 0 <= p.pixel_auroc <= 1 and 0 <= p.image_auroc <= 1
        assert np.isfinite(p.loss) and p.seconds > 0
    again = probe(prepared, recipe, steps=3, every=2, eval_images=4)  # same seed, same numbers
    assert [(p.loss, p.inside, p.pixel_auroc) for p in again] == [(p.loss, p.inside, p.pixel_auroc) for p in points]


def test_probe_needs_a_stage_with_synthetic_anomalies(prepared, mobilenet_weights):
    recipe = load_recipe("knn", "test", [f"backbone.weights={mobilenet_weights}"])
    with pytest.raises(DataError, match="no stage trained on synthetic anomalies"):
        probe(prepared, recipe, steps=1, every=1)
