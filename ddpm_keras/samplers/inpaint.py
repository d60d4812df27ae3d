"""Inpainting by replacement, with RePaint resampling (Lugmayr et al. 2022)."""

import numpy as np
from keras import ops

from ddpm_keras.samplers.common import Chain
from ddpm_keras.samplers.common import batch_steps
from ddpm_keras.samplers.common import gather
from ddpm_keras.samplers.common import initial_state
from ddpm_keras.samplers.common import single_state
from ddpm_keras.samplers.ddim import ddim_coefficients
from ddpm_keras.samplers.ddim import ddim_step
from ddpm_keras.samplers.ddpm import ddpm_step

INPAINT_SAMPLERS = ("ddpm", "ddim")


def inpaint_chain(context, x_0, mask, sampler="ddpm", eta=0.0, resample=1):
    """A reverse chain that keeps the known region of `x_0`.

    After each reverse step `x_t -> x_{t-1}` the known region (`mask == 1`)
    is replaced by `q_sample(x_0, t - 1)` (the data itself after the last
    step). With `resample > 1`, the combined `x_{t-1}` is re-noised with
    `q(x_t | x_{t-1})` and the step redone, `resample - 1` times (jump
    length 1).

    Args:
        context: A `SamplingContext`.
        x_0: The images to complete, shaped as `x_T`.
        mask: 1 where `x_0` is known, 0 elsewhere; broadcastable to `x_0`.
        sampler: `"ddpm"` or `"ddim"`. Defaults to `"ddpm"`.
        eta: Float, DDIM's noise scale. Defaults to `0.0`.
        resample: Integer >= 1, RePaint's `r`. Defaults to `1`.

    Returns:
        A `Chain`; its sample equals `x_0` where `mask == 1`.
    """
    denoise, diffusion, last = context.denoiser(), context.diffusion, context.num_steps - 1
    noise_fn, terms = context.noise_fn, diffusion.terms_float64
    coefficients = ddim_coefficients(diffusion, eta)

    def reverse(x, t, noise):
        if sampler == "ddpm":
            return ddpm_step(denoise, diffusion, x, t, noise)
        return ddim_step(denoise, coefficients, x, t, noise)

    def attempt(x, t, first_draw):
        x_prev = reverse(x, t, noise_fn(ops.shape(x), first_draw))
        known = (
            gather(np.sqrt(terms["alphas_cumprod_prev"]), t, x) * x_0
            + gather(np.sqrt(1.0 - terms["alphas_cumprod_prev"]), t, x) * noise_fn(ops.shape(x), first_draw + 1)
        )
        return mask * known + (1.0 - mask) * x_prev

    def step(i, x):
        t = batch_steps(x, last - i)

        def resample_once(r, x):
            x_prev = attempt(x, t, 3 * (i * resample + r))
            # q(x_t | x_{t-1}) of the (respaced) chain: beta_t = 1 - ab_t / ab_{t-1}.
            return (
                gather(np.sqrt(1.0 - terms["betas"]), t, x) * x_prev
                + gather(np.sqrt(terms["betas"]), t, x) * noise_fn(ops.shape(x), 3 * (i * resample + r) + 2)
            )

        x = ops.fori_loop(0, resample - 1, resample_once, x)
        return attempt(x, t, 3 * (i * resample + resample - 1))

    return Chain(initial_state, single_state(step), context.num_steps)
