import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from adcli.model import coreset
from adcli.model.coreset import greedy_coreset
from adcli.model import score_maps as S


def test_distances_by_hand():
    a = torch.tensor([1.0, 0.0]).reshape(1, 2, 1, 1)
    b = torch.tensor([0.0, 2.0]).reshape(1, 2, 1, 1)
    assert S.cosine_distance(a, b).item() == pytest.approx(1.0)
    assert S.cosine_distance(a, 3 * a).item() == pytest.approx(0.0, abs=1e-7)
    assert S.euclidean_distance(a, b).item() == pytest.approx(math.sqrt(5))


def test_combine_ddad_by_hand():
    d1 = torch.tensor([[[1.0, 2.0]]])
    d2 = torch.tensor([[[0.5, 4.0]]])
    # w · max d2 / max d1 = 7 · 4 / 2 = 14
    assert S.combine_ddad(d1, d2, 7.0).tolist() == [[[14.5, 32.0]]]


def test_upsample_sum_and_gaussian():
    maps = [torch.ones(1, 2, 2), 2 * torch.ones(1, 4, 4)]
    assert torch.allclose(S.upsample_sum(maps, (8, 8)), torch.full((1, 8, 8), 3.0))
    impulse = torch.zeros(1, 21, 21)
    impulse[0, 10, 10] = 1.0
    blurred = S.gaussian_blur(impulse, 2.0)
    assert blurred.sum().item() == pytest.approx(1.0, abs=1e-5)  # mass preserved away from borders
    x = np.arange(-8, 9)  # radius ceil(4σ) = 8, as scipy.ndimage.gaussian_filter truncates
    g = np.exp(-x**2 / 8) / np.exp(-x**2 / 8).sum()
    expected = np.zeros((21, 21))
    expected[2:19, 2:19] = np.outer(g, g)
    assert np.allclose(blurred[0].numpy(), expected, atol=1e-7)
    assert torch.equal(S.gaussian_blur(impulse, 0), impulse)


@pytest.mark.parametrize("kernel", [1, 3, 4, 5, 16])
def test_box_mean_is_average_pooling(kernel):
    x = torch.rand(2, 1, 37, 41)
    assert torch.allclose(S.box_mean(x, kernel), F.avg_pool2d(x, kernel, stride=1), atol=1e-6)


def test_pooled_max_and_top_k():
    m = torch.zeros(1, 10, 10)
    m[0, 0, 0] = 9.0
    # one 3×3 average pooling round: the corner spreads to one window with mean 1
    assert S.pooled_max(m, kernel=3, rounds=1).item() == pytest.approx(1.0)
    assert S.pooled_max(m, kernel=3, rounds=2).item() == pytest.approx(1 / 9)
    m2 = torch.arange(12.0).reshape(1, 3, 4)
    assert S.top_k_mean(m2, 3).item() == pytest.approx(10.0)


def test_greedy_coreset_matches_brute_force():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(60, 5, generator=g)
    idx = greedy_coreset(x, 8, projection_dim=None)
    chosen = [0]
    for _ in range(7):
        d = torch.cdist(x, x[chosen]).amin(dim=1)
        chosen.append(int(d.argmax()))
    assert idx.tolist() == chosen


def _farthest_point_reference(x, count):
    chosen, nearest = [0], torch.cdist(x, x[:1]).squeeze(1)
    for _ in range(count - 1):
        chosen.append(int(nearest.argmax()))
        nearest = torch.minimum(nearest, torch.cdist(x, x[chosen[-1]:chosen[-1] + 1]).squeeze(1))
    return chosen


@pytest.mark.parametrize("layout", ["clusters", "uniform"])
@pytest.mark.parametrize("block_rows, centres_per_product", [(1024, 2048), (97, 5)])
def test_greedy_coreset_lazy_blocks_pick_what_the_plain_loop_picks(layout, block_rows, centres_per_product, monkeypatch):
    """Clustered rows (object patches) and uniform rows (texture); blocks that wait many steps and then
    meet their missed centres in several products must end where the plain loop over all rows ends."""
    monkeypatch.setattr(coreset, "BLOCK_ROWS", block_rows)
    monkeypatch.setattr(coreset, "CENTRES_PER_PRODUCT", centres_per_product)
    g = torch.Generator().manual_seed(1)
    if layout == "clusters":
        modes = torch.randn(12, 16, generator=g) * 6
        x = modes[torch.randint(0, 12, (3000,), generator=g)] + torch.randn(3000, 16, generator=g)
    else:
        x = torch.rand(3000, 3, generator=g)
    idx = greedy_coreset(x, 150, projection_dim=None)
    assert idx.tolist() == _farthest_point_reference(x, 150)


def test_combine_ddad_with_fixed_maxima_keeps_the_size_of_d1():
    d1, d2 = torch.tensor([[[1.0, 4.0]]]), torch.tensor([[[2.0, 4.0]]])
    fixed = (torch.tensor([2.0]), torch.tensor([8.0]))
    assert S.combine_ddad(d1, d2, 1.0, *fixed).tolist() == [[[6.0, 20.0]]]  # 8/2 · d1 + d2
    # Each image's own maxima make d1's term blind to how large d1 is; fixed ones do not.
    assert torch.equal(S.combine_ddad(3 * d1, d2, 1.0), S.combine_ddad(d1, d2, 1.0))
    assert S.combine_ddad(3 * d1, d2, 1.0, *fixed).tolist() == [[[14.0, 52.0]]]
    assert S.map_maxima(d1, d2).tolist() == [[4.0, 4.0]]


def test_pixel_statistics_and_standardise_against_numpy():
    rng = np.random.default_rng(3)
    maps = rng.gamma(2.0, 1.0, (9, 5, 6)).astype(np.float32)
    maps[:, 0, 0] = 0.25  # every normal agrees here: the floor, not zero, divides
    mean, spread = S.pixel_statistics(torch.from_numpy(maps))
    std = maps.std(axis=0)  # numpy's default: population standard deviation
    assert np.allclose(mean.numpy(), maps.mean(axis=0), atol=1e-6)
    assert np.allclose(spread.numpy(), std + std.mean(), atol=1e-6)
    assert float(spread[0, 0]) == pytest.approx(float(std.mean()), rel=1e-5)
    test = torch.from_numpy(rng.gamma(2.0, 1.0, (2, 5, 6)).astype(np.float32))
    z = S.standardise(test, mean, spread)
    assert np.allclose(z.numpy(), (test.numpy() - maps.mean(axis=0)) / (std + std.mean()), atol=1e-5)
    # per image: (B, H, W) statistics broadcast the same way
    assert torch.allclose(S.standardise(test, mean.expand(2, -1, -1), spread.expand(2, -1, -1)), z)
