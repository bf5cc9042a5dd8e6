import math

import torch

from adcli.model.diffusion.schedules import NoiseSchedule


def test_linear_schedule_closed_form():
    s = NoiseSchedule.make("linear", 1000, 1e-4, 0.02)
    assert s.betas.dtype == torch.float64
    assert math.isclose(s.betas[0].item(), 1e-4) and math.isclose(s.betas[-1].item(), 0.02)
    assert math.isclose(s.betas[499].item(), 1e-4 + 499 * (0.02 - 1e-4) / 999, rel_tol=1e-12)
    expected = 1.0
    for t in range(201):
        expected *= 1 - (1e-4 + t * (0.02 - 1e-4) / 999)
    assert math.isclose(s.alphas_cumprod[200].item(), expected, rel_tol=1e-10)


def test_scaled_linear_schedule():
    s = NoiseSchedule.make("scaled_linear", 1000, 0.00085, 0.012)
    assert math.isclose(s.betas[-1].item(), 0.012, rel_tol=1e-12)
    assert math.isclose(s.betas[500].sqrt().item(), 0.00085**0.5 + 500 * (0.012**0.5 - 0.00085**0.5) / 999, rel_tol=1e-10)


def test_q_sample_and_predict_x0_are_inverse():
    s = NoiseSchedule.make("linear", 1000, 1e-4, 0.02)
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.rand(3, 3, 4, 4, generator=g), torch.randn(3, 3, 4, 4, generator=g)
    t = torch.tensor([0, 200, 999])
    x_t = s.q_sample(x0, t, eps)
    ab = s.alphas_cumprod[200].item()
    assert torch.allclose(x_t[1], math.sqrt(ab) * x0[1] + math.sqrt(1 - ab) * eps[1], atol=1e-6)
    assert torch.allclose(s.predict_x0(x_t, t, eps), x0, atol=1e-3)
