"""DDIM against cases with known answers."""

import pytest
import torch

from adcli.model.diffusion.ddim import ddim_sample, ddim_step, ddim_timesteps
from adcli.model.diffusion.schedules import NoiseSchedule

SCHEDULE = NoiseSchedule.make("linear", 1000, 1e-4, 0.02)


class PointMass(torch.nn.Module):
    """The exact ε-predictor for data that is one point x*: ε̂ = (x_t − √ᾱ_t·x*) / √(1 − ᾱ_t), linear in x_t."""

    def __init__(self, target):
        super().__init__()
        self.target, self.calls = target, 0

    def forward(self, x, t):
        self.calls += 1
        a = SCHEDULE.alphas_cumprod[t].to(x.dtype).reshape(-1, 1, 1, 1)
        return (x - a.sqrt() * self.target) / (1 - a).sqrt()


@pytest.mark.parametrize("timesteps", [[999], [999, 500, 10], list(range(700, -1, -35)), [3, 2, 1, 0]])
def test_deterministic_ddim_lands_exactly_on_the_data_with_any_timesteps(timesteps):
    target = torch.randn(2, 3, 4, 4, dtype=torch.float64)
    model = PointMass(target)
    start = torch.randn(2, 3, 4, 4, dtype=torch.float64)
    x = ddim_sample(model, start, timesteps, SCHEDULE)
    assert torch.allclose(x, target, atol=1e-9) and model.calls == len(timesteps)


def test_deterministic_ddim_is_invertible():
    """η = 0: running the same update upwards (0 -> t) and back down returns the start exactly."""
    target = torch.randn(1, 3, 4, 4, dtype=torch.float64)
    model = PointMass(target)
    x0 = target.clone()
    up = [0, 100, 300, 600]
    x = x0
    for a, b in zip(up, up[1:]):  # inversion: the step formula from a to b > a
        x, _ = ddim_step(SCHEDULE, x, a, b, model(x, torch.tensor([a])))
    back = ddim_sample(model, x, up[::-1][:-1], SCHEDULE)
    assert torch.allclose(back, x0, atol=1e-9)


def test_stochastic_steps_follow_the_generator():
    model = PointMass(torch.zeros(1, 1, 2, 2))
    start = torch.randn(1, 1, 2, 2)
    steps = [900, 600, 300]

    def run(seed):  # the states between steps: the last step lands on the point whatever the noise
        states = []
        ddim_sample(model, start, steps, SCHEDULE, eta=1.0, generator=torch.Generator().manual_seed(seed),
                    after_step=lambda i, t, x, x0: states.append(x.clone()))
        return torch.stack(states[:-1])

    assert torch.equal(run(1), run(1)) and not torch.equal(run(1), run(2))


def test_hooks_see_every_step_and_may_replace_the_state():
    target = torch.ones(1, 1, 2, 2, dtype=torch.float64)
    model = PointMass(target)
    seen = []
    replaced = ddim_sample(model, torch.zeros(1, 1, 2, 2, dtype=torch.float64), [800, 400], SCHEDULE,
                           before_step=lambda i, t, x: SCHEDULE.q_sample(target, torch.tensor([t]), torch.zeros_like(x)),
                           after_step=lambda i, t, x, x0: seen.append((i, t, float(x0.mean()))))
    assert [s[:2] for s in seen] == [(0, 800), (1, 400)] and seen[0][2] == pytest.approx(1.0)
    assert torch.allclose(replaced, target)


def test_timestep_lists():
    assert ddim_timesteps(1000, 10) == [999, 899, 799, 699, 599, 499, 399, 299, 199, 99]
    assert ddim_timesteps(1000, 4, start=399) == [399, 299, 199, 99]
    with pytest.raises(ValueError):
        ddim_timesteps(1000, 0)
    with pytest.raises(ValueError, match="strictly decreasing"):
        ddim_sample(PointMass(torch.zeros(1)), torch.zeros(1, 1, 1, 1), [10, 20], SCHEDULE)
