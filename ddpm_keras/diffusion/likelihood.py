"""Negative log-likelihood bounds in bits per dimension (Ho et al. 2020, Nichol & Dhariwal 2021).

The variational bound of a DDPM on the negative log-likelihood of 8-bit
data `x_0` (Ho et al. 2020, eq. 5) is

    L = L_T + sum_{t=2}^{T} L_{t-1} + L_0
    L_T     = KL(q(x_T | x_0) || N(0, I))                    (`prior_bpd`)
    L_{t-1} = KL(q(x_{t-1} | x_t, x_0) || p(x_{t-1} | x_t))  (2 <= t <= T)
    L_0     = -log p(x_0 | x_1)                              (the decoder)

The package counts timesteps from 0 (its step `t` in `[0, T)` is the
paper's `t + 1`): its step 0 gives the decoder term `L_0` and its step
`t > 0` the KL term `L_t`. The reverse step `p(x_{t-1} | x_t)` puts the
network's predicted `x_0` in the posterior `q(x_{t-1} | x_t, x_0)` for its
mean and has a fixed variance (`MODEL_VARIANCES`); the decoder is the
discretized Gaussian of Ho et al. (256 bins of width
`(clip_max - clip_min) / 255`, the outer two extended to infinity). Every
term is the mean over the `H * W * C` dimensions divided by `ln 2`: bits
per dimension, as Ho et al. and improved-diffusion report.

`vb_terms_loop` evaluates the terms of a list of timesteps as one
`keras.ops.fori_loop`, with the samplers' interface (`model_fn(x_t, t)`,
`noise_fn(shape, step)`; see `ddpm_keras.sampling`), so a caller compiles
it once; `stratified_timesteps` chooses the timesteps of an exact bound or
of an unbiased estimate from fewer network calls. Everything is written in
`keras.ops` and runs on any backend.
"""

import math

import numpy as np
from keras import ops

from ddpm_keras.diffusion.gaussian import check_prediction_type
from ddpm_keras.diffusion.gaussian import gather
from ddpm_keras.utils.checks import is_int

MODEL_VARIANCES = ("fixedsmall", "fixedlarge")
NUM_BINS = 256
LOG_FLOOR = 1e-12


def normal_kl(mean1, logvar1, mean2, logvar2):
    """KL divergence `KL(N(mean1, exp(logvar1)) || N(mean2, exp(logvar2)))`, elementwise.

    Args:
        mean1, logvar1: Mean and log-variance of the first Gaussian.
        mean2, logvar2: Mean and log-variance of the second Gaussian.
            The four arguments broadcast against each other.

    Returns:
        The KL divergence in nats, elementwise:
        `0.5 * (logvar2 - logvar1 + exp(logvar1 - logvar2) - 1
        + (mean1 - mean2)^2 exp(-logvar2))`.

    Example:

    >>> normal_kl(0.0, 0.0, 1.0, 0.0)  # 0.5 nats
    """
    mean1, logvar1, mean2, logvar2 = (ops.convert_to_tensor(v) for v in (mean1, logvar1, mean2, logvar2))
    return 0.5 * (
        -1.0
        + logvar2
        - logvar1
        + ops.exp(logvar1 - logvar2)
        + ops.square(mean1 - mean2) * ops.exp(-logvar2)
    )


def standard_normal_cdf(z):
    """`Phi(z) = 0.5 erfc(-z / sqrt(2))`: accurate in the lower tail, where `Phi` is small."""
    return 0.5 * ops.erfc(-z / math.sqrt(2.0))


