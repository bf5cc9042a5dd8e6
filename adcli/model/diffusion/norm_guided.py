"""DiffusionAD's norm-guided one-step denoising (Zhang et al., §IV-B, eqs. 7–8).

Notation (code name -> paper symbol):
    x0            x_0          input image
    t_s, t_b      t_s, t_b     small and big noise levels (t_s < t_b)
    x_ts, x_tb    x_{t_s}, x_{t_b}   the input noised to each level with independent noise
    eps_s, eps_b  ε_θ(x_{t_s}), ε_θ(x_{t_b})
    x0_b          x̂_0^b        one-step prediction from the big level (anomaly-free, coarse)
    n_ts          n_{t_s}      x̂_0^b re-noised to t_s with the *predicted* noise ε_θ(x_{t_s})
    eps_hat       ε̂            noise with norm guidance, guidance scale w
    x0_g          x̂_0^g        the norm-guided reconstruction
"""

from __future__ import annotations

import torch

from adcli.model.diffusion.schedules import NoiseSchedule


def norm_guided_x0(model, x0: torch.Tensor, t_s: torch.Tensor, t_b: torch.Tensor, noise_s: torch.Tensor,
                   noise_b: torch.Tensor, schedule: NoiseSchedule, w: float = 1.0, clip: float = 1.0,
                   **model_kwargs) -> dict[str, torch.Tensor]:
    """One network call for both levels. x0, noise_* (B, C, H, W); t_* (B,) ints.

    Returns x0_g (the reconstruction) and eps_s/eps_b/x0_b (for the training loss and inspection).
    `model(x, t, **model_kwargs)` predicts ε.
    """
    b = x0.shape[0]
    # 1. Noise the input to both levels.
    x_ts = schedule.q_sample(x0, t_s, noise_s)
    x_tb = schedule.q_sample(x0, t_b, noise_b)
    # 2. Predict both noises in one batched call: (2B, C, H, W).
    batched_kwargs = {k: torch.cat([v, v]) for k, v in model_kwargs.items()}
    eps = model(torch.cat([x_ts, x_tb]), torch.cat([t_s, t_b]), **batched_kwargs)
    eps_s, eps_b = eps[:b], eps[b:]
    # 3. Direct prediction from the big level.
    x0_b = schedule.predict_x0(x_tb, t_b, eps_b).clamp(-clip, clip)
    # 4. Re-noise it to t_s with the predicted small-level noise.
    sqrt_1m_s = schedule.sqrt_one_minus_alpha_bar(t_s, x0.ndim)
    n_ts = schedule.sqrt_alpha_bar(t_s, x0.ndim) * x0_b + sqrt_1m_s * eps_s
    # 5. Norm guidance: ε̂ = ε_s − √(1 − ᾱ_s)·w·∇ of −½‖n_ts − x_ts‖², i.e. the difference n_ts − x_ts.
    eps_hat = eps_s - sqrt_1m_s * w * (n_ts - x_ts)
    # 6. Guided one-step reconstruction.
    x0_g = schedule.predict_x0(x_ts, t_s, eps_hat).clamp(-clip, clip)
    return {"x0_g": x0_g, "x0_b": x0_b, "eps_s": eps_s, "eps_b": eps_b}
