"""Reverse-process samplers written as whole loops in `keras.ops`.

A sampler takes `eps_fn(x_t, t) -> predicted noise` (the network, however
the caller wraps it; `t` is always an ORIGINAL training timestep),
`noise_fn(shape, step) -> standard normal noise` (the caller's source of
randomness: a `SeedGenerator` on TensorFlow, a key folded with `step` under
`jax.jit`; every draw of a chain passes a distinct integer `step`), a
`GaussianDiffusion` and the starting noise, and runs the whole chain with
`keras.ops.fori_loop`, so the caller can compile the chain once and reuse
it. Samplers know nothing of Keras models or training.

Samplers (`SAMPLERS`):

- `"ddpm"`: ancestral sampling (Ho et al. 2020, Algorithm 2). With fewer
  steps than `T` it runs the respaced chain of Nichol & Dhariwal 2021:
  `respaced(diffusion, timesteps)` is a `GaussianDiffusion` over the kept
  timesteps `s_0 < ... < s_{n-1}` with betas
  `1 - alphas_cumprod[s_i] / alphas_cumprod[s_{i-1}]`, and the network is
  called with the original `s_i`.
- `"ddim"`: Song et al. 2021 (DDIM) with
  `sigma_t = eta * sqrt((1 - ab_prev) / (1 - ab_t)) * sqrt(1 - ab_t / ab_prev)`;
  `eta=0` is deterministic, `eta=1` is the (respaced) DDPM chain.
- `"pc"`: predictor-corrector (Song et al. 2021, score SDE, Algorithm 5
  with the VP Langevin corrector): a DDPM step, then `corrector_steps`
  Langevin steps at the new noise level.

All of them walk a (respaced) schedule given by `spaced_timesteps`:
"trailing" spacing (Lin et al. 2023, "Common Diffusion Noise Schedules and
Sample Steps are Flawed", Table 2), which always starts at `t = T - 1`.
`ddim_encode_loop` runs the DDIM ODE backwards (x_0 -> x_T), and
`inpaint_loop` adds the replacement method and RePaint resampling.
"""

import numpy as np
from keras import ops

from ddpm_keras._checks import is_int
from ddpm_keras.diffusion import GaussianDiffusion

SAMPLERS = ("ddpm", "ddim", "pc")
INPAINT_SAMPLERS = ("ddpm", "ddim")
DEFAULT_DDIM_STEPS = 50


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


def sampling_schedule(diffusion, num_steps=None):
    """`(diffusion, timestep_map)` to sample with `num_steps` steps.

    `None` or `T` gives the diffusion itself with the identity map; fewer
    steps give `respaced(diffusion, spaced_timesteps(T, num_steps))`.
    """
    if num_steps is None or num_steps == diffusion.num_timesteps:
        return diffusion, np.arange(diffusion.num_timesteps, dtype=np.int64)
    return respaced(diffusion, spaced_timesteps(diffusion.num_timesteps, num_steps))


def ddim_coefficients(diffusion, eta=0.0):
    """The DDIM step's coefficients per step of `diffusion`, in float64.

    Step `i` goes from `ab = alphas_cumprod[i]` to
    `ab_prev = alphas_cumprod_prev[i]`:
    `x_prev = sqrt(ab_prev) x0 + sqrt(1 - ab_prev - sigma^2) eps + sigma z`.

    Args:
        diffusion: A `GaussianDiffusion`, often a respaced one.
        eta: Float in `[0, 1]`, the scale of `sigma`. Defaults to `0.0`.

    Returns:
        A dict of float64 arrays `(T,)`: `sqrt_alphas_cumprod`,
        `sqrt_one_minus_alphas_cumprod`, `sqrt_alphas_cumprod_prev`,
        `sqrt_one_minus_alphas_cumprod_prev`, `direction_coef` and `sigma`.
    """
    terms = diffusion.terms_float64
    alphas_cumprod, alphas_cumprod_prev = terms["alphas_cumprod"], terms["alphas_cumprod_prev"]
    # sigma^2 = (1 - ab_prev) / (1 - ab) * (1 - ab / ab_prev): the posterior variance.
    sigma = eta * np.sqrt(terms["posterior_variance"])
    return {
        "sqrt_alphas_cumprod": np.sqrt(alphas_cumprod),
        "sqrt_one_minus_alphas_cumprod": np.sqrt(1.0 - alphas_cumprod),
        "sqrt_alphas_cumprod_prev": np.sqrt(alphas_cumprod_prev),
        "sqrt_one_minus_alphas_cumprod_prev": np.sqrt(1.0 - alphas_cumprod_prev),
        "direction_coef": np.sqrt(np.maximum(1.0 - alphas_cumprod_prev - sigma**2, 0.0)),
        "sigma": sigma,
    }


