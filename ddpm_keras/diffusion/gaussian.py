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
from ddpm_keras.diffusion.terms import compute_terms
from ddpm_keras.utils.checks import check_number

# What a network can be trained to predict from `x_t = sqrt(ab) x_0 + sqrt(1 - ab) eps`:
# the noise `eps` (Ho et al. 2020), the velocity `v = sqrt(ab) eps - sqrt(1 - ab) x_0`
# (Salimans & Ho 2022), or the data `x_0` itself.
PREDICTION_TYPES = ("epsilon", "v", "x0")

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
    >>> x_prev = diffusion.p_sample(network([x_t, t]), x_t, t, prediction_type="v")  # a v network

    `p_mean_variance` and `p_sample` read the network's output through
    `split_prediction`; `ddpm_keras.samplers` runs whole chains, the
    `"ddpm"` sampler's steps ending in `posterior_sample` as `p_sample`'s do.
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

    def score(self, model_output, x_t, t, prediction_type="epsilon"):
        """The score `grad log p_t(x_t) = -eps / sqrt(1 - ab_t)` that a network's output stands for.

        The noise from `split_prediction` (any prediction type) divided by
        the noise's scale: the score of the marginal `p_t` that the network
        models (Song et al. 2021, eq. 11; the denoising objective's noise
        "up to a scaling factor"). `DiffusionModel.score` and the Langevin
        corrector (`samplers.pc.langevin_step`) take it from here. Not
        defined at a step where `ab_t = 1`.

        Args:
            model_output: The network's output at `(x_t, t)`.
            x_t: The noisy images.
            t: Integer tensor `(batch,)` of timesteps of this diffusion.
            prediction_type: One of `PREDICTION_TYPES`. Defaults to
                `"epsilon"`.

        Returns:
            The score, shaped as `x_t`.

        Example:

        >>> score = diffusion.score(network([x_t, t]), x_t, t)
        """
        _, noise = self.split_prediction(model_output, x_t, t, prediction_type)
        return -noise / gather(self.sqrt_one_minus_alphas_cumprod, t, x_t)

    def q_posterior(self, x_start, x_t, t):
        """Mean, variance and clipped log-variance of `q(x_{t-1} | x_t, x_0)`."""
        posterior_mean = (
            gather(self.posterior_mean_coef1, t, x_t) * x_start
            + gather(self.posterior_mean_coef2, t, x_t) * x_t
        )
        posterior_variance = gather(self.posterior_variance, t, x_t)
        posterior_log_variance = gather(self.posterior_log_variance_clipped, t, x_t)
        return posterior_mean, posterior_variance, posterior_log_variance

    def p_mean_variance(self, model_output, x, t, clip_denoised=True, prediction_type="epsilon"):
        """Mean, variance and log-variance of the reverse step `p(x_{t-1} | x_t)`.

        The network's output, read as `prediction_type` (`split_prediction`),
        gives `x_0` (clipped to `[clip_min, clip_max]` when
        `clip_denoised`), which is put in the posterior
        `q(x_{t-1} | x_t, x_0)`.
        """
        return self.q_posterior(self._predicted_start(model_output, x, t, clip_denoised, prediction_type), x, t)

    def _predicted_start(self, model_output, x, t, clip_denoised, prediction_type):
        """The `x_0` that `model_output` stands for, clipped to the data range when `clip_denoised`."""
        x_recon, _ = self.split_prediction(model_output, x, t, prediction_type)
        return ops.clip(x_recon, self.clip_min, self.clip_max) if clip_denoised else x_recon

    def posterior_sample(self, x_start, x_t, t, noise):
        """`x_{t-1}` drawn from the posterior `q(x_{t-1} | x_t, x_0)` with the given standard normal `noise`.

        Its variance is `posterior_variance` ("fixedsmall"); where `t == 0`
        the mean, with no noise added. Every ancestral step (`p_sample`, the
        `"ddpm"` sampler) ends here.
        """
        mean, _, log_variance = self.q_posterior(x_start, x_t, t)
        nonzero = ops.reshape(ops.cast(ops.not_equal(t, 0), x_t.dtype), (-1,) + (1,) * (len(x_t.shape) - 1))
        return mean + nonzero * ops.exp(0.5 * log_variance) * noise

    def p_sample(self, model_output, x, t, clip_denoised=True, seed=None, noise=None, prediction_type="epsilon"):
        """One ancestral step: draws `x_{t-1}` from `p(x_{t-1} | x_t)`.

        Args:
            model_output: The network's output for `x` at `t`: the noise,
                `v` or `x_0`, as `prediction_type` says.
            x: The current sample `x_t`.
            t: Integer tensor `(batch,)` of timesteps.
            clip_denoised: Boolean, whether to clip the predicted `x_0`.
            seed: `None`, an integer or a `keras.random.SeedGenerator` for
                the step's noise. Inside a compiled loop pass a
                `SeedGenerator`.
            noise: Optional standard normal noise shaped as `x`, used
                instead of drawing it from `seed` (for samplers that draw
                their own noise).
            prediction_type: `"epsilon"`, `"v"` or `"x0"`. Defaults to
                `"epsilon"`.

        Returns:
            `x_{t-1}`; where `t == 0` the mean, with no noise added.
        """
        if noise is None:
            noise = random.normal(ops.shape(x), dtype=x.dtype, seed=seed)
        return self.posterior_sample(self._predicted_start(model_output, x, t, clip_denoised, prediction_type), x, t, noise)

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
