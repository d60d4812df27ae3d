"""`SamplingContext`: what a sampler family is built from."""

from typing import Callable
from typing import NamedTuple

import numpy as np

from ddpm_keras.samplers.common import make_denoiser


class SamplingContext(NamedTuple):
    """The network and the schedule a sampler walks.

    Attributes:
        model_fn: Callable `(x_t, t) -> network output`, `t` int32 `(batch,)`
            training timesteps.
        noise_fn: Callable `(shape, step) -> standard normal noise`; every
            draw of a chain passes a distinct integer `step` (`-1` is
            `x_T`'s).
        diffusion: The (respaced) `GaussianDiffusion` over the kept
            timesteps `s_0 < ... < s_{n-1}`; the chain walks its steps
            from `n - 1` down to `0`, then to the data.
        timestep_map: Int64 array `(n,)`, the training timestep of each of
            its steps.
        prediction_type: What the network outputs.
        clip_denoised: Boolean, clip the predicted `x_0`.
        thresholding: `None` or the quantile of dynamic thresholding.
        training_diffusion: The `GaussianDiffusion` the network was trained
            on (`diffusion` is it restricted to the kept timesteps), or
            `None`: for a sampler that calls the network at timesteps
            other than the kept ones (`"heun"`'s churn).
    """

    model_fn: Callable
    noise_fn: Callable
    diffusion: object
    timestep_map: np.ndarray
    prediction_type: str = "epsilon"
    clip_denoised: bool = True
    thresholding: float = None
    training_diffusion: object = None

    @property
    def num_steps(self):
        return int(self.diffusion.num_timesteps)

    def denoiser(self, limit=True):
        """`denoise(x, t) -> (x_0, noise)` at step `t`; `limit=False` skips clipping and thresholding."""
        return make_denoiser(
            self.model_fn, self.diffusion, self.timestep_map, self.prediction_type,
            clip_denoised=self.clip_denoised and limit, thresholding=self.thresholding if limit else None,
        )