# ---------------------------------------------------------------- one step


def _predict_noise(eps_fn, timestep_map, x, t):
    """The network's noise prediction at step `t` of a (respaced) schedule."""
    original_t = ops.take(ops.convert_to_tensor(timestep_map, "int32"), t)
    return ops.cast(eps_fn(x, original_t), x.dtype)


def _gather(table, t, x):
    """`table[t]` (float64 NumPy or tensor) shaped to broadcast against `x`."""
    values = ops.take(ops.convert_to_tensor(np.asarray(table, np.float32)), t)
    return ops.reshape(values, (-1,) + (1,) * (len(x.shape) - 1))


def _steps(x, t):
    """A scalar step index as an int32 tensor `(batch,)`."""
    return ops.full((x.shape[0],), t, dtype="int32")


def ddpm_step(eps_fn, diffusion, timestep_map, x, t, noise, clip_denoised=True):
    """One ancestral step `x_t -> x_{t-1}` of a (respaced) diffusion.

    Args:
        eps_fn: Callable `(x_t, original_t) -> noise`.
        diffusion: A `GaussianDiffusion` (respaced or not).
        timestep_map: Int array mapping its steps to training timesteps.
        x: The current sample.
        t: Int32 tensor `(batch,)`, the step of `diffusion`.
        noise: Standard normal noise shaped as `x`.
        clip_denoised: Boolean, clip the predicted `x_0`. Defaults to `True`.

    Returns:
        `x_{t-1}`.
    """
    pred_noise = _predict_noise(eps_fn, timestep_map, x, t)
    return diffusion.p_sample(pred_noise, x, t, clip_denoised=clip_denoised, noise=noise)


def _ddim_transfer(x, eps, from_coefs, to_coefs, clip=None, noise_term=0.0):
    """Moves `x` between noise levels along the predicted `(x_0, eps)`.

    `from_coefs`/`to_coefs` are `(sqrt(ab), sqrt(1 - ab))`-like pairs of
    the current and the target level (`to_coefs[1]` the coefficient of
    `eps`); `clip` a `(min, max)` for the predicted `x_0`, after which
    `eps` is recomputed from it.
    """
    sqrt_ab, sqrt_one_minus_ab = from_coefs
    x_start = (x - sqrt_one_minus_ab * eps) / sqrt_ab
    if clip is not None:
        x_start = ops.clip(x_start, clip[0], clip[1])
        eps = (x - sqrt_ab * x_start) / sqrt_one_minus_ab
    return to_coefs[0] * x_start + to_coefs[1] * eps + noise_term


def ddim_step(eps_fn, diffusion, timestep_map, coefficients, x, t, noise, clip_denoised=True):
    """One DDIM step `x_t -> x_{t-1}` (Song et al. 2021, eq. 12).

    Args:
        eps_fn, diffusion, timestep_map, x, t, noise, clip_denoised: As in
            `ddpm_step`; `noise` is unused where `sigma` is 0.
        coefficients: `ddim_coefficients(diffusion, eta)`.

    Returns:
        `x_{t-1}`.
    """
    eps = _predict_noise(eps_fn, timestep_map, x, t)
    c = {name: _gather(value, t, x) for name, value in coefficients.items()}
    clip = (diffusion.clip_min, diffusion.clip_max) if clip_denoised else None
    return _ddim_transfer(
        x, eps,
        (c["sqrt_alphas_cumprod"], c["sqrt_one_minus_alphas_cumprod"]),
        (c["sqrt_alphas_cumprod_prev"], c["direction_coef"]),
        clip=clip, noise_term=c["sigma"] * noise,
    )


