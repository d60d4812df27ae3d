"""Multistep consistency sampling (Song et al. 2023, "Consistency Models", Algorithm 1).

A consistency model maps any point of a probability-flow trajectory to its
start: one network call takes `x_T` to a sample. More steps alternate that
map with fresh noise: at each kept timestep, from the top, the model's `x_0`
is diffused back to the next (lower) kept level,
`x = sqrt(ab_prev) x_0 + sqrt(1 - ab_prev) z`, and the model is called
there. The last step (`ab_prev = 1`) returns its `x_0`. Any network works
through `make_denoiser` (every prediction type, clipped as the other
samplers clip); for a model that is not a consistency function (a
diffusion model's denoiser) this is a crude sampler that under-disperses.
"""

import numpy as np
from keras import ops

from ddpm_keras.samplers.common import Chain
from ddpm_keras.samplers.common import batch_steps
from ddpm_keras.samplers.common import gather
from ddpm_keras.samplers.common import initial_state
from ddpm_keras.samplers.common import single_state


def consistency_chain(context):
    """Multistep consistency sampling over every step of `context.diffusion`: one network call a step.

    Step `i` is at the kept timestep `s_{n-1-i}`: `x_0 = denoise(x, s)`,
    then `x = sqrt(ab_prev) x_0 + sqrt(1 - ab_prev) z` with
    `z = noise_fn(shape, i)` and `ab_prev = alphas_cumprod_prev` of the
    respaced diffusion (`1` at the last step, which returns `x_0`).
    """
    denoise, last = context.denoiser(), context.num_steps - 1
    alphas_cumprod_prev = context.diffusion.terms_float64["alphas_cumprod_prev"]
    signal, noise_scale = np.sqrt(alphas_cumprod_prev), np.sqrt(1.0 - alphas_cumprod_prev)

    def step(i, x):
        t = batch_steps(x, last - i)
        x_start, _ = denoise(x, t)
        z = context.noise_fn(ops.shape(x), i)  # multiplied by 0 at the last step
        return gather(signal, t, x) * x_start + gather(noise_scale, t, x) * ops.cast(z, x.dtype)

    return Chain(initial_state, single_state(step), context.num_steps)
