"""The Gaussian diffusion process: forward noising and the reverse step.

`GaussianDiffusion` holds the beta schedule and every term derived from it
(computed once in float64, kept as float32) and implements the forward
process q and the reverse step p of Ho et al. 2020 with `keras.ops`, so it
runs on any Keras backend. It knows nothing of networks or training: callers
hand it the network's output, and `split_prediction` turns any of the
`PREDICTION_TYPES` into the predicted `(x_0, noise)` that every sampler, the
likelihood and inpainting use.
"""

import numpy as np
from keras import ops
from keras import random

from ddpm_keras.diffusion import schedules
from ddpm_keras.diffusion.schedules import BETA_SCHEDULES
from ddpm_keras.diffusion.schedules import get_beta_schedule
from ddpm_keras.utils.checks import check_number

# What a network can be trained to predict from `x_t = sqrt(ab) x_0 + sqrt(1 - ab) eps`:
# the noise `eps` (Ho et al. 2020), the velocity `v = sqrt(ab) eps - sqrt(1 - ab) x_0`
# (Salimans & Ho 2022), or the data `x_0` itself.
PREDICTION_TYPES = ("epsilon", "v", "x0")

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


class GaussianDiffusion:
    """The forward and reverse processes of a DDPM (Ho et al. 2020).

    Args:
        timesteps: Integer, the number of diffusion steps `T`. Defaults to
            `1000`.
        beta_schedule: String, `"linear"` (Ho et al. 2020, the keras.io
            example's) or `"cosine"` (Nichol & Dhariwal 2021, s = 0.008,
            betas capped at 0.999). Defaults to `"linear"`.
        beta_start: Float, the first beta of the linear schedule. Defaults
            to `1e-4`.
        beta_end: Float, the last beta of the linear schedule. Defaults to
            `0.02`.
        clip_min: Float, the lower bound of the data range; the predicted
            `x_0` is clipped to it when `clip_denoised=True`. Defaults to
            `-1.0`.
        clip_max: Float, the upper bound of the data range. Defaults to
            `1.0`.
        rescale_zero_terminal_snr: Boolean, rescale the betas so that the
            last step is pure noise (Lin et al. 2023, Algorithm 1;
            `schedules.rescale_zero_terminal_snr`). Train such a diffusion
            with `prediction_type="v"`. Defaults to `False`.

    Every term in `TERM_NAMES` (`betas`, `alphas_cumprod`, ...,
    `posterior_mean_coef2`) is an attribute: a float32 tensor of shape
    `(timesteps,)`, computed in float64. Timestep arguments `t` are integer
    tensors of shape `(batch,)` with values in `[0, timesteps)`.

    Example:

    >>> diffusion = GaussianDiffusion(timesteps=1000)
    >>> x_t = diffusion.q_sample(x_start, t, noise)
    >>> x_prev = diffusion.p_sample(network([x_t, t]), x_t, t)   # an epsilon network
    >>> _, pred_noise = diffusion.split_prediction(network([x_t, t]), x_t, t, "v")  # a v network
    >>> x_prev = diffusion.p_sample(pred_noise, x_t, t)

    `p_mean_variance` and `p_sample` take the predicted noise; the output
    of a `"v"` or `"x0"` network goes through `split_prediction` first.
    `ddpm_keras.samplers` runs whole chains for every prediction type.
    """

    def __init__(
        self,
        timesteps=1000,
        beta_schedule="linear",
        beta_start=1e-4,
        beta_end=0.02,
        clip_min=-1.0,
        clip_max=1.0,
        rescale_zero_terminal_snr=False,
    ):
        if beta_schedule not in BETA_SCHEDULES:
            raise ValueError(
                f"Unknown beta_schedule: {beta_schedule!r}. "
                f"Expected one of {BETA_SCHEDULES}."
            )
        _check_clip_range(clip_min, clip_max)
        betas = get_beta_schedule(beta_schedule, timesteps, beta_start, beta_end)
        if rescale_zero_terminal_snr:
            betas = schedules.rescale_zero_terminal_snr(betas)
        self.rescale_zero_terminal_snr = bool(rescale_zero_terminal_snr)
        self.beta_schedule = beta_schedule
        self.beta_start = float(beta_start)
        self.beta_end = float(beta_end)
        self._set_betas(betas, clip_min, clip_max)

    @classmethod
    def from_betas(cls, betas, clip_min=-1.0, clip_max=1.0):
        """A diffusion with explicit betas, such as a respaced schedule.

        Args:
            betas: 1-D array of the forward-process variances, each in
                (0, 1].
            clip_min: Float, the lower bound of the data range. Defaults to
                `-1.0`.
            clip_max: Float, the upper bound of the data range. Defaults to
                `1.0`.

        Returns:
            A `GaussianDiffusion` with `beta_schedule="custom"`; its config
            holds the betas.

        Example:

        >>> diffusion = GaussianDiffusion.from_betas([0.1, 0.5, 0.9])
        """
        betas = np.asarray(betas, dtype=np.float64)
        if betas.ndim != 1 or betas.size < 1 or not np.all((betas > 0.0) & (betas <= 1.0)):
            raise ValueError(
                "betas must be a non-empty 1-D array with values in (0, 1]. "
                f"Received: betas={betas!r}"
            )
        _check_clip_range(clip_min, clip_max)
        diffusion = cls.__new__(cls)
        diffusion.beta_schedule = "custom"
        diffusion.rescale_zero_terminal_snr = False
        diffusion.beta_start = float(betas[0])
        diffusion.beta_end = float(betas[-1])
        diffusion._set_betas(betas, clip_min, clip_max)
        return diffusion

    def _set_betas(self, betas, clip_min, clip_max):
        self.num_timesteps = int(len(betas))
        self.clip_min = float(clip_min)
        self.clip_max = float(clip_max)
        self.terms_float64 = compute_terms(betas)
        for name, value in self.terms_float64.items():
            setattr(self, name, ops.convert_to_tensor(value.astype(np.float32)))

    @property
    def zero_terminal_snr(self):
        """Whether `x_T` holds no signal at all (`alphas_cumprod[T - 1] == 0`)."""
        return bool(self.terms_float64["alphas_cumprod"][-1] == 0.0)

    def snr(self):
        """The signal-to-noise ratio `ab / (1 - ab)` per timestep, a float64 NumPy array `(T,)`."""
        alphas_cumprod = self.terms_float64["alphas_cumprod"]
        return alphas_cumprod / (1.0 - alphas_cumprod)

    @property
    def timesteps(self):
        """The number of diffusion steps `T` (alias of `num_timesteps`)."""
        return self.num_timesteps

    def q_mean_variance(self, x_start, t):
        """Mean, variance and log-variance of `q(x_t | x_0)`."""
        mean = gather(self.sqrt_alphas_cumprod, t, x_start) * x_start
        # exp of the float64-computed log: `1 - alphas_cumprod` in float32
        # would lose most digits at small t.
        log_variance = gather(self.log_one_minus_alphas_cumprod, t, x_start)
        variance = ops.exp(log_variance)
        return mean, variance, log_variance

    def q_sample(self, x_start, t, noise):
        """Diffuses `x_start` to step `t`: `sqrt(ab_t) x_0 + sqrt(1 - ab_t) noise`."""
        return (
            gather(self.sqrt_alphas_cumprod, t, x_start) * x_start
            + gather(self.sqrt_one_minus_alphas_cumprod, t, x_start) * noise
        )

    def predict_start_from_noise(self, x_t, t, noise):
        """The `x_0` implied by `x_t` and its noise: `(x_t - sqrt(1 - ab_t) noise) / sqrt(ab_t)`."""
        return (
            gather(self.sqrt_recip_alphas_cumprod, t, x_t) * x_t
            - gather(self.sqrt_recipm1_alphas_cumprod, t, x_t) * noise
        )

    def predict_noise_from_start(self, x_t, t, x_start):
        """The noise implied by `x_t` and `x_0`: `(x_t - sqrt(ab_t) x_0) / sqrt(1 - ab_t)`.

        The inverse of `predict_start_from_noise`, defined at every step
        (also where `ab_t = 0`).
        """
        return (
            x_t - gather(self.sqrt_alphas_cumprod, t, x_t) * x_start
        ) / gather(self.sqrt_one_minus_alphas_cumprod, t, x_t)

    def prediction_target(self, x_start, noise, t, prediction_type="epsilon"):
        """What a network of `prediction_type` is trained to output for `x_t = q_sample(x_start, t, noise)`.

        `"epsilon"`: `noise`; `"x0"`: `x_start`; `"v"`:
        `sqrt(ab_t) noise - sqrt(1 - ab_t) x_start` (Salimans & Ho 2022).
        """
        check_prediction_type(prediction_type)
        if prediction_type == "epsilon":
            return noise
        if prediction_type == "x0":
            return x_start
        return (
            gather(self.sqrt_alphas_cumprod, t, x_start) * noise
            - gather(self.sqrt_one_minus_alphas_cumprod, t, x_start) * x_start
        )

    def split_prediction(self, model_output, x_t, t, prediction_type="epsilon"):
        """The `(x_0, noise)` that a network's output at `(x_t, t)` stands for.

        The one conversion every sampler, inpainting, DDIM inversion and the
        likelihood go through, so each works with each prediction type:

        - `"epsilon"`: `noise = output`, `x_0 = (x_t - sqrt(1 - ab) noise) / sqrt(ab)`
          (undefined where `ab = 0`: zero terminal SNR needs another type);
        - `"x0"`: `x_0 = output`, `noise = (x_t - sqrt(ab) x_0) / sqrt(1 - ab)`;
        - `"v"`: `x_0 = sqrt(ab) x_t - sqrt(1 - ab) v`,
          `noise = sqrt(1 - ab) x_t + sqrt(ab) v`.

        Args:
            model_output: The network's output, shaped as `x_t`.
            x_t: The noisy images.
            t: Integer tensor `(batch,)` of timesteps of this diffusion.
            prediction_type: One of `PREDICTION_TYPES`. Defaults to
                `"epsilon"`.

        Returns:
            `(x_0, noise)`, each shaped as `x_t`; `x_t == sqrt(ab) x_0 +
            sqrt(1 - ab) noise`.
        """
        check_prediction_type(prediction_type)
        model_output = ops.cast(model_output, x_t.dtype)
        if prediction_type == "epsilon":
            return self.predict_start_from_noise(x_t, t, model_output), model_output
        if prediction_type == "x0":
            return model_output, self.predict_noise_from_start(x_t, t, model_output)
        sqrt_ab = gather(self.sqrt_alphas_cumprod, t, x_t)
        sqrt_one_minus_ab = gather(self.sqrt_one_minus_alphas_cumprod, t, x_t)
        return (
            sqrt_ab * x_t - sqrt_one_minus_ab * model_output,
            sqrt_one_minus_ab * x_t + sqrt_ab * model_output,
        )

    def q_posterior(self, x_start, x_t, t):
        """Mean, variance and clipped log-variance of `q(x_{t-1} | x_t, x_0)`."""
        posterior_mean = (
            gather(self.posterior_mean_coef1, t, x_t) * x_start
            + gather(self.posterior_mean_coef2, t, x_t) * x_t
        )
        posterior_variance = gather(self.posterior_variance, t, x_t)
        posterior_log_variance = gather(self.posterior_log_variance_clipped, t, x_t)
        return posterior_mean, posterior_variance, posterior_log_variance

    def p_mean_variance(self, pred_noise, x, t, clip_denoised=True):
        """Mean, variance and log-variance of the reverse step `p(x_{t-1} | x_t)`.

        The network's noise prediction gives `x_0` (clipped to
        `[clip_min, clip_max]` when `clip_denoised`), which is put in the
        posterior `q(x_{t-1} | x_t, x_0)`.
        """
        x_recon = self.predict_start_from_noise(x, t, pred_noise)
        if clip_denoised:
            x_recon = ops.clip(x_recon, self.clip_min, self.clip_max)
        return self.q_posterior(x_recon, x, t)

    def p_sample(self, pred_noise, x, t, clip_denoised=True, seed=None, noise=None):
        """One ancestral step: draws `x_{t-1}` from `p(x_{t-1} | x_t)`.

        Args:
            pred_noise: The network's noise prediction for `x` at `t`.
            x: The current sample `x_t`.
            t: Integer tensor `(batch,)` of timesteps.
            clip_denoised: Boolean, whether to clip the predicted `x_0`.
            seed: `None`, an integer or a `keras.random.SeedGenerator` for
                the step's noise. Inside a compiled loop pass a
                `SeedGenerator`.
            noise: Optional standard normal noise shaped as `x`, used
                instead of drawing it from `seed` (for samplers that draw
                their own noise).

        Returns:
            `x_{t-1}`; where `t == 0` the mean, with no noise added.
        """
        model_mean, _, model_log_variance = self.p_mean_variance(
            pred_noise, x, t, clip_denoised=clip_denoised
        )
        if noise is None:
            noise = random.normal(ops.shape(x), dtype=x.dtype, seed=seed)
        nonzero_mask = ops.cast(ops.not_equal(t, 0), x.dtype)
        nonzero_mask = ops.reshape(nonzero_mask, (-1,) + (1,) * (len(x.shape) - 1))
        return model_mean + nonzero_mask * ops.exp(0.5 * model_log_variance) * noise

    def get_config(self):
        if self.beta_schedule == "custom":
            return {
                "betas": self.terms_float64["betas"].tolist(),
                "clip_min": self.clip_min,
                "clip_max": self.clip_max,
            }
        return {
            "timesteps": self.num_timesteps,
            "beta_schedule": self.beta_schedule,
            "beta_start": self.beta_start,
            "beta_end": self.beta_end,
            "clip_min": self.clip_min,
            "clip_max": self.clip_max,
            "rescale_zero_terminal_snr": self.rescale_zero_terminal_snr,
        }

    @classmethod
    def from_config(cls, config):
        if "betas" in config:
            return cls.from_betas(**config)
        return cls(**config)

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"GaussianDiffusion({args})"


