"""The math of consistency distillation (Song et al. 2023, "Consistency Models"): the consistency function, its target.

A consistency function maps every point `x_t` of a probability-flow
trajectory to the trajectory's point at the smallest noise level `t_min`,
and is the identity there (the boundary condition). Here it is written in
the data's scale: `f(x_t, t) ~ x_{t_min} / sqrt(ab_min)`, which is the data
itself up to noise of standard deviation `sigma_min`, in the VE scaling
`sigma_t = sqrt((1 - ab_t) / ab_t)` (`x_t / sqrt(ab_t) = x_0 + sigma_t eps`).

The parameterisation builds the boundary condition in:

    f(x, t) = c(t) x / sqrt(ab_t) + (1 - c(t)) x0_hat(x, t),   c(t) = (sigma_min / sigma_t)^2,

with `x0_hat` the `x_0` a network's output stands for (any prediction
type). At `t_min`, `c = 1` and `f = x / sqrt(ab_min)` exactly, whatever the
network says; `c` falls as `1 / sigma_t^2` above it (below `0.01` from
`t = 27` of 1,000 linear steps, `t = 33` of the cosine schedule's).

This is our choice, not the paper's: Song et al. (eq. 7 and appendix C)
use EDM's `c_skip = sigma_data^2 / ((sigma - sigma_min)^2 + sigma_data^2)`
and `c_out = (sigma - sigma_min) sigma_data / sqrt(sigma_data^2 + sigma^2)`
for a network of EDM's preconditioning, whose raw output is neither noise
nor data. They mix the raw input in over a wide band of levels
(`c_skip = 1/2` at `sigma - sigma_min = sigma_data`). Our student starts
as a copy of the teacher, a `"v"`, `"epsilon"` or `"x0"` network whose
output means a prediction: with `x0_hat` of that prediction in the
`(1 - c)` slot and `c` confined to the lowest levels, the copy starts with
`f` ~ the teacher's `x_0` prediction (the one-step estimate of the
trajectory's end) and the training only has to move it along the
trajectory, where EDM's weights would first have to undo the mixing.

The distillation target (Song et al. 2023, Algorithm 2): on a grid of
timesteps `t_0 = t_min < t_1 < ... < t_{N-1} = T - 1`, for `n ~ U{0..N-2}`,
`x_{t_{n+1}} = q_sample(x_0, t_{n+1}, z)`; one deterministic DDIM step of
the teacher gives `x_hat_{t_n}` (the ODE solver step: DDIM is the Euler
method of the probability-flow ODE in `(x / alpha, sigma)`), and the
target is `f_{theta^-}(x_hat_{t_n}, t_n)`, the target (EMA) network's
consistency function, with its gradient stopped. The loss is the plain
squared error against `f_theta(x_{t_{n+1}}, t_{n+1})`.

Every function is `keras.ops` code on float32 tensors, or NumPy tables
built once in float64; none knows of training.
"""

import numpy as np
from keras import ops

from ddpm_keras.diffusion.distillation import ddim_to
from ddpm_keras.diffusion.gaussian import check_prediction_type


def sigmas(alphas_cumprod):
    """The VE noise level per timestep, `sigma_t = sqrt((1 - ab_t) / ab_t)`: float64 `(T,)` (`inf` at `ab_t = 0`)."""
    alphas_cumprod = np.asarray(alphas_cumprod, np.float64)
    with np.errstate(divide="ignore"):
        return np.sqrt((1.0 - alphas_cumprod) / alphas_cumprod)


