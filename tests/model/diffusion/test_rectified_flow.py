import math

import torch

from adcli.model.diffusion import rectified_flow as RF


def test_interpolation_and_target():
    x0, x1 = torch.zeros(2, 1, 2, 2), torch.ones(2, 1, 2, 2)
    t = torch.tensor([0.25, 1.0])
    xt = RF.interpolate(x0, x1, t)
    assert torch.allclose(xt[0], torch.full((1, 2, 2), 0.25)) and torch.allclose(xt[1], x1[1])
    assert torch.equal(RF.velocity_target(x0, x1), x1)


def test_flow_loss_is_zero_for_the_exact_velocity_and_scales_time():
    g = torch.Generator().manual_seed(0)
    x0, x1 = torch.randn(3, 2, 4, 4, generator=g), torch.rand(3, 2, 4, 4, generator=g)
    seen = {}

    def exact(x, t_scaled):
        seen["t"] = t_scaled
        return x1 - x0

    t = torch.tensor([0.1, 0.5, 0.9])
    assert RF.flow_loss(exact, x1, x0, t).item() == 0.0
    assert torch.allclose(seen["t"], t * 999)
    assert RF.flow_loss(lambda x, s: torch.zeros_like(x), x1, x0, t).item() == (x1 - x0).pow(2).mean().item()


def test_one_step_equals_many_steps_on_a_straight_field():
    """v(x, t) = (target − x)/(1 − t) moves on straight lines: every Euler step count is exact."""
    target = torch.tensor([[3.0, -1.0]])

    def straight(x, t_scaled):
        t = (t_scaled / RF.TIME_SCALE).reshape(-1, 1)
        return (target - x) / (1 - t)

    x_t = torch.tensor([[0.5, 2.0]])
    one = RF.euler(straight, x_t, 0.83, 1)
    many = RF.euler(straight, x_t, 0.83, 50)
    assert torch.allclose(one, target, atol=1e-5) and torch.allclose(many, target, atol=1e-5)


def test_rk45_on_a_field_with_a_known_solution():
    """dX/dt = X  ->  X(1) = X(0)·e."""
    x0 = torch.tensor([[1.0, -2.0, 0.5]])
    x1, calls = RF.rk45(lambda x, s: x, x0)
    assert torch.allclose(x1, x0 * math.e, rtol=1e-4)
    assert calls > 5


def test_rk45_takes_scipys_steps():
    """The same adaptive steps as scipy's solve_ivp(method="RK45"): same result in float64, same call count."""
    from scipy.integrate import solve_ivp

    def field(x, s):  # nonlinear and time-dependent: the step size changes along the way
        t = s[:, None] / RF.TIME_SCALE
        return -x ** 3 + torch.sin(6 * t) * x + 1.0

    x0 = torch.tensor([[1.0, -2.0, 0.5, 3.0]], dtype=torch.float64)
    ours, calls = RF.rk45(field, x0, rtol=1e-6, atol=1e-6)
    rhs = lambda t, y: field(torch.from_numpy(y)[None], torch.tensor([t * RF.TIME_SCALE]))[0].numpy()
    ref = solve_ivp(rhs, (0.0, 1.0), x0[0].numpy(), method="RK45", rtol=1e-6, atol=1e-6)
    assert calls == ref.nfev
    assert torch.allclose(ours[0], torch.from_numpy(ref.y[:, -1]), rtol=1e-10, atol=1e-12)
    ours32, _ = RF.rk45(field, x0.float(), rtol=1e-6, atol=1e-6)  # the model's dtype is kept
    assert ours32.dtype == torch.float32 and torch.allclose(ours32[0].double(), torch.from_numpy(ref.y[:, -1]), atol=1e-5)