def check_prediction_type(prediction_type):
    """Raises a `ValueError` unless `prediction_type` is one of `PREDICTION_TYPES`."""
    if prediction_type not in PREDICTION_TYPES:
        raise ValueError(
            f"Unknown prediction_type: {prediction_type!r}. Expected one of {PREDICTION_TYPES} "
            "(what the network predicts: the noise, the velocity v or the clean image)."
        )


def _check_clip_range(clip_min, clip_max):
    """Raises a `ValueError` unless the data range `[clip_min, clip_max]` is finite and not empty."""
    check_number("clip_min", clip_min)
    check_number("clip_max", clip_max)
    if not clip_min < clip_max:
        raise ValueError(f"clip_min must be smaller than clip_max. Received: clip_min={clip_min}, clip_max={clip_max}")


def gather(table, t, x):
    """`table[t]` in `x`'s dtype, shaped `(batch, 1, ..., 1)` to broadcast against `x`.

    The one gather of the package's coefficient tables: the diffusion's own
    (float32 tensors) and the samplers' and the likelihood's (float64 NumPy
    arrays, kept as float32 first).

    Args:
        table: A 1-D tensor, or a NumPy array (or sequence) of floats.
        t: Integer timesteps or step indices, `(batch,)`.
        x: The tensor to broadcast against.
    """
    if not hasattr(table, "dtype") or isinstance(table, np.ndarray):
        table = ops.convert_to_tensor(np.asarray(table, np.float32))
    values = ops.take(table, ops.cast(t, "int32"), axis=0)
    return ops.cast(ops.reshape(values, (-1,) + (1,) * (len(x.shape) - 1)), x.dtype)