def langevin_step(eps_fn, diffusion, timestep_map, x, t, noise, snr=0.16):
    """One Langevin corrector step at step `t` (Song et al. 2021, Algorithm 5, VP).

    With the score `s = -eps / sqrt(1 - ab_t)` and, per image,
    `step_size = 2 alpha_t (snr ||z|| / ||s||)^2` (`alpha_t = 1 - beta_t`):
    `x + step_size s + sqrt(2 step_size) z`.
    """
    eps = _predict_noise(eps_fn, timestep_map, x, t)
    score = -eps / _gather(diffusion.terms_float64["sqrt_one_minus_alphas_cumprod"], t, x)
    alpha = _gather(1.0 - diffusion.terms_float64["betas"], t, x)
    axes = tuple(range(1, len(x.shape)))
    noise_norm = ops.sqrt(ops.sum(ops.square(noise), axis=axes, keepdims=True))
    score_norm = ops.sqrt(ops.sum(ops.square(score), axis=axes, keepdims=True))
    step_size = 2.0 * alpha * ops.square(snr * noise_norm / score_norm)
    return x + step_size * score + ops.sqrt(2.0 * step_size) * noise


# ---------------------------------------------------------------- loops


def trajectory_length(num_steps, trajectory_every):
    """Frames of a trajectory: `x_T`, every `trajectory_every`-th step, and the last."""
    return 1 + -(-num_steps // trajectory_every)


def run_loop(step, x_T, num_steps, trajectory_every=None):
    """Runs `x = step(i, x)` for `i` in `[0, num_steps)` with `fori_loop`.

    Args:
        step: Callable `(i, x) -> x`, `i` a scalar int tensor.
        x_T: The starting sample.
        num_steps: Integer, the number of iterations.
        trajectory_every: `None`, or an integer: also return the frames
            `x_T`, the sample after every `trajectory_every`-th step and
            after the last, stacked `(frames, *x_T.shape)`.

    Returns:
        The final sample, or `(final, frames)`.
    """
    if trajectory_every is None:
        return ops.fori_loop(0, num_steps, step, x_T)
    frames = ops.zeros((trajectory_length(num_steps, trajectory_every),) + tuple(x_T.shape), x_T.dtype)
    zeros = (0,) * len(x_T.shape)
    frames = ops.slice_update(frames, (0,) + zeros, x_T[None])

    def body(i, carry):
        x, frames = carry
        x = step(i, x)
        # Every step writes to slot ceil((i + 1) / k): a slot's last write is
        # the k-th step of its window, or the final step.
        slot = (i + trajectory_every) // trajectory_every
        frames = ops.slice_update(frames, (slot,) + zeros, x[None])
        return x, frames

    return ops.fori_loop(0, num_steps, body, (x_T, frames))


def sample_loop(
    eps_fn, noise_fn, diffusion, x_T, sampler="ddpm", num_steps=None, eta=0.0,
    clip_denoised=True, corrector_steps=1, snr=0.16, trajectory_every=None,
):
    """Runs a whole reverse chain from `x_T` to `x_0`.

    Args:
        eps_fn: Callable `(x_t, t) -> noise`, `t` an int32 tensor `(batch,)`
            of training timesteps.
        noise_fn: Callable `(shape, step) -> standard normal noise`; `step`
            is distinct for every draw (`-1` is left to the caller's `x_T`).
        diffusion: A `GaussianDiffusion`.
        x_T: The starting noise, `(batch, H, W, C)` float32.
        sampler: String, one of `SAMPLERS`. Defaults to `"ddpm"`.
        num_steps: Integer or `None`, the reverse steps; `None` means `T`
            for `"ddpm"`/`"pc"` and `50` for `"ddim"`. Defaults to `None`.
        eta: Float in `[0, 1]`, DDIM's noise scale. Defaults to `0.0`.
        clip_denoised: Boolean, clip the predicted `x_0`. Defaults to `True`.
        corrector_steps: Integer, Langevin steps per `"pc"` step. Defaults
            to `1`.
        snr: Float, the corrector's signal-to-noise ratio. Defaults to
            `0.16`.
        trajectory_every: `None` or an integer, see `run_loop`.

    Returns:
        `x_0`, or `(x_0, frames)` when `trajectory_every` is set.
    """
    num_steps = default_num_steps(sampler, num_steps, diffusion.num_timesteps)
    spaced, timestep_map = sampling_schedule(diffusion, num_steps)
    last = num_steps - 1

    if sampler == "ddpm":
        def step(i, x):
            return ddpm_step(eps_fn, spaced, timestep_map, x, _steps(x, last - i), noise_fn(x.shape, i), clip_denoised)
    elif sampler == "ddim":
        coefficients = ddim_coefficients(spaced, eta)

        def step(i, x):
            noise = noise_fn(x.shape, i) if eta > 0 else 0.0
            return ddim_step(eps_fn, spaced, timestep_map, coefficients, x, _steps(x, last - i), noise, clip_denoised)
    elif sampler == "pc":
        draws = corrector_steps + 1

        def step(i, x):
            t = last - i
            x = ddpm_step(eps_fn, spaced, timestep_map, x, _steps(x, t), noise_fn(x.shape, draws * i), clip_denoised)

            def correct(k, x):
                return langevin_step(eps_fn, spaced, timestep_map, x, _steps(x, t - 1), noise_fn(x.shape, draws * i + 1 + k), snr)

            # x is now at step t - 1; there is no score at the data (t = 0).
            return ops.fori_loop(0, ops.where(t > 0, corrector_steps, 0), correct, x)
    else:
        raise ValueError(f"Received: sampler={sampler!r}. Expected one of {SAMPLERS}.")
    return run_loop(step, x_T, num_steps, trajectory_every)


def ddim_encode_loop(eps_fn, diffusion, x_0, num_steps=DEFAULT_DDIM_STEPS):
    """DDIM inversion: runs the deterministic DDIM ODE from `x_0` up to `x_T`.

    Step `i` reverses DDIM step `i` of the same schedule: from level `i - 1`
    (the data, `ab = 1`, for `i = 0`) to level `i`, with the network
    evaluated at the current sample and the target timestep `s_i` (the
    only one defined at the data) - exact in the limit of small steps.

    Args:
        eps_fn: Callable `(x_t, t) -> noise`.
        diffusion: A `GaussianDiffusion`.
        x_0: Images `(batch, H, W, C)` in the data range.
        num_steps: Integer, the steps. Defaults to `50`.

    Returns:
        `x_T`, the latent that `sample_loop(..., "ddim", eta=0)` decodes
        back to approximately `x_0`.
    """
    spaced, timestep_map = sampling_schedule(diffusion, num_steps)
    c = ddim_coefficients(spaced, 0.0)

    def step(i, x):
        t = _steps(x, i)
        eps = _predict_noise(eps_fn, timestep_map, x, t)
        return _ddim_transfer(
            x, eps,
            (_gather(c["sqrt_alphas_cumprod_prev"], t, x), _gather(c["sqrt_one_minus_alphas_cumprod_prev"], t, x)),
            (_gather(c["sqrt_alphas_cumprod"], t, x), _gather(c["sqrt_one_minus_alphas_cumprod"], t, x)),
        )

    return ops.fori_loop(0, num_steps, step, x_0)


def inpaint_loop(
    eps_fn, noise_fn, diffusion, x_T, x_0, mask, sampler="ddpm", num_steps=None,
    eta=0.0, resample=1, clip_denoised=True,
):
    """Inpainting by replacement, with RePaint resampling (Lugmayr et al. 2022).

    After each reverse step `x_t -> x_{t-1}` the known region (`mask == 1`)
    is replaced by `q_sample(x_0, t - 1)` (the data itself after the last
    step). With `resample > 1`, the combined `x_{t-1}` is re-noised with
    `q(x_t | x_{t-1})` and the step redone, `resample - 1` times (jump
    length 1).

    Args:
        eps_fn, noise_fn, diffusion, x_T: As in `sample_loop`.
        x_0: The images to complete, shaped as `x_T`.
        mask: 1 where `x_0` is known, 0 elsewhere; broadcastable to `x_0`.
        sampler: `"ddpm"` or `"ddim"`. Defaults to `"ddpm"`.
        num_steps: Integer or `None`, as in `sample_loop`. Defaults to `None`.
        eta: Float, DDIM's noise scale. Defaults to `0.0`.
        resample: Integer >= 1, RePaint's `r`. Defaults to `1`.
        clip_denoised: Boolean. Defaults to `True`.

    Returns:
        The completed images; equal to `x_0` where `mask == 1`.
    """
    num_steps = default_num_steps(sampler, num_steps, diffusion.num_timesteps)
    spaced, timestep_map = sampling_schedule(diffusion, num_steps)
    terms = spaced.terms_float64
    coefficients = ddim_coefficients(spaced, eta)
    last = num_steps - 1

    def reverse(x, t, noise):
        if sampler == "ddpm":
            return ddpm_step(eps_fn, spaced, timestep_map, x, t, noise, clip_denoised)
        return ddim_step(eps_fn, spaced, timestep_map, coefficients, x, t, noise, clip_denoised)

    def attempt(x, t, first_draw):
        x_prev = reverse(x, t, noise_fn(x.shape, first_draw))
        known = (
            _gather(coefficients["sqrt_alphas_cumprod_prev"], t, x) * x_0
            + _gather(coefficients["sqrt_one_minus_alphas_cumprod_prev"], t, x) * noise_fn(x.shape, first_draw + 1)
        )
        return mask * known + (1.0 - mask) * x_prev

    def step(i, x):
        t = _steps(x, last - i)

        def resample_once(r, x):
            x_prev = attempt(x, t, 3 * (i * resample + r))
            # q(x_t | x_{t-1}) of the (respaced) chain: beta_t = 1 - ab_t / ab_{t-1}.
            return (
                _gather(np.sqrt(1.0 - terms["betas"]), t, x) * x_prev
                + _gather(np.sqrt(terms["betas"]), t, x) * noise_fn(x.shape, 3 * (i * resample + r) + 2)
            )

        x = ops.fori_loop(0, resample - 1, resample_once, x)
        return attempt(x, t, 3 * (i * resample + resample - 1))

    return run_loop(step, x_T, num_steps)


def slerp(z_0, z_1, weights):
    """Spherical interpolation between `z_0` and `z_1` (Shoemake 1985), in float64 NumPy.

    Args:
        z_0, z_1: Arrays of the same shape.
        weights: 1-D array of interpolation weights in `[0, 1]`.

    Returns:
        An array `(len(weights), *z_0.shape)`; its first and last entries
        are `z_0` and `z_1` for weights 0 and 1.
    """
    z_0, z_1 = np.asarray(z_0, np.float64), np.asarray(z_1, np.float64)
    cos = np.sum(z_0 * z_1) / (np.linalg.norm(z_0) * np.linalg.norm(z_1))
    theta = np.arccos(np.clip(cos, -1.0, 1.0))
    weights = np.asarray(weights, np.float64).reshape((-1,) + (1,) * z_0.ndim)
    if theta < 1e-6:
        return (1.0 - weights) * z_0 + weights * z_1
    return (np.sin((1.0 - weights) * theta) * z_0 + np.sin(weights * theta) * z_1) / np.sin(theta)


# ---------------------------------------------------------------- checks


def default_num_steps(sampler, num_steps, num_timesteps):
    """`num_steps`, or the sampler's default: `50` (or `T` if smaller) for DDIM, `T` otherwise."""
    if num_steps is not None:
        return int(num_steps)
    return min(DEFAULT_DDIM_STEPS, num_timesteps) if sampler == "ddim" else num_timesteps


def check_num_steps(num_steps, num_timesteps, name="num_steps"):
    """Raises a `ValueError` unless `num_steps` is an integer in `[1, T]`."""
    if not is_int(num_steps) or not 1 <= num_steps <= num_timesteps:
        raise ValueError(
            f"{name} must be an integer in [1, {num_timesteps}] (the diffusion's timesteps). "
            f"Received: {name}={num_steps!r}"
        )


def check_sampler_args(sampler, num_steps, num_timesteps, eta=0.0, corrector_steps=1, snr=0.16, samplers=SAMPLERS):
    """Validates a sampler's arguments; returns the number of steps to run."""
    if sampler not in samplers:
        raise ValueError(f"Received: sampler={sampler!r}. Expected one of {samplers}.")
    if num_steps is not None:
        check_num_steps(num_steps, num_timesteps)
    if isinstance(eta, bool) or not isinstance(eta, (int, float)) or not 0.0 <= eta <= 1.0:
        raise ValueError(f"eta must be a float in [0, 1] (0: deterministic DDIM). Received: eta={eta!r}")
    if not is_int(corrector_steps) or corrector_steps < 0:
        raise ValueError(
            f"corrector_steps must be a non-negative integer. Received: corrector_steps={corrector_steps!r}"
        )
    if isinstance(snr, bool) or not isinstance(snr, (int, float)) or not snr > 0.0:
        raise ValueError(f"snr must be a positive float, e.g. 0.16. Received: snr={snr!r}")
    return default_num_steps(sampler, num_steps, num_timesteps)
