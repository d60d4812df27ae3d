"""Reverse-process samplers written as whole loops in `keras.ops`.

A sampler takes `eps_fn(x_t, t) -> predicted noise` (the network, however
the caller wraps it), `noise_fn(shape, step) -> standard normal noise` (the
caller's source of randomness: a `SeedGenerator` on TensorFlow, a key folded
with `step` under `jax.jit`), a `GaussianDiffusion` and the starting noise,
and runs the whole chain with `keras.ops.fori_loop`, so the caller can
compile the chain once and reuse it. Samplers know nothing of Keras models
or training.
"""

from keras import ops


def ddpm_sample_loop(eps_fn, noise_fn, diffusion, x_T, clip_denoised=True):
    """Ancestral sampling through all `T` steps (Ho et al. 2020, Algorithm 2).

    Args:
        eps_fn: Callable `(x_t, t) -> noise`, `t` an int32 tensor `(batch,)`.
        noise_fn: Callable `(shape, step) -> standard normal noise`; `step`
            is the loop index (a scalar tensor), distinct for every draw.
        diffusion: A `GaussianDiffusion`.
        x_T: The starting noise, `(batch, H, W, C)` float32.
        clip_denoised: Boolean, clip the predicted `x_0` at each step.

    Returns:
        `x_0`, the same shape as `x_T`.
    """
    num_timesteps = diffusion.num_timesteps
    batch = x_T.shape[0]

    def step(i, x):
        t = ops.full((batch,), num_timesteps - 1 - i, dtype="int32")
        pred_noise = ops.cast(eps_fn(x, t), x.dtype)
        noise = noise_fn(x.shape, i)
        return diffusion.p_sample(pred_noise, x, t, clip_denoised=clip_denoised, noise=noise)

    return ops.fori_loop(0, num_timesteps, step, x_T)
