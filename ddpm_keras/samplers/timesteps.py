"""Which training timesteps a sampler visits: spacing, respacing and the checks of a step count."""

import numpy as np

from ddpm_keras.diffusion import GaussianDiffusion
from ddpm_keras.utils.checks import is_int

TIMESTEP_SPACINGS = ("trailing", "logsnr", "karras")
KARRAS_RHO = 7.0


def spaced_timesteps(num_timesteps, num_steps):
    """`num_steps` of the training timesteps, with "trailing" spacing.

    `s_i = round((i + 1) * T / num_steps) - 1`, ascending. The last is
    always `T - 1`, so sampling starts from the step the network was
    trained to see pure noise at; the "leading" spacing of diffusers
    (issue 2585; `[0, 20, ..., 980] + 1` for 50 of 1,000 steps) starts at
    a less noisy step and never reaches `T - 1` (Lin et al. 2023).
    `num_steps == T` gives every timestep.

    Args:
        num_timesteps: Integer, the number of training timesteps `T`.
        num_steps: Integer in `[1, T]`, how many to keep.

    Returns:
        An int64 NumPy array `(num_steps,)`, strictly increasing.

    Example:

    >>> spaced_timesteps(1000, 4)
    array([249, 499, 749, 999])
    """
    check_num_steps(num_steps, num_timesteps)
    return np.round(np.arange(1, num_steps + 1) * (num_timesteps / num_steps)).astype(np.int64) - 1


def sampling_timesteps(diffusion, num_steps, spacing="trailing"):
    """The `num_steps` training timesteps a sampler visits, ascending; the last is always `T - 1`.

    - `"trailing"`: evenly spaced in `t` (`spaced_timesteps`).
    - `"logsnr"`: evenly spaced in the log signal-to-noise ratio
      `lambda = log(alpha / sigma)` between `T - 1` and `0` (the grid of
      DPM-Solver, Lu et al. 2022): more steps where the image forms.
    - `"karras"`: `sigma / alpha` on the grid of Karras et al. 2022
      (eq. 5, `rho = 7`) between its values at `T - 1` and `0`.

    The network only knows its integer training timesteps, so each
    fractional position is mapped to the timestep whose `lambda` is
    nearest; positions closer than one timestep (where few timesteps are
    asked of a short schedule) are moved apart to neighbouring timesteps,
    so every step is distinct. With zero terminal SNR (`lambda = -inf` at
    `T - 1`) the grid spans `[T - 2, 0]` and `T - 1` is added as the first
    point.

    Args:
        diffusion: A `GaussianDiffusion`.
        num_steps: Integer in `[1, T]`.
        spacing: One of `TIMESTEP_SPACINGS`. Defaults to `"trailing"`.

    Returns:
        An int64 NumPy array `(num_steps,)`, strictly increasing.
    """
    check_spacing(spacing)
    num_timesteps = diffusion.num_timesteps
    check_num_steps(num_steps, num_timesteps)
    if spacing == "trailing" or num_steps == num_timesteps or num_steps == 1:
        return spaced_timesteps(num_timesteps, num_steps)
    alphas_cumprod = diffusion.terms_float64["alphas_cumprod"]
    with np.errstate(divide="ignore"):
        log_snr = 0.5 * (np.log(alphas_cumprod) - np.log1p(-alphas_cumprod))
    top = num_timesteps - 1 if np.isfinite(log_snr[-1]) else num_timesteps - 2
    count = num_steps if top == num_timesteps - 1 else num_steps - 1
    if spacing == "logsnr":
        targets = np.linspace(log_snr[top], log_snr[0], count)
    else:
        sigma_max, sigma_min = np.exp(-log_snr[top]), np.exp(-log_snr[0])
        ramp = np.linspace(0.0, 1.0, count)
        inverse_rho = 1.0 / KARRAS_RHO
        sigmas = (sigma_max**inverse_rho + ramp * (sigma_min**inverse_rho - sigma_max**inverse_rho)) ** KARRAS_RHO
        targets = -np.log(sigmas)
    # log_snr decreases with t: the nearest timestep of each target, ascending.
    candidates = log_snr[: top + 1]
    timesteps = np.sort(np.abs(candidates[None, :] - targets[:, None]).argmin(axis=1))
    timesteps[-1] = top
    # Targets closer than one timestep share it: move the lower ones up, then (if that
    # passes the top) the upper ones down, so that the steps are distinct.
    for i in range(1, count):
        timesteps[i] = max(timesteps[i], timesteps[i - 1] + 1)
    timesteps[-1] = min(timesteps[-1], top)
    for i in range(count - 2, -1, -1):
        timesteps[i] = min(timesteps[i], timesteps[i + 1] - 1)
    if top != num_timesteps - 1:
        timesteps = np.append(num_timesteps - 1, timesteps)
    return np.sort(timesteps).astype(np.int64)


