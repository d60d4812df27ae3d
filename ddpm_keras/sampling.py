"""Reverse-process samplers written as whole loops in `keras.ops`.

A sampler takes `eps_fn(x_t, t) -> predicted noise` (the network, however
the caller wraps it), a `GaussianDiffusion` and the starting noise, and runs
the whole chain with `keras.ops.fori_loop`, so the caller can compile the
chain once and reuse it. Samplers know nothing of Keras models or training.
"""

from keras import ops


def ddpm_sample_loop(eps_fn, diffusion, x_T, seed, clip_denoised=True):
    """Ancestral sampling through all `T` steps (Ho et al. 2020, Algorithm 2).

    Args:
        eps_fn: Callable `(x_t, t) -> noise`, `t` an int32 tensor `(batch,)`.
        diffusion: A `GaussianDiffusion`.
        x_T: The starting noise, `(batch, H, W, C)` float32.
        seed: A `keras.random.SeedGenerator` for the noise of each step.
        clip_denoised: Boolean, clip the predicted `x_0` at each step.

    Returns:
        `x_0`, the same shape as `x_T`.
    """
    num_timesteps = diffusion.num_timesteps
    batch = x_T.shape[0]

    def step(i, x):
        t = ops.full((batch,), num_timesteps - 1 - i, dtype="int32")
        pred_noise = ops.cast(eps_fn(x, t), x.dtype)
        return diffusion.p_sample(pred_noise, x, t, clip_denoised=clip_denoised, seed=seed)

    return ops.fori_loop(0, num_timesteps, step, x_T)
