"""EDM's stochastic Heun sampler (Karras et al. 2022, "Elucidating the design space", Algorithm 2).

The sampler works in the variance-exploding variable `x / sqrt(ab) =
x_0 + sigma eps`, `sigma = sqrt((1 - ab) / ab)`, where the probability-flow
ODE is `dx / dsigma = d(x, sigma) = (x - D(x, sigma)) / sigma` with `D` the
denoiser (the network's predicted `x_0`). Each step `i`, from `sigma_i` to
`sigma_{i+1} < sigma_i`:

    gamma = min(s_churn / n, sqrt(2) - 1) if s_tmin <= sigma_i <= s_tmax else 0
    sigma^ = sigma_i (1 + gamma)                         (churn: raise the noise level)
    x^ = x_i + sqrt(sigma^^2 - sigma_i^2) s_noise z,  z ~ N(0, I)
    d = (x^ - D(x^, sigma^)) / sigma^
    x_{i+1} = x^ + (sigma_{i+1} - sigma^) d               (Euler)
    d' = (x_{i+1} - D(x_{i+1}, sigma_{i+1})) / sigma_{i+1}
    x_{i+1} = x^ + (sigma_{i+1} - sigma^) (d + d') / 2    (Heun's corrector)

The corrector is skipped on the last step, to `sigma = 0` (as in the
paper): that Euler step returns `D(x^, sigma^)`, the predicted `x_0` at the
smallest kept timestep `s_0`, as the other samplers do. `n` steps cost
`2n - 1` network calls (`2n - 2` with zero terminal SNR, below).

Which timesteps the network sees. The network only takes integer training
timesteps. The grid `sigma_{n-1} > ... > sigma_0` is the kept timesteps
`s_{n-1} = T - 1 > ... > s_0` of the chain's `timestep_spacing` (by
default `"karras"`: the `rho = 7` grid of Karras et al., eq. 5, each point
mapped to the timestep of nearest `lambda`, `samplers.sampling_timesteps`),
each with its exact `sigma_k = sqrt((1 - ab[s_k]) / ab[s_k])`, then `0`.
Euler and corrector steps call the network at these kept timesteps. With
churn, `sigma^` is rounded (in `log sigma`) to the nearest training timestep
at or above `s_k` (EDM's `round_sigma` for a discrete network), and the
noise added is `sqrt(sigma^^2 - sigma_k^2)` for that timestep's exact
`sigma^`: the chain always lands on a level the network was trained at,
and the churn actually applied is that timestep's `sigma^ / sigma_k - 1`
(where the training timesteps are sparser than `gamma`, as at the smallest
`sigma` of a short schedule, a step may get none). The first step, at
`T - 1`, has no churn: no training timestep lies above it. A context
without its training diffusion (`SamplingContext.training_diffusion`)
rounds `sigma^` to the kept timesteps instead.

`d` is the denoiser's noise (`make_denoiser` keeps `x = x_0 + sigma
noise` in this variable, after clipping too), so every prediction type,
clipping and thresholding work. With zero terminal SNR (`ab[T - 1] = 0`,
`sigma = inf`), the first step is the Euler step `D + sigma_{n-2} d` from
pure noise (DDIM's), without a corrector, which is unbounded there.

Defaults: `s_churn = 0` (deterministic, the probability-flow ODE),
`s_tmin = 0`, `s_tmax = None` (no upper bound), `s_noise = 1`. The paper's ImageNet-64
settings (in its `sigma`, which is this one) are `s_churn = 40`,
`s_tmin = 0.05`, `s_tmax = 50`, `s_noise = 1.003`.
"""

import math

import numpy as np
from keras import ops

from ddpm_keras.samplers.common import Chain
from ddpm_keras.samplers.common import batch_steps
from ddpm_keras.samplers.common import gather_scalar
from ddpm_keras.samplers.common import initial_state
from ddpm_keras.samplers.common import make_denoiser

MAX_GAMMA = math.sqrt(2.0) - 1.0


def ve_sigmas(alphas_cumprod):
    """`sigma = sqrt((1 - ab) / ab)` of each `ab`, float64; `inf` where `ab = 0`."""
    alphas_cumprod = np.asarray(alphas_cumprod, np.float64)
    with np.errstate(divide="ignore"):
        return np.sqrt((1.0 - alphas_cumprod) / alphas_cumprod)


def churn_level(sigma, candidates, low, gamma):
    """The index into `candidates` of the raised level `sigma (1 + gamma)`, at or above index `low`.

    Args:
        sigma: Float, the current level, `candidates[low]`.
        candidates: Float64 array, the `sigma` of each timestep the network
            can be called at, increasing.
        low: Integer, the index of the current level.
        gamma: Float >= 0, the churn.

    Returns:
        The index of the candidate nearest to `sigma (1 + gamma)` in
        `log sigma`, among the finite ones from `low` up; `low` when
        `gamma = 0` or `sigma` is infinite.
    """
    if gamma <= 0.0 or not np.isfinite(sigma):
        return low
    above = candidates[low:]
    above = above[np.isfinite(above)]
    return low + int(np.abs(np.log(above) - np.log(sigma * (1.0 + gamma))).argmin())


