"""DDIM (Song et al. 2021): the deterministic probability-flow sampler, its stochastic family and its inversion."""

import numpy as np
from keras import ops

from ddpm_keras.samplers.common import Chain
from ddpm_keras.samplers.common import batch_steps
from ddpm_keras.samplers.common import gather
from ddpm_keras.samplers.common import initial_state
from ddpm_keras.samplers.common import single_state


def ddim_coefficients(diffusion, eta=0.0):
    """The DDIM step's coefficients per step of `diffusion`, in float64.

    Step `i` goes from `ab = alphas_cumprod[i]` to
    `ab_prev = alphas_cumprod_prev[i]`:
    `x_prev = sqrt(ab_prev) x0 + sqrt(1 - ab_prev - sigma^2) eps + sigma z`
    with `sigma = eta sqrt((1 - ab_prev) / (1 - ab)) sqrt(1 - ab / ab_prev)`
    (eq. 16): `eta = 0` is deterministic, `eta = 1` the DDPM posterior.

    Args:
        diffusion: A `GaussianDiffusion`, often a respaced one.
        eta: Float in `[0, 1]`, the scale of `sigma`. Defaults to `0.0`.

    Returns:
        A dict of float64 arrays `(T,)`: `sqrt_alphas_cumprod_prev`,
        `direction_coef` and `sigma`.
    """
    terms = diffusion.terms_float64
    # sigma^2 = (1 - ab_prev) / (1 - ab) * (1 - ab / ab_prev): the posterior variance.
    sigma = eta * np.sqrt(terms["posterior_variance"])
    return {
        "sqrt_alphas_cumprod_prev": np.sqrt(terms["alphas_cumprod_prev"]),
        "direction_coef": np.sqrt(np.maximum(1.0 - terms["alphas_cumprod_prev"] - sigma**2, 0.0)),
        "sigma": sigma,
    }


def ddim_step(denoise, coefficients, x, t, noise):
    """One DDIM step `x_t -> x_{t-1}` (Song et al. 2021, eq. 12).

    Args:
        denoise: Callable `(x, t) -> (x_0, noise)`.
        coefficients: `ddim_coefficients(diffusion, eta)`.
        x: The current sample.
        t: Int32 tensor `(batch,)`, the step.
        noise: Standard normal noise shaped as `x` (unused where `sigma`
            is 0: pass `0.0`).

    Returns:
        `x_{t-1}`.
    """
    x_start, eps = denoise(x, t)
    return (
        gather(coefficients["sqrt_alphas_cumprod_prev"], t, x) * x_start
        + gather(coefficients["direction_coef"], t, x) * eps
        + gather(coefficients["sigma"], t, x) * noise
    )


def ddim_chain(context, eta=0.0):
    """DDIM over every step of `context.diffusion`; the last step returns the predicted `x_0` at `s_0`."""
    denoise, last = context.denoiser(), context.num_steps - 1
    coefficients = ddim_coefficients(context.diffusion, eta)

    def step(i, x):
        noise = context.noise_fn(ops.shape(x), i) if eta > 0 else 0.0
        return ddim_step(denoise, coefficients, x, batch_steps(x, last - i), noise)

    return Chain(initial_state, single_state(step), context.num_steps)


def ddim_encode_chain(context):
    """DDIM inversion: the deterministic DDIM ODE from `x_0` up to `x_T`.

    Step `i` reverses DDIM step `i` of the same schedule: from level `i - 1`
    (the data, `ab = 1`, for `i = 0`) to level `i`, with the network
    evaluated at the current sample and the target timestep `s_i` (the
    only one defined at the data) - exact in the limit of small steps. The
    network's noise is taken at `s_i`, and `x_0` is read from the current
    level with it.
    """
    denoise = context.denoiser(limit=False)
    terms = context.diffusion.terms_float64
    from_ab, to_ab = terms["alphas_cumprod_prev"], terms["alphas_cumprod"]

    def step(i, x):
        t = batch_steps(x, i)
        _, eps = denoise(x, t)
        x_start = (x - gather(np.sqrt(1.0 - from_ab), t, x) * eps) / gather(np.sqrt(from_ab), t, x)
        return gather(np.sqrt(to_ab), t, x) * x_start + gather(np.sqrt(1.0 - to_ab), t, x) * eps

    return Chain(initial_state, single_state(step), context.num_steps)