def discretized_gaussian_log_likelihood(x, means, log_scales, clip_min=-1.0, clip_max=1.0, num_bins=NUM_BINS):
    """Log-likelihood of discretized data under a Gaussian, elementwise (Ho et al. 2020, eq. 13).

    The data range `[clip_min, clip_max]` holds `num_bins` bins of width
    `delta = (clip_max - clip_min) / (num_bins - 1)` centred on the levels
    `clip_min + k delta`; a value `x` stands for the bin
    `[x - delta / 2, x + delta / 2]`, the lowest bin extended to `-inf`
    and the highest to `+inf`, so the probabilities of the bins sum to 1.
    With the defaults, the 256 levels of 8-bit pixels scaled to `[-1, 1]`.

    The normal CDF is exact (`erfc`). A bin's mass is taken on the side of
    the mean where both of its limits lie in the lower tail (by symmetry,
    `P(a < Z < b) = P(-b < Z < -a)`), so that far from the mean it is a
    difference of two small numbers instead of two numbers near 1. The
    masses are floored at `1e-12` before the log.

    Args:
        x: The data, values on (or near) the bin centres.
        means: Means of the Gaussian, broadcastable to `x`.
        log_scales: Log standard deviations, broadcastable to `x`.
        clip_min: Float, the lowest level. Defaults to `-1.0`.
        clip_max: Float, the highest level. Defaults to `1.0`.
        num_bins: Integer, the number of levels. Defaults to `256`.

    Returns:
        The log-probability of each value's bin, in nats, shaped as the
        broadcast of the inputs.

    Example:

    >>> log_p = discretized_gaussian_log_likelihood(x_0, means=x_0_pred, log_scales=0.5 * log_var)
    """
    x, means, log_scales = (ops.convert_to_tensor(v) for v in (x, means, log_scales))
    half_bin = 0.5 * (clip_max - clip_min) / (num_bins - 1)
    centered = x - means
    inv_stdv = ops.exp(-log_scales)
    upper = inv_stdv * (centered + half_bin)
    lower = inv_stdv * (centered - half_bin)
    flip = centered > 0.0
    low_tail_upper = ops.where(flip, -lower, upper)
    low_tail_lower = ops.where(flip, -upper, lower)
    bin_mass = standard_normal_cdf(low_tail_upper) - standard_normal_cdf(low_tail_lower)
    log_bin = ops.log(ops.maximum(bin_mass, LOG_FLOOR))
    # The outer bins: P(Z < upper) at the lowest level, P(Z > lower) = Phi(-lower) at the highest.
    log_cdf_upper = ops.log(ops.maximum(standard_normal_cdf(upper), LOG_FLOOR))
    log_sf_lower = ops.log(ops.maximum(standard_normal_cdf(-lower), LOG_FLOOR))
    return ops.where(
        x < clip_min + half_bin,
        log_cdf_upper,
        ops.where(x > clip_max - half_bin, log_sf_lower, log_bin),
    )


def _mean_flat_bits(x):
    """Mean over every axis but the first, in bits (nats / ln 2)."""
    return ops.mean(x, axis=tuple(range(1, len(x.shape)))) / math.log(2.0)


def check_model_variance(model_variance):
    """Raises a `ValueError` unless `model_variance` is one of `MODEL_VARIANCES`."""
    if model_variance not in MODEL_VARIANCES:
        raise ValueError(f"Received: model_variance={model_variance!r}. Expected one of {MODEL_VARIANCES}.")


def model_log_variance(diffusion, model_variance="fixedsmall"):
    """The fixed log-variance of the reverse step `p(x_{t-1} | x_t)` per timestep, in float64.

    Args:
        diffusion: A `GaussianDiffusion`.
        model_variance: `"fixedsmall"`, the posterior variance `beta~_t`
            (the one `GaussianDiffusion.p_sample` uses), or `"fixedlarge"`,
            `beta_t` (Ho et al. 2020, section 3.2). At `t = 0` both take
            `posterior_variance[1]` (improved-diffusion's convention;
            `betas[0]` when `T == 1`), the scale of the decoder
            `p(x_0 | x_1)`. Defaults to `"fixedsmall"`.

    Returns:
        A float64 NumPy array `(T,)`.

    Example:

    >>> log_var = model_log_variance(diffusion, "fixedlarge")
    """
    check_model_variance(model_variance)
    terms = diffusion.terms_float64
    if model_variance == "fixedsmall":
        return np.asarray(terms["posterior_log_variance_clipped"], np.float64)
    return np.append(terms["posterior_log_variance_clipped"][0], np.log(terms["betas"][1:]))


def prior_bpd(diffusion, x_0):
    """The prior term `L_T = KL(q(x_T | x_0) || N(0, I))` per image, in bits per dimension.

    Closed form: with `ab = alphas_cumprod[T - 1]`, the mean over pixels of
    `0.5 * (ab x_0^2 - ab - log(1 - ab)) / ln 2` (`1 - ab` from its float64
    log). It involves no network, and is small when `ab` is: the bound
    counts it all the same.

    Args:
        diffusion: A `GaussianDiffusion`.
        x_0: Images `(B, H, W, C)` in the data range.

    Returns:
        A float32 tensor `(B,)`.

    Example:

    >>> prior = prior_bpd(diffusion, images)  # (B,) bits per dimension
    """
    x_0 = ops.cast(ops.convert_to_tensor(x_0), "float32")
    t = ops.full((x_0.shape[0],), diffusion.num_timesteps - 1, dtype="int32")
    mean, _, log_variance = diffusion.q_mean_variance(x_0, t)
    return _mean_flat_bits(normal_kl(mean, log_variance, 0.0, 0.0))