def consistency_coefficients(alphas_cumprod, boundary_timestep=0):
    """Per timestep, `(c_skip, c_out)` of `f(x, t) = c_skip(t) x + c_out(t) x0_hat(x, t)`, float64 `(T,)` each.

    `c(t) = (sigma_min / sigma_t)^2` with `sigma_min = sigma` at
    `boundary_timestep`, written `sigma_min^2 ab_t / (1 - ab_t)` (finite
    where `ab_t = 0`, zero terminal SNR); `c = 1` at and below the boundary.
    `c_skip = c / sqrt(ab_t)` (`0` where `ab_t = 0`) and `c_out = 1 - c`,
    exactly `0` at the boundary.

    Args:
        alphas_cumprod: Float array `(T,)`, the diffusion's `alphas_cumprod`.
        boundary_timestep: Integer, the timestep of `t_min`. Defaults to
            `0`.

    Returns:
        `(c_skip, c_out)`, float64 arrays `(T,)`.
    """
    alphas_cumprod = np.asarray(alphas_cumprod, np.float64)
    sigma_min_squared = sigmas(alphas_cumprod)[boundary_timestep] ** 2
    c = np.minimum(sigma_min_squared * alphas_cumprod / (1.0 - alphas_cumprod), 1.0)
    c[: boundary_timestep + 1] = 1.0
    with np.errstate(divide="ignore", invalid="ignore"):
        c_skip = np.where(alphas_cumprod > 0.0, c / np.sqrt(alphas_cumprod), 0.0)
    return c_skip, 1.0 - c


def x0_from_prediction(output, x_t, alpha_bar, prediction_type):
    """The `x_0` a network's `output` of `prediction_type` stands for at `x_t` (`alpha_bar` broadcasts against it).

    `"x0"`: the output; `"v"`: `sqrt(ab) x_t - sqrt(1 - ab) v`;
    `"epsilon"`: `(x_t - sqrt(1 - ab) eps) / sqrt(ab)`.
    """
    check_prediction_type(prediction_type)
    if prediction_type == "x0":
        return output
    if prediction_type == "v":
        return ops.sqrt(alpha_bar) * x_t - ops.sqrt(1.0 - alpha_bar) * output
    return (x_t - ops.sqrt(1.0 - alpha_bar) * output) / ops.sqrt(alpha_bar)


def consistency_function(x_t, x_start, c_skip, c_out):
    """`f = c_skip x_t + c_out x_0`, the coefficients gathered at the timesteps of `x_t` (see the module)."""
    return c_skip * x_t + c_out * x_start


def teacher_step(denoise, x_next, t_next, alpha_bar_to):
    """`x_hat_{t_n}`: one deterministic DDIM step of the teacher from `x_{t_{n+1}}` to the level `alpha_bar_to`.

    Args:
        denoise: Callable `(x, t) -> (x_0, eps)`, the teacher's prediction
            at training timesteps `t` (clipped as its sampler clips).
        x_next: Float tensor `(batch, H, W, C)`, `x_{t_{n+1}}`.
        t_next: Int32 tensor `(batch,)`, `t_{n+1}`.
        alpha_bar_to: Float tensor `(batch, 1, 1, 1)`, `ab` at `t_n`.
    """
    x_start, noise = denoise(x_next, t_next)
    return ddim_to(x_start, noise, alpha_bar_to)


def consistency_target(denoise, target_function, x_next, t_next, t_n, alpha_bar_n):
    """The target of consistency distillation: `f_{theta^-}(x_hat_{t_n}, t_n)`, its gradient stopped.

    Args:
        denoise: The teacher's `(x, t) -> (x_0, eps)`, see `teacher_step`.
        target_function: Callable `(x, t) -> f(x, t)`, the target
            network's consistency function.
        x_next, t_next: `x_{t_{n+1}}` and `t_{n+1}`.
        t_n: Int32 tensor `(batch,)`, the lower grid point.
        alpha_bar_n: Float tensor `(batch, 1, 1, 1)`, `ab` at `t_n`.

    Returns:
        The target, shaped as `x_next`.
    """
    x_hat = ops.stop_gradient(teacher_step(denoise, x_next, t_next, alpha_bar_n))
    return ops.stop_gradient(target_function(x_hat, t_n))
