import numpy as np
from PIL import Image

from adcli.commands.inspect.heatmap import jet, overlay


def test_overlay_matches_the_float_blend_within_one_level():
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 255, (40, 50, 3), dtype=np.uint8))
    anomaly_map = rng.random((40, 50)).astype(np.float32)  # same size: the resize is the identity
    got = np.asarray(overlay(image, anomaly_map, (0.0, 1.0))).astype(int)
    exact = 0.5 * jet(anomaly_map).astype(float) + 0.5 * np.asarray(image, dtype=float)
    assert np.abs(got - exact).max() <= 3  # 256 colour levels, then integer rounding
    low = np.asarray(overlay(Image.new("RGB", (4, 4)), np.zeros((4, 4), np.float32), (0.0, 1.0)))
    high = np.asarray(overlay(Image.new("RGB", (4, 4)), np.ones((4, 4), np.float32), (0.0, 1.0)))
    assert low[0, 0, 2] > low[0, 0, 0] and high[0, 0, 0] > high[0, 0, 2]  # blue for normal, red for anomalous