def vb_terms_bpd(
    diffusion, model_output, x_0, x_t, t, clip_denoised=True, model_variance="fixedsmall", prediction_type="epsilon"
):
    """The terms `L_{t-1}` (t > 0) and `L_0` (t = 0) of the bound for one draw of `x_t`, per image.

    The reverse step's mean is the posterior mean `q_posterior(x_0', x_t, t)`
    of the `x_0'` that the network's output stands for
    (`diffusion.split_prediction`), clipped to the data range when
    `clip_denoised`.

    Args:
        diffusion: A `GaussianDiffusion`.
        model_output: The network's output for `x_t` at `t`: the predicted
            noise, `v` or `x_0`, as `prediction_type` says.
        x_0: The images `(B, H, W, C)`, in the data range.
        x_t: `q_sample(x_0, t, noise)`.
        t: Int tensor `(B,)` of timesteps in `[0, T)`.
        clip_denoised: Boolean, clip the predicted `x_0` to the data range
            before putting it in the posterior. Defaults to `True`.
        model_variance: One of `MODEL_VARIANCES`, see
            `model_log_variance`. Defaults to `"fixedsmall"`.
        prediction_type: One of `diffusion.PREDICTION_TYPES`, what the
            network predicts. Defaults to `"epsilon"`.

    Returns:
        A float32 tensor `(B,)` in bits per dimension: where `t > 0`,
        `KL(q(x_{t-1} | x_t, x_0) || p(x_{t-1} | x_t))`; where `t == 0`,
        the decoder's `-log p(x_0 | x_1)`.
    """
    true_mean, _, true_log_variance = diffusion.q_posterior(x_0, x_t, t)
    x_0_pred, _ = diffusion.split_prediction(model_output, x_t, t, prediction_type)
    if clip_denoised:
        x_0_pred = ops.clip(x_0_pred, diffusion.clip_min, diffusion.clip_max)
    model_mean, _, _ = diffusion.q_posterior(x_0_pred, x_t, t)
    log_variance = gather(model_log_variance(diffusion, model_variance), t, x_t)
    kl = _mean_flat_bits(normal_kl(true_mean, true_log_variance, model_mean, log_variance))
    decoder_nll = -_mean_flat_bits(
        discretized_gaussian_log_likelihood(
            x_0, model_mean, 0.5 * log_variance, diffusion.clip_min, diffusion.clip_max
        )
    )
    return ops.where(ops.equal(ops.cast(t, "int32"), 0), decoder_nll, kl)


def vb_terms_loop(
    model_fn, noise_fn, diffusion, x_0, timesteps, clip_denoised=True, model_variance="fixedsmall",
    prediction_type="epsilon",
):
    """The bound's terms at `timesteps` for a batch, as one `keras.ops.fori_loop`.

    Step `i` draws `noise = noise_fn(x_0.shape, i)`, diffuses
    `x_t = q_sample(x_0, t_i, noise)`, calls `model_fn(x_t, t_i)` and
    evaluates `vb_terms_bpd`. The timesteps are a tensor input, so one
    compiled loop serves every choice of `n` timesteps.

    Args:
        model_fn: Callable `(x_t, t) -> the network's output` (the noise,
            `v` or `x_0` of `prediction_type`), `t` an int32 tensor `(B,)`
            of training timesteps.
        noise_fn: Callable `(shape, step) -> standard normal noise`, a
            distinct `step` per draw.
        diffusion: A `GaussianDiffusion`.
        x_0: Images `(B, H, W, C)` in the data range.
        timesteps: Int array `(n,)` of timesteps in `[0, T)`.
        clip_denoised: Boolean. Defaults to `True`.
        model_variance: One of `MODEL_VARIANCES`. Defaults to
            `"fixedsmall"`.
        prediction_type: One of `diffusion.PREDICTION_TYPES`. Defaults to
            `"epsilon"`.

    Returns:
        A float32 tensor `(n, B)`: row `i` is the term of `timesteps[i]`
        per image, in bits per dimension, from one draw of the noise.

    Example:

    >>> terms = vb_terms_loop(model_fn, noise_fn, diffusion, images, np.arange(diffusion.num_timesteps))
    >>> bpd = ops.sum(terms, axis=0) + prior_bpd(diffusion, images)  # the bound per image
    """
    check_model_variance(model_variance)
    check_prediction_type(prediction_type)
    x_0 = ops.cast(ops.convert_to_tensor(x_0), "float32")
    timesteps = ops.cast(ops.convert_to_tensor(timesteps), "int32")
    num_steps, batch = timesteps.shape[0], x_0.shape[0]

    def step(i, terms):
        t = ops.broadcast_to(ops.take(timesteps, i), (batch,))
        x_t = diffusion.q_sample(x_0, t, ops.cast(noise_fn(x_0.shape, i), "float32"))
        term = vb_terms_bpd(diffusion, model_fn(x_t, t), x_0, x_t, t, clip_denoised, model_variance, prediction_type)
        return ops.slice_update(terms, (i, 0), ops.reshape(ops.cast(term, "float32"), (1, batch)))

    return ops.fori_loop(0, num_steps, step, ops.zeros((num_steps, batch), "float32"))


