"""The math of progressive distillation (Salimans & Ho 2022): the step grids, the two-step target, the weights.

Round `r` of progressive distillation teaches a student to take in one
deterministic DDIM step what its teacher takes in two. With the student at
`N` steps, both walk the "trailing" grid of the samplers
(`samplers.spaced_timesteps`): the teacher's `2N` kept timesteps
`g_1 < ... < g_2N` (`g_0` is the data, `alpha_bar = 1`), the student's
every other one, so that the student's step `i` goes from `t = g_2i` to
`s = g_2i-2` through the teacher's midpoint `u = g_2i-1`. A student of
`N` steps then samples with `sampler="ddim", num_steps=N` (trailing).

Every function is `keras.ops` code on float32 tensors, or NumPy tables
built once in float64; none knows of training.
"""

import numpy as np
from keras import ops

from ddpm_keras.diffusion.gaussian import PREDICTION_TYPES


def round_steps(start_steps, num_rounds):
    """The student's step count in each round: `start_steps / 2, start_steps / 4, ...`, `num_rounds` of them."""
    return np.asarray([start_steps // 2 ** (r + 1) for r in range(num_rounds)], np.int64)


def round_grids(num_timesteps, start_steps, num_rounds):
    """The teacher's kept timesteps of each round, with the data as `-1` in front, padded with zeros.

    Returns:
        An int32 array `(num_rounds, start_steps + 1)`: row `r` is
        `[-1, g_1, ..., g_2N]` for the round's student of `N` steps,
        `g_j = round(j T / 2N) - 1` (the samplers' trailing spacing),
        then zeros.
    """
    grids = np.zeros((num_rounds, start_steps + 1), np.int32)
    for r, steps in enumerate(round_steps(start_steps, num_rounds)):
        teacher_steps = 2 * int(steps)
        grids[r, : teacher_steps + 1] = np.concatenate(
            [[-1], np.round(np.arange(1, teacher_steps + 1) * (num_timesteps / teacher_steps)) - 1]
        )
    return grids


def levels_with_data(alphas_cumprod):
    """`alpha_bar` at `t = -1` (the data: `1`) and at every timestep: a float64 array `(T + 1,)`, read at `t + 1`."""
    return np.concatenate([[1.0], np.asarray(alphas_cumprod, np.float64)])


def ddim_to(x_start, noise, alpha_bar_to):
    """The deterministic DDIM step's end: `sqrt(ab_to) x_0 + sqrt(1 - ab_to) eps` (`ab_to = 1`: `x_0`)."""
    return ops.sqrt(alpha_bar_to) * x_start + ops.sqrt(1.0 - alpha_bar_to) * noise


def two_step_target(denoise, x_t, t, u, alpha_bars):
    """The target of progressive distillation: the `x_0` whose one DDIM step `t -> s` lands where two of the teacher's do.

    The teacher goes `x_t -> x_u -> x_s` by two deterministic DDIM steps;
    the target is `x~ = (x_s - (sigma_s / sigma_t) x_t) / (alpha_s - (sigma_s / sigma_t) alpha_t)`
    (Salimans & Ho 2022, Algorithm 2), so that
    `alpha_s x~ + sigma_s (x_t - alpha_t x~) / sigma_t = x_s`; at the last
    step (`s` the data, `sigma_s = 0`) it is `x_s` itself.

    Args:
        denoise: Callable `(x, t) -> (x_0, eps)`, the teacher's prediction
            at the training timesteps `t` (clipped as its sampler clips).
        x_t: Float tensor `(batch, H, W, C)`.
        t, u: Int32 tensors `(batch,)`, the step's start and the
            teacher's midpoint (training timesteps).
        alpha_bars: Float tensors `(ab_t, ab_u, ab_s)`, each
            `(batch, 1, 1, 1)`: the levels of `t`, `u` and the end `s`
            (`1` for the data).

    Returns:
        `x~`, shaped as `x_t`.
    """
    ab_t, ab_u, ab_s = alpha_bars
    x_start, noise = denoise(x_t, t)
    x_u = ddim_to(x_start, noise, ab_u)
    x_start, noise = denoise(x_u, u)
    x_s = ddim_to(x_start, noise, ab_s)
    ratio = ops.sqrt(1.0 - ab_s) / ops.sqrt(1.0 - ab_t)
    return (x_s - ratio * x_t) / (ops.sqrt(ab_s) - ratio * ops.sqrt(ab_t))


def student_target(x_tilde, x_t, ab_t, prediction_type):
    """`x~` as the student's prediction type: the `eps`, `v` or `x_0` that stands for `x_0 = x~` at `x_t`."""
    if prediction_type == "x0":
        return x_tilde
    noise = (x_t - ops.sqrt(ab_t) * x_tilde) / ops.sqrt(1.0 - ab_t)
    if prediction_type == "epsilon":
        return noise
    return ops.sqrt(ab_t) * noise - ops.sqrt(1.0 - ab_t) * x_tilde


def truncated_snr_weights(alphas_cumprod, prediction_type):
    """Per timestep, the weight of the student's loss that makes it `max(SNR, 1) |x~ - x^|^2` (float64 `(T,)`).

    The truncated-SNR weighting of Salimans & Ho 2022 (sec. 4), on the
    error in `x_0`, written for the student's own output: the error in
    `eps` is `|x~ - x^|^2 SNR`, in `v` it is `|x~ - x^|^2 (1 + SNR)`, so
    the weights are `max(SNR, 1) / SNR`, `max(SNR, 1) / (1 + SNR)` and
    `max(SNR, 1)` for `eps`, `v` and `x_0`.
    """
    if prediction_type not in PREDICTION_TYPES:
        raise ValueError(f"Unknown prediction_type: {prediction_type!r}. Expected one of {PREDICTION_TYPES}.")
    alphas_cumprod = np.asarray(alphas_cumprod, np.float64)
    with np.errstate(divide="ignore"):
        snr = alphas_cumprod / (1.0 - alphas_cumprod)
    truncated = np.maximum(snr, 1.0)
    if prediction_type == "x0":
        return truncated
    if prediction_type == "v":
        return truncated / (1.0 + snr)
    return truncated / snr
