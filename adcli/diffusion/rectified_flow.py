"""Rectified flow (Liu et al. 2023) as TimeNet uses it: straight paths from noise to images.

Notation (code name -> paper symbol):
    x0       X_0 ~ N(0, I)            noise
    x1       X_1                      image
    t        t ∈ [0, 1]               path position; the network sees t · time_scale (999)
    x_t      X_t = t·X_1 + (1 − t)·X_0                              (eq. 3)
    target   X_1 − X_0                velocity the network v(X_t, t, c) learns   (eq. 4)
    one-step X̂_1 = X_t + (1 − t)·v(X_t, t, c)
The network is passed in; nothing here holds weights. `model(x, t_scaled, **kwargs)` returns v.
"""

from __future__ import annotations

import numpy as np
import torch

TIME_SCALE = 999.0


def interpolate(x0: torch.Tensor, x1: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """X_t = t·X_1 + (1 − t)·X_0 with t (B,) broadcast over (B, C, H, W)."""
    t = t.reshape(-1, *([1] * (x1.ndim - 1)))
    return t * x1 + (1 - t) * x0


def velocity_target(x0: torch.Tensor, x1: torch.Tensor) -> torch.Tensor:
    return x1 - x0


def flow_loss(model, x1: torch.Tensor, x0: torch.Tensor, t: torch.Tensor, **model_kwargs) -> torch.Tensor:
    """‖v(X_t, t) − (X_1 − X_0)‖² averaged over everything (eq. 4)."""
    v = model(interpolate(x0, x1, t), t * TIME_SCALE, **model_kwargs)
    return (v - velocity_target(x0, x1)).pow(2).mean()


def euler(model, x_t: torch.Tensor, t_start: float, steps: int, **model_kwargs) -> torch.Tensor:
    """Integrate dX/dt = v from t_start to 1 in `steps` equal Euler steps; steps = 1 is TimeNet's one step."""
    x = x_t
    ts = np.linspace(t_start, 1.0, steps + 1)
    for a, b in zip(ts[:-1], ts[1:]):
        t = torch.full((x.shape[0],), float(a), device=x.device, dtype=x.dtype)
        x = x + (b - a) * model(x, t * TIME_SCALE, **model_kwargs)
    return x


def rk45(model, x0: torch.Tensor, t0: float = 0.0, t1: float = 1.0, rtol: float = 1e-5, atol: float = 1e-5,
         **model_kwargs) -> tuple[torch.Tensor, int]:
    """Solve dX/dt = v(X, t) from t0 to t1 with adaptive RK45 (scipy's solve_ivp), for reflow pairs.

    Returns (X(t1), number of network evaluations). The whole batch is one ODE state.
    """
    from scipy.integrate import solve_ivp

    shape, device, dtype = x0.shape, x0.device, x0.dtype
    calls = {"n": 0}

    @torch.no_grad()
    def rhs(t: float, y: np.ndarray) -> np.ndarray:
        calls["n"] += 1
        x = torch.from_numpy(y).to(device=device, dtype=dtype).reshape(shape)
        tt = torch.full((shape[0],), float(t), device=device, dtype=dtype)
        return model(x, tt * TIME_SCALE, **model_kwargs).reshape(-1).double().cpu().numpy()

    sol = solve_ivp(rhs, (t0, t1), x0.reshape(-1).double().cpu().numpy(), method="RK45", rtol=rtol, atol=atol)
    if not sol.success:
        raise RuntimeError(f"RK45 failed: {sol.message}")
    return torch.from_numpy(sol.y[:, -1]).to(device=device, dtype=dtype).reshape(shape), calls["n"]