def check_bound_steps(num_steps, num_timesteps):
    """Raises a `ValueError` unless `num_steps` is `None` or an integer in `[min(2, T), T]`."""
    low = min(2, num_timesteps)
    if num_steps is None:
        return
    if not is_int(num_steps) or not low <= num_steps <= num_timesteps:
        raise ValueError(
            f"num_steps must be None (all T steps) or an integer in [{low}, {num_timesteps}] "
            f"(t = 0 and at least one stratum of the T = {num_timesteps} timesteps). "
            f"Received: num_steps={num_steps!r}"
        )


def stratified_timesteps(num_timesteps, num_steps=None, seed=0):
    """The timesteps of the bound and their weights: all of them, or a stratified draw.

    With `num_steps` `None` or `T`: every timestep, weight 1 (the exact
    bound). With `n < T`: `t = 0` (the decoder, weight 1), and the
    timesteps `[1, T)` split into `n - 1` contiguous strata whose edges are
    spaced geometrically (as `geomspace(1, T, n)`, each stratum at least
    one timestep wide), one `t` drawn uniformly inside each, weighted by
    its stratum's size. `sum(weights * term(timesteps))` is then an
    unbiased estimate of `sum_t term(t)`. The geometric spacing makes the
    first strata single timesteps, evaluated exactly: the terms of the
    first steps are the largest and fall steeply with `t`, so equal strata
    would give an estimate that is unbiased but skewed (usually low, now
    and then far too high, when a wide first stratum draws `t = 1`).

    Args:
        num_timesteps: Integer, the diffusion's `T`.
        num_steps: `None` or an integer in `[2, T]` (`1` when `T == 1`):
            the number of terms evaluated. Defaults to `None`.
        seed: Integer or `None`, the NumPy seed of the draw. Defaults to
            `0`.

    Returns:
        `(timesteps, weights)`: int64 NumPy arrays `(n,)`, `timesteps[0]`
        is 0 and `timesteps` is increasing.

    Example:

    >>> stratified_timesteps(1000, 50, seed=0)  # t = 0 to 11 exactly, then ever wider strata
    """
    check_bound_steps(num_steps, num_timesteps)
    if num_steps is None or num_steps == num_timesteps:
        return np.arange(num_timesteps, dtype=np.int64), np.ones(num_timesteps, dtype=np.int64)
    edges = geometric_edges(num_timesteps, num_steps - 1)
    drawn = np.random.default_rng(seed).integers(edges[:-1], edges[1:])
    return np.append(0, drawn).astype(np.int64), np.append(1, np.diff(edges)).astype(np.int64)


def geometric_edges(num_timesteps, num_strata):
    """`num_strata + 1` increasing integer edges from 1 to `T`, close to `geomspace(1, T, num_strata + 1)`.

    Each edge is at least one above the previous one and leaves room for
    the strata after it, so every stratum `[edges[i], edges[i + 1])` holds
    at least one timestep.
    """
    targets = np.geomspace(1.0, num_timesteps, num_strata + 1)
    edges = [1]
    for i in range(1, num_strata + 1):
        edge = max(int(round(targets[i])), edges[-1] + 1)
        edges.append(min(edge, num_timesteps - (num_strata - i)))
    return np.asarray(edges, dtype=np.int64)