def heun_schedule(kept, candidates, s_churn=0.0, s_tmin=0.0, s_tmax=None, s_noise=1.0):
    """The per-step levels and coefficients of the Heun chain, in float64 NumPy.

    Args:
        kept: Int array `(n,)`, the indices into `candidates` of the kept
            timesteps, increasing (the last is the noisiest).
        candidates: Float64 array, `ab` of each timestep the network can be
            called at, increasing in `sigma` (`alphas_cumprod` of the
            training diffusion, or of the kept timesteps alone).
        s_churn, s_tmin, s_tmax, s_noise: Floats, see the module docstring.

    Returns:
        A dict of arrays `(n,)`, step `i` going from kept level
        `n - 1 - i` down: `level` (the network's timestep index of
        `sigma^`), `next_level` (of `sigma_{i+1}`; `0` on the last step,
        unused), `sigma_hat`, `sigma_next` (`0` on the last step),
        `input_scale` (`sqrt(ab^ / ab_i)`, `1` without churn) and
        `noise_scale` (`sqrt(ab^) sqrt(sigma^^2 - sigma_i^2) s_noise`):
        `x^ = input_scale x + noise_scale z` in the network's variable;
        `alpha_next` (`sqrt(ab)` of `sigma_{i+1}`, `1` on the last step)
        and `corrector` (1 where Heun's corrector runs).
    """
    kept = np.asarray(kept, np.int64)
    alphas_cumprod = np.asarray(candidates, np.float64)
    sigmas = ve_sigmas(alphas_cumprod)
    n = len(kept)
    gamma = min(s_churn / n, MAX_GAMMA)
    s_tmax = math.inf if s_tmax is None else s_tmax
    table = {name: np.zeros(n) for name in ("sigma_hat", "sigma_next", "input_scale", "noise_scale", "alpha_next")}
    table.update(level=np.zeros(n, np.int64), next_level=np.zeros(n, np.int64), corrector=np.zeros(n, np.int64))
    for i in range(n):
        current = kept[n - 1 - i]
        sigma = sigmas[current]
        step_gamma = gamma if s_tmin <= sigma <= s_tmax else 0.0
        level = churn_level(sigma, sigmas, current, step_gamma)
        table["level"][i], table["sigma_hat"][i] = level, sigmas[level]
        if level == current:
            table["input_scale"][i] = 1.0
        else:
            table["input_scale"][i] = math.sqrt(alphas_cumprod[level] / alphas_cumprod[current])
            table["noise_scale"][i] = math.sqrt(alphas_cumprod[level] * (sigmas[level] ** 2 - sigma**2)) * s_noise
        if i < n - 1:
            following = kept[n - 2 - i]
            table["next_level"][i], table["sigma_next"][i] = following, sigmas[following]
            table["alpha_next"][i] = math.sqrt(alphas_cumprod[following])
            table["corrector"][i] = int(np.isfinite(sigmas[level]))
        else:
            table["alpha_next"][i] = 1.0
    return table


def heun_chain(context, s_churn=0.0, s_tmin=0.0, s_tmax=None, s_noise=1.0):
    """EDM's Heun sampler over the kept timesteps of `context`; see the module docstring.

    Args:
        context: A `SamplingContext`.
        s_churn: Float >= 0, the total churn; `0` is deterministic.
            Defaults to `0.0`.
        s_tmin, s_tmax: Floats, churn only where
            `s_tmin <= sigma_i <= s_tmax` (`None`: no upper
            bound). Default to `0.0` and `None`.
        s_noise: Float > 0, the scale of the churn's noise. Defaults to
            `1.0`.

    Returns:
        A `Chain` of `context.num_steps` steps, `2 n - 1` network calls.
    """
    training = context.training_diffusion
    if training is None:
        # Round the churn's sigma^ to the kept timesteps: the respaced diffusion's own steps.
        denoise = context.denoiser()
        candidates, kept = context.diffusion.terms_float64["alphas_cumprod"], np.arange(context.num_steps)
    else:
        denoise = make_denoiser(
            context.model_fn, training, np.arange(training.num_timesteps), context.prediction_type,
            context.clip_denoised, context.thresholding,
        )
        candidates, kept = training.terms_float64["alphas_cumprod"], context.timestep_map
    table = heun_schedule(kept, candidates, s_churn, s_tmin, s_tmax, s_noise)
    churn = bool(np.any(table["noise_scale"] > 0.0))
    level_table = ops.convert_to_tensor(table["level"], "int32")
    next_level_table = ops.convert_to_tensor(table["next_level"], "int32")
    corrector_table = ops.convert_to_tensor(table["corrector"], "int32")

    def step(i, state):
        x = state[0]
        # In the network's variable sqrt(ab) (x_0 + sigma eps): x^ at the level of sigma^.
        x_hat = x if not churn else (
            gather_scalar(table["input_scale"], i) * x
            + gather_scalar(table["noise_scale"], i) * context.noise_fn(ops.shape(x), i)
        )
        x_start, d = denoise(x_hat, batch_steps(x, ops.take(level_table, i)))
        sigma_hat, sigma_next = gather_scalar(table["sigma_hat"], i), gather_scalar(table["sigma_next"], i)
        alpha_next = gather_scalar(table["alpha_next"], i)
        # Variance-exploding from here: x^ = D + sigma^ d, so Euler's x^ + (sigma_next - sigma^) d is:
        x_euler = x_start + sigma_next * d

        def corrected():
            _, d_next = denoise(alpha_next * x_euler, batch_steps(x, ops.take(next_level_table, i)))
            return x_euler + 0.5 * (sigma_next - sigma_hat) * (d_next - d)

        x_next = ops.cond(ops.take(corrector_table, i) > 0, corrected, lambda: x_euler)
        return (alpha_next * x_next,)

    return Chain(initial_state, step, context.num_steps)
