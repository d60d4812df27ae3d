"""Ancestral sampling (Ho et al. 2020, Algorithm 2), respaced when fewer steps are kept (Nichol & Dhariwal 2021)."""

from keras import ops

from ddpm_keras.samplers.common import Chain
from ddpm_keras.samplers.common import batch_steps
from ddpm_keras.samplers.common import initial_state
from ddpm_keras.samplers.common import single_state


def ddpm_step(denoise, diffusion, x, t, noise):
    """One ancestral step `x_t -> x_{t-1}` of a (respaced) diffusion.

    The predicted `x_0` goes in the posterior `q(x_{t-1} | x_t, x_0)`,
    whose variance (`posterior_variance`, "fixedsmall") is added where
    `t > 0`; the step at `t = 0` returns the posterior mean.

    Args:
        denoise: Callable `(x, t) -> (x_0, noise)`, see `make_denoiser`.
        diffusion: The (respaced) `GaussianDiffusion`.
        x: The current sample.
        t: Int32 tensor `(batch,)`, the step of `diffusion`.
        noise: Standard normal noise shaped as `x`.

    Returns:
        `x_{t-1}`.
    """
    x_start, _ = denoise(x, t)
    return diffusion.posterior_sample(x_start, x, t, noise)


def ddpm_chain(context):
    """The ancestral chain over every step of `context.diffusion`, from its last step down to 0."""
    denoise, diffusion, last = context.denoiser(), context.diffusion, context.num_steps - 1

    def step(i, x):
        return ddpm_step(denoise, diffusion, x, batch_steps(x, last - i), context.noise_fn(ops.shape(x), i))

    return Chain(initial_state, single_state(step), context.num_steps)
