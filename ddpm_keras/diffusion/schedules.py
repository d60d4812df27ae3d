"""Beta schedules of the forward process, computed in float64 with NumPy.

The schedules are pure functions of their arguments so that the diffusion
math, the tests and any user code can compute them independently of Keras.
"""

import math

import numpy as np

BETA_SCHEDULES = ("linear", "cosine", "sigmoid")


def linear_beta_schedule(timesteps, beta_start=1e-4, beta_end=0.02):
    """The linear schedule of Ho et al. 2020 (the keras.io example's).

    Args:
        timesteps: Integer, the number of diffusion steps `T`.
        beta_start: Float, `beta_1`. Defaults to `1e-4`.
        beta_end: Float, `beta_T`. Defaults to `0.02`.

    Returns:
        A float64 NumPy array of shape `(timesteps,)`.
    """
    _check_timesteps(timesteps)
    _check_beta_range("linear", beta_start, beta_end)
    return np.linspace(beta_start, beta_end, timesteps, dtype=np.float64)


def cosine_beta_schedule(timesteps, s=0.008, max_beta=0.999):
    """The cosine schedule of Nichol & Dhariwal 2021 (eq. 17).

    `alpha_bar(t) = cos(((t / T + s) / (1 + s)) * pi / 2) ** 2` and
    `beta_t = min(1 - alpha_bar(t) / alpha_bar(t - 1), max_beta)`.

    Args:
        timesteps: Integer, the number of diffusion steps `T`.
        s: Float, the small offset that keeps `beta_1` from being tiny.
            Defaults to `0.008`.
        max_beta: Float, the cap on each beta that avoids a singularity
            at `t = T`. Defaults to `0.999`.

    Returns:
        A float64 NumPy array of shape `(timesteps,)`.
    """
    _check_timesteps(timesteps)
    if s < 0.0:
        raise ValueError(f"The cosine offset must be >= 0. Received: s={s}")
    if not 0.0 < max_beta < 1.0:
        raise ValueError(f"max_beta must be in (0, 1). Received: max_beta={max_beta}")

    def alpha_bar(step):
        return math.cos((step / timesteps + s) / (1.0 + s) * math.pi / 2.0) ** 2

    betas = [
        min(1.0 - alpha_bar(i + 1) / alpha_bar(i), max_beta)
        for i in range(timesteps)
    ]
    return np.asarray(betas, dtype=np.float64)


def sigmoid_beta_schedule(timesteps, beta_start=1e-4, beta_end=0.02, width=6.0):
    """Betas along a sigmoid from `beta_start` to `beta_end` (the GeoDiff / diffusers schedule).

    `beta_i = beta_start + (beta_end - beta_start) * sigmoid(x_i)` with
    `x_i` evenly spaced in `[-width, width]`: small betas stay small for
    longer than the linear schedule's and large ones saturate, which keeps
    more of the steps at high signal-to-noise ratio.

    Args:
        timesteps: Integer, the number of diffusion steps `T`.
        beta_start: Float, the smallest beta. Defaults to `1e-4`.
        beta_end: Float, the largest beta. Defaults to `0.02`.
        width: Float > 0, the half-range of the sigmoid's argument.
            Defaults to `6.0`.

    Returns:
        A float64 NumPy array of shape `(timesteps,)`, increasing.
    """
    _check_timesteps(timesteps)
    _check_beta_range("sigmoid", beta_start, beta_end)
    x = np.linspace(-width, width, timesteps, dtype=np.float64)
    return beta_start + (beta_end - beta_start) / (1.0 + np.exp(-x))


def rescale_zero_terminal_snr(betas):
    """Rescales `betas` so that the last step has zero signal (Lin et al. 2023, Algorithm 1).

    `sqrt(alphas_cumprod)` is shifted and scaled so that its last value
    becomes 0 and its first is kept: `x_T` is then pure noise, as sampling
    assumes, instead of keeping a trace of the image (`sqrt(ab_T) = 0.0064`
    for the linear schedule of 1,000 steps). The last beta becomes 1: the
    signal-to-noise ratio at `T - 1` is 0, where a noise prediction says
    nothing about `x_0` (use `prediction_type="v"`).

    Args:
        betas: 1-D float array, each in (0, 1).

    Returns:
        A float64 NumPy array of the same length; `1 - cumprod(1 - betas)`
        ends at exactly 1 and starts at `betas[0]`.
    """
    betas = np.asarray(betas, dtype=np.float64)
    if betas.size < 2:
        raise ValueError(
            "Zero terminal SNR needs at least 2 timesteps (the first is kept, the last becomes pure noise). "
            f"Received: {betas.size} timestep(s)"
        )
    sqrt_alphas_cumprod = np.sqrt(np.cumprod(1.0 - betas))
    first, last = sqrt_alphas_cumprod[0], sqrt_alphas_cumprod[-1]
    sqrt_alphas_cumprod = (sqrt_alphas_cumprod - last) * first / (first - last)
    alphas_cumprod = sqrt_alphas_cumprod**2
    alphas = np.append(alphas_cumprod[0], alphas_cumprod[1:] / alphas_cumprod[:-1])
    return 1.0 - alphas


def get_beta_schedule(name, timesteps, beta_start=1e-4, beta_end=0.02):
    """Returns the betas of the schedule called `name` (one of `BETA_SCHEDULES`).

    `beta_start` and `beta_end` apply to the linear and sigmoid schedules.
    """
    if name == "linear":
        return linear_beta_schedule(timesteps, beta_start, beta_end)
    if name == "cosine":
        return cosine_beta_schedule(timesteps)
    if name == "sigmoid":
        return sigmoid_beta_schedule(timesteps, beta_start, beta_end)
    raise ValueError(
        f"Unknown beta_schedule: {name!r}. Expected one of {BETA_SCHEDULES}."
    )


def _check_timesteps(timesteps):
    if isinstance(timesteps, bool) or not isinstance(timesteps, (int, np.integer)) or timesteps < 1:
        raise ValueError(
            f"timesteps must be a positive integer. Received: timesteps={timesteps!r}"
        )


def _check_beta_range(name, beta_start, beta_end):
    if not 0.0 < beta_start <= beta_end < 1.0:
        raise ValueError(
            f"The {name} schedule needs 0 < beta_start <= beta_end < 1. "
            f"Received: beta_start={beta_start}, beta_end={beta_end}"
        )
