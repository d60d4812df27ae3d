"""The per-timestep terms of a beta schedule, in float64: what `GaussianDiffusion` gathers at each `t`."""

import numpy as np

# Names of the per-timestep terms, as in the paper's reference code and the
# keras.io example. Each is an attribute holding a float32 tensor `(T,)`.
TERM_NAMES = (
    "betas",
    "alphas_cumprod",
    "alphas_cumprod_prev",
    "sqrt_alphas_cumprod",
    "sqrt_one_minus_alphas_cumprod",
    "log_one_minus_alphas_cumprod",
    "sqrt_recip_alphas_cumprod",
    "sqrt_recipm1_alphas_cumprod",
    "posterior_variance",
    "posterior_log_variance_clipped",
    "posterior_mean_coef1",
    "posterior_mean_coef2",
)


def compute_terms(betas):
    """Every term of `TERM_NAMES` from `betas`, in float64 NumPy.

    Args:
        betas: 1-D array of the forward-process variances, each in (0, 1].

    Returns:
        A dict from term name to a float64 array of the same length.
    """
    betas = np.asarray(betas, dtype=np.float64)
    alphas = 1.0 - betas
    alphas_cumprod = np.cumprod(alphas)
    alphas_cumprod_prev = np.append(1.0, alphas_cumprod[:-1])
    # Variance of q(x_{t-1} | x_t, x_0), Ho et al. eq. 7.
    posterior_variance = betas * (1.0 - alphas_cumprod_prev) / (1.0 - alphas_cumprod)
    # With zero terminal SNR (the last alphas_cumprod is 0) the reciprocals
    # are infinite at T - 1: x_0 cannot be read from the noise there.
    with np.errstate(divide="ignore"):
        return _terms(betas, alphas, alphas_cumprod, alphas_cumprod_prev, posterior_variance)


def _terms(betas, alphas, alphas_cumprod, alphas_cumprod_prev, posterior_variance):
    return {
        "betas": betas,
        "alphas_cumprod": alphas_cumprod,
        "alphas_cumprod_prev": alphas_cumprod_prev,
        "sqrt_alphas_cumprod": np.sqrt(alphas_cumprod),
        "sqrt_one_minus_alphas_cumprod": np.sqrt(1.0 - alphas_cumprod),
        "log_one_minus_alphas_cumprod": np.log(1.0 - alphas_cumprod),
        "sqrt_recip_alphas_cumprod": np.sqrt(1.0 / alphas_cumprod),
        "sqrt_recipm1_alphas_cumprod": np.sqrt(1.0 / alphas_cumprod - 1.0),
        "posterior_variance": posterior_variance,
        "posterior_log_variance_clipped": _posterior_log_variance_clipped(betas, posterior_variance),
        "posterior_mean_coef1": betas * np.sqrt(alphas_cumprod_prev) / (1.0 - alphas_cumprod),
        "posterior_mean_coef2": (1.0 - alphas_cumprod_prev) * np.sqrt(alphas) / (1.0 - alphas_cumprod),
    }


def _posterior_log_variance_clipped(betas, posterior_variance):
    """`log(posterior_variance)` with its `t = 0` entry taken from `t = 1`.

    The posterior variance is 0 at `t = 0` (`x_0` is known). Ho et al.'s
    and improved-diffusion's convention,
    `log(append(posterior_variance[1], posterior_variance[1:]))`, gives the
    decoder `p(x_0 | x_1)` the scale of the next step, where clipping at a
    tiny floor would give a scale no 8-bit bin can be scored with. With a
    single step (`T == 1`, e.g. a respaced schedule) there is no `t = 1`:
    the entry is `log(betas[0])`, the variance of `q(x_1 | x_0)`. Sampling
    adds no noise at `t = 0`, so the entry only matters to the likelihood.
    """
    first = posterior_variance[1] if len(betas) > 1 else betas[0]
    return np.log(np.append(first, posterior_variance[1:]))
