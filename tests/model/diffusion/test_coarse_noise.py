import math

import pytest
import torch

from adcli.model.diffusion.coarse_noise import lowpass_unit, mix, source_noise


def test_share_zero_draws_exactly_what_randn_draws():
    a = source_noise((2, 3, 8, 8), torch.Generator().manual_seed(3), "cpu", 0.0, 0.1)
    b = torch.randn((2, 3, 8, 8), generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b)


def test_every_pixel_keeps_unit_variance():
    draws = source_noise((4000, 1, 12, 12), torch.Generator().manual_seed(0), "cpu", 0.6, 0.2)
    per_pixel = draws.var(dim=0)  # over draws, at each position: corners as well as the middle
    assert float(per_pixel.min()) > 0.9 and float(per_pixel.max()) < 1.1
    assert abs(float(draws.mean())) < 0.02


@pytest.mark.parametrize("sigma", [1.0, 2.5])
def test_lowpass_correlation_follows_the_gaussian(sigma):
    blurred = lowpass_unit(torch.randn(3000, 1, 24, 24, generator=torch.Generator().manual_seed(1)), sigma)
    for lag in (1, 3):
        correlation = float((blurred[..., lag:] * blurred[..., :-lag]).mean())
        # white noise blurred by a Gaussian of σ: correlation exp(−d² / 4σ²) at distance d
        assert correlation == pytest.approx(math.exp(-lag ** 2 / (4 * sigma ** 2)), abs=0.04)


def test_mix_shares_the_variance_between_white_and_coarse():
    g = torch.Generator().manual_seed(2)
    white, second = torch.randn(3000, 1, 16, 16, generator=g), torch.randn(3000, 1, 16, 16, generator=g)
    mixed = mix(white, second, 0.3, 2.0)
    assert float((mixed * white).mean()) == pytest.approx(math.sqrt(0.7), abs=0.03)
    assert torch.equal(mix(white, second, 0.0, 2.0), white)


def test_fixed_source_noise_is_the_recipes_fixed_draw_plus_its_own_coarse_part():
    from adcli.model.diffusion.coarse_noise import fixed_source_noise
    from adcli.core.device import fixed_noise

    assert torch.equal(fixed_source_noise(5, (1, 3, 16, 16), "cpu", 0.0, 0.1), fixed_noise(5, (1, 3, 16, 16)))
    coarse = fixed_source_noise(5, (1, 3, 16, 16), "cpu", 0.5, 0.1)
    assert torch.equal(coarse, fixed_source_noise(5, (1, 3, 16, 16), "cpu", 0.5, 0.1))  # the same every call
    assert float((coarse * fixed_noise(5, (1, 3, 16, 16))).mean()) == pytest.approx(math.sqrt(0.5), abs=0.1)