def respaced(diffusion, timesteps):
    """The diffusion restricted to `timesteps` (Nichol & Dhariwal 2021, respace.py).

    Args:
        diffusion: A `GaussianDiffusion`.
        timesteps: Strictly increasing integers in `[0, T)`, the kept steps.

    Returns:
        `(spaced, timestep_map)`: a `GaussianDiffusion` whose step `i` goes
        from `alphas_cumprod[s_i]` to `alphas_cumprod[s_{i-1}]` (1 before
        the first), with betas `1 - ab[s_i] / ab[s_{i-1}]`, and an int64
        NumPy array mapping its step `i` to the training timestep `s_i`
        that the network must be called with.

    Example:

    >>> spaced, timestep_map = respaced(diffusion, spaced_timesteps(1000, 50))
    """
    timesteps = np.asarray(timesteps, dtype=np.int64)
    if (
        timesteps.ndim != 1 or timesteps.size < 1 or np.any(np.diff(timesteps) <= 0)
        or timesteps[0] < 0 or timesteps[-1] >= diffusion.num_timesteps
    ):
        raise ValueError(
            "timesteps must be strictly increasing integers in "
            f"[0, {diffusion.num_timesteps}). Received: timesteps={timesteps!r}"
        )
    alphas_cumprod = diffusion.terms_float64["alphas_cumprod"][timesteps]
    betas = 1.0 - alphas_cumprod / np.append(1.0, alphas_cumprod[:-1])
    spaced = GaussianDiffusion.from_betas(betas, diffusion.clip_min, diffusion.clip_max)
    return spaced, timesteps


def sampling_schedule(diffusion, num_steps=None, spacing="trailing"):
    """`(diffusion, timestep_map)` to sample with `num_steps` steps.

    `None` or `T` gives the diffusion itself with the identity map; fewer
    steps give `respaced(diffusion, sampling_timesteps(diffusion, num_steps, spacing))`.
    """
    if num_steps is None or num_steps == diffusion.num_timesteps:
        return diffusion, np.arange(diffusion.num_timesteps, dtype=np.int64)
    return respaced(diffusion, sampling_timesteps(diffusion, num_steps, spacing))


def check_num_steps(num_steps, num_timesteps, name="num_steps"):
    """Raises a `ValueError` unless `num_steps` is an integer in `[1, T]`."""
    if not is_int(num_steps) or not 1 <= num_steps <= num_timesteps:
        raise ValueError(
            f"{name} must be an integer in [1, {num_timesteps}] (the diffusion's timesteps). "
            f"Received: {name}={num_steps!r}"
        )


def check_spacing(spacing):
    """Raises a `ValueError` unless `spacing` is one of `TIMESTEP_SPACINGS`."""
    if spacing not in TIMESTEP_SPACINGS:
        raise ValueError(f"Unknown timestep_spacing: {spacing!r}. Expected one of {TIMESTEP_SPACINGS}.")
