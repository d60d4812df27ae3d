"""Predictor-corrector sampling (Song et al. 2021, score SDE, Algorithm 5, VP): a DDPM step, then Langevin steps."""

from keras import ops

from ddpm_keras.samplers.common import Chain
from ddpm_keras.samplers.common import batch_steps
from ddpm_keras.samplers.common import gather
from ddpm_keras.samplers.common import initial_state
from ddpm_keras.samplers.common import single_state
from ddpm_keras.samplers.ddpm import ddpm_step


def langevin_step(denoise, diffusion, x, t, noise, snr=0.16):
    """One Langevin corrector step at step `t` (Song et al. 2021, Algorithm 5, VP).

    With the score `s = -eps / sqrt(1 - ab_t)` of the (unclipped)
    denoiser's noise (`GaussianDiffusion.score`, which `DiffusionModel.score`
    also reads) and, per image, `step_size = 2 alpha_t (snr ||z|| / ||s||)^2`
    (`alpha_t = 1 - beta_t`): `x + step_size s + sqrt(2 step_size) z`.
    """
    _, eps = denoise(x, t)
    score = diffusion.score(eps, x, t, prediction_type="epsilon")
    alpha = gather(1.0 - diffusion.terms_float64["betas"], t, x)
    axes = tuple(range(1, len(x.shape)))
    noise_norm = ops.sqrt(ops.sum(ops.square(noise), axis=axes, keepdims=True))
    score_norm = ops.sqrt(ops.sum(ops.square(score), axis=axes, keepdims=True))
    step_size = 2.0 * alpha * ops.square(snr * noise_norm / score_norm)
    return x + step_size * score + ops.sqrt(2.0 * step_size) * noise


def pc_chain(context, corrector_steps=1, snr=0.16):
    """A DDPM step, then `corrector_steps` Langevin steps at the new noise level (none at the data)."""
    denoise, score_denoise = context.denoiser(), context.denoiser(limit=False)
    diffusion, last, draws = context.diffusion, context.num_steps - 1, corrector_steps + 1

    def step(i, x):
        t = last - i
        x = ddpm_step(denoise, diffusion, x, batch_steps(x, t), context.noise_fn(ops.shape(x), draws * i))

        def correct(k, x):
            noise = context.noise_fn(ops.shape(x), draws * i + 1 + k)
            return langevin_step(score_denoise, diffusion, x, batch_steps(x, t - 1), noise, snr)

        # x is now at step t - 1; there is no score at the data (t = 0).
        return ops.fori_loop(0, ops.where(t > 0, corrector_steps, 0), correct, x)

    return Chain(initial_state, single_state(step), context.num_steps)
