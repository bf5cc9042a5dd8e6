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


# Dormand–Prince 5(4) tableau, as in scipy.integrate.RK45 (the solver the paper's code calls).
_DP_C = (0.0, 1 / 5, 3 / 10, 4 / 5, 8 / 9, 1.0)
_DP_A = ((), (1 / 5,), (3 / 40, 9 / 40), (44 / 45, -56 / 15, 32 / 9),
         (19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729),
         (9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656))
_DP_B = (35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84)
_DP_E = (-71 / 57600, 0.0, 71 / 16695, -71 / 1920, 17253 / 339200, -22 / 525, 1 / 40)  # 5th − 4th order weights
_SAFETY, _MIN_FACTOR, _MAX_FACTOR = 0.9, 0.2, 10.0


def _rms(x: torch.Tensor) -> float:
    return float(x.double().pow(2).mean().sqrt())


@torch.no_grad()
def rk45(model, x0: torch.Tensor, t0: float = 0.0, t1: float = 1.0, rtol: float = 1e-5, atol: float = 1e-5,
         **model_kwargs) -> tuple[torch.Tensor, int]:
    """Solve dX/dt = v(X, t) from t0 to t1 with adaptive RK45 (Dormand–Prince), for reflow pairs.

    The step control is scipy's `solve_ivp(method="RK45")` (same initial step, error norm and factors),
    written in torch so the state stays on the model's device and in its dtype: no float64 NumPy copy
    per call. Returns (X(t1), number of network evaluations). The whole batch is one ODE state.
    """
    def f(t: float, x: torch.Tensor) -> torch.Tensor:
        calls[0] += 1
        return model(x, torch.full((x.shape[0],), t * TIME_SCALE, device=x.device, dtype=x.dtype), **model_kwargs)

    calls = [0]
    exponent = -1 / 5  # the embedded error estimate is 4th order
    t, y = float(t0), x0
    k0 = f(t, y)
    # Initial step (Hairer, Nørsett & Wanner, as scipy's select_initial_step).
    scale = atol + y.abs() * rtol
    d0, d1 = _rms(y / scale), _rms(k0 / scale)
    h0 = 1e-6 if d0 < 1e-5 or d1 < 1e-5 else 0.01 * d0 / d1
    h0 = min(h0, abs(t1 - t))
    d2 = _rms((f(t + h0, y + h0 * k0) - k0) / scale) / h0
    h1 = max(1e-6, h0 * 1e-3) if d1 <= 1e-15 and d2 <= 1e-15 else (0.01 / max(d1, d2)) ** (1 / 5)
    h_abs = min(100 * h0, h1, abs(t1 - t))
    while t < t1:
        min_step = 10 * np.spacing(t)
        h_abs, rejected = max(h_abs, min_step), False
        while True:
            if h_abs < min_step:
                raise RuntimeError("RK45 failed: the required step size is less than the spacing between numbers")
            h = min(h_abs, t1 - t)
            ks = [k0]
            for c, a in zip(_DP_C[1:], _DP_A[1:]):
                ks.append(f(t + c * h, y + h * sum(w * k for w, k in zip(a, ks) if w)))
            y_new = y + h * sum(w * k for w, k in zip(_DP_B, ks) if w)
            k_new = f(t + h, y_new)
            error = h * sum(w * k for w, k in zip(_DP_E, [*ks, k_new]) if w)
            norm = _rms(error / (atol + torch.maximum(y.abs(), y_new.abs()) * rtol))
            if norm < 1:
                factor = _MAX_FACTOR if norm == 0 else min(_MAX_FACTOR, _SAFETY * norm ** exponent)
                h_abs = h * (min(1.0, factor) if rejected else factor)
                break
            h_abs = h * max(_MIN_FACTOR, _SAFETY * norm ** exponent)
            rejected = True
        t = t1 if t + h >= t1 else t + h
        y, k0 = y_new, k_new
    return y, calls[0]
