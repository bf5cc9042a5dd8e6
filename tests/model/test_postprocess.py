"""adcli/model/postprocess.py: per-pixel statistics of normal maps, fitted in eval mode."""

import contextlib

import numpy as np
import pytest
import torch

from adcli.model.postprocess import ImageScoreConfig, NormalMapStatistics
from adcli.model.score_maps import pixel_statistics
from tests.conftest import FakeTrainImages


class _Ctx:
    device = torch.device("cpu")

    def progress(self, description, total):
        return contextlib.nullcontext(type("Task", (), {"advance": lambda self, n: None})())

    def log(self, text):
        self.logged = text


def test_fit_makes_the_maps_in_eval_mode_and_restores_training_mode():
    dropout = torch.nn.Dropout(0.5)
    maps_of = lambda x, ids: dropout(x.mean(1)) + ids[:, None, None]  # noqa: E731 — dropout is the identity in eval mode
    rng = np.random.default_rng(0)
    data = FakeTrainImages(rng.integers(0, 256, (6, 8, 8, 3), dtype=np.uint8), np.array([0, 0, 0, 1, 1, 1]))
    stats = NormalMapStatistics(2, 8)
    dropout.train()
    stats.fit(dropout, maps_of, data, ["a", "b"], count=3, batch_size=2, ctx=_Ctx())
    assert dropout.training  # back as it was
    for c in (0, 1):
        images = torch.from_numpy(data.of_category(c)).permute(0, 3, 1, 2).float() / 255
        mean, spread = pixel_statistics(images.mean(1) + c)
        assert torch.allclose(stats.mean[c], mean, atol=1e-6) and torch.allclose(stats.spread[c], spread, atol=1e-6)


def test_image_score_settings_are_checked():
    with pytest.raises(ValueError, match="must be 'map' or 'standardised'"):
        ImageScoreConfig(image_score="z")
    with pytest.raises(ValueError, match="normal_images must be >= 2"):
        ImageScoreConfig(image_score="standardised", normal_images=1)
    ImageScoreConfig(image_score="map", normal_images=1)  # unused when the score pools the map itself
