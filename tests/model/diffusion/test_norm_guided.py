import math

import torch

from adcli.model.diffusion.norm_guided import norm_guided_x0
from adcli.model.diffusion.schedules import NoiseSchedule


def formula_model(x, t):
    """A 'network' whose answer is known: ε(x, t) = x · t / (t + 1000)."""
    return x * (t.float() / (t.float() + 1000)).reshape(-1, 1, 1, 1)


def test_norm_guided_step_matches_hand_computation():
    s = NoiseSchedule.make("linear", 1000, 1e-4, 0.02)
    x0, n_s, n_b, w = 0.3, 0.5, -1.2, 1.0
    t_s, t_b = 200, 400
    as_, ab = s.alphas_cumprod[t_s].item(), s.alphas_cumprod[t_b].item()
    # By hand, with plain floats, following METHODS.md step by step.
    x_ts = math.sqrt(as_) * x0 + math.sqrt(1 - as_) * n_s
    x_tb = math.sqrt(ab) * x0 + math.sqrt(1 - ab) * n_b
    eps_s = x_ts * t_s / (t_s + 1000)
    eps_b = x_tb * t_b / (t_b + 1000)
    x0_b = max(-1.0, min(1.0, (x_tb - math.sqrt(1 - ab) * eps_b) / math.sqrt(ab)))
    n_ts = math.sqrt(as_) * x0_b + math.sqrt(1 - as_) * eps_s
    eps_hat = eps_s - math.sqrt(1 - as_) * w * (n_ts - x_ts)
    x0_g = max(-1.0, min(1.0, (x_ts - math.sqrt(1 - as_) * eps_hat) / math.sqrt(as_)))

    full = lambda v: torch.full((1, 1, 1, 1), v)
    out = norm_guided_x0(formula_model, full(x0), torch.tensor([t_s]), torch.tensor([t_b]), full(n_s), full(n_b), s, w=w)
    assert math.isclose(out["x0_b"].item(), x0_b, rel_tol=1e-5)
    assert math.isclose(out["x0_g"].item(), x0_g, rel_tol=1e-5)


def test_perfect_denoiser_reconstructs_input():
    s = NoiseSchedule.make("linear", 1000, 1e-4, 0.02)
    g = torch.Generator().manual_seed(1)
    x0 = torch.rand(2, 3, 4, 4, generator=g)
    n_s, n_b = torch.randn(2, 3, 4, 4, generator=g), torch.randn(2, 3, 4, 4, generator=g)
    t_s, t_b = torch.tensor([200, 10]), torch.tensor([400, 900])
    true_noise = torch.cat([n_s, n_b])
    out = norm_guided_x0(lambda x, t: true_noise, x0, t_s, t_b, n_s, n_b, s)
    assert torch.allclose(out["x0_g"], x0, atol=1e-4)
