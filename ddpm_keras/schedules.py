"""Beta schedules of the forward process, computed in float64 with NumPy.

The schedules are pure functions of their arguments so that the diffusion
math, the tests and any user code can compute them independently of Keras.
"""

import math

import numpy as np

BETA_SCHEDULES = ("linear", "cosine")


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
    if not 0.0 < beta_start <= beta_end < 1.0:
        raise ValueError(
            "The linear schedule needs 0 < beta_start <= beta_end < 1. "
            f"Received: beta_start={beta_start}, beta_end={beta_end}"
        )
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


def get_beta_schedule(name, timesteps, beta_start=1e-4, beta_end=0.02):
    """Returns the betas of the schedule called `name` (`"linear"` or `"cosine"`).

    `beta_start` and `beta_end` apply to the linear schedule only.
    """
    if name == "linear":
        return linear_beta_schedule(timesteps, beta_start, beta_end)
    if name == "cosine":
        return cosine_beta_schedule(timesteps)
    raise ValueError(
        f"Unknown beta_schedule: {name!r}. Expected one of {BETA_SCHEDULES}."
    )


def _check_timesteps(timesteps):
    if isinstance(timesteps, bool) or not isinstance(timesteps, (int, np.integer)) or timesteps < 1:
        raise ValueError(
            f"timesteps must be a positive integer. Received: timesteps={timesteps!r}"
        )
