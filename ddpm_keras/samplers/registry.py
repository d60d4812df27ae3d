"""The registry of samplers: how each is built, which options it takes, its default and fewest steps.

A new sampler is a module of its own (its `Chain`) and one entry of
`REGISTRY`; its options are fields of `SamplerOptions` (`options.py`).
"""

import functools
from typing import Callable
from typing import NamedTuple

from ddpm_keras.samplers.consistency import consistency_chain
from ddpm_keras.samplers.context import SamplingContext
from ddpm_keras.samplers.ddim import ddim_chain
from ddpm_keras.samplers.ddpm import ddpm_chain
from ddpm_keras.samplers.dpm_solver import DPMPP_SAMPLERS
from ddpm_keras.samplers.dpm_solver import dpmpp_chain
from ddpm_keras.samplers.heun import heun_chain
from ddpm_keras.samplers.pc import pc_chain
from ddpm_keras.samplers.timesteps import sampling_schedule
from ddpm_keras.samplers.unipc import unipc_chain

DEFAULT_DDIM_STEPS = 50
DEFAULT_SOLVER_STEPS = 20
DEFAULT_CONSISTENCY_STEPS = 1


class SamplerSpec(NamedTuple):
    """A registered sampler: how to build it, which options it takes, its default steps, fewest steps and spacing."""

    build: Callable
    options: tuple = ()
    default_steps: int = None  # None: every timestep
    min_steps: int = 1
    stochastic: bool = False  # stochastic with its default options
    default_spacing: str = "trailing"


REGISTRY = {
    "ddpm": SamplerSpec(ddpm_chain, stochastic=True),
    "ddim": SamplerSpec(ddim_chain, ("eta",), DEFAULT_DDIM_STEPS),
    "pc": SamplerSpec(pc_chain, ("corrector_steps", "snr"), stochastic=True),
    **{
        name: SamplerSpec(
            functools.partial(dpmpp_chain, order=order, stochastic=stochastic),
            default_steps=DEFAULT_SOLVER_STEPS, min_steps=order, stochastic=stochastic,
        )
        for name, (order, stochastic) in DPMPP_SAMPLERS.items()
    },
    "unipc": SamplerSpec(functools.partial(unipc_chain, order=2), default_steps=DEFAULT_SOLVER_STEPS, min_steps=2),
    # A consistency model's sampler: one step by default (a distilled student's `default_sampling` holds its own).
    "consistency": SamplerSpec(consistency_chain, default_steps=DEFAULT_CONSISTENCY_STEPS, stochastic=True),
    "heun": SamplerSpec(
        heun_chain, ("s_churn", "s_tmin", "s_tmax", "s_noise"), DEFAULT_SOLVER_STEPS, default_spacing="karras",
    ),
}
SAMPLERS = tuple(REGISTRY)


def default_num_steps(sampler, num_steps, num_timesteps):
    """`num_steps`, or the sampler's default (`50` for DDIM, `20` for the solvers, `1` for `"consistency"`, `T` for
    the chains), at most `T`."""
    if num_steps is not None:
        return int(num_steps)
    default = REGISTRY[sampler].default_steps
    return num_timesteps if default is None else min(default, num_timesteps)


def timestep_spacing_of(sampler, timestep_spacing=None):
    """`timestep_spacing`, or when `None` the sampler's own (`"karras"` for `"heun"`, `"trailing"` for the others)."""
    return _spec(sampler).default_spacing if timestep_spacing is None else timestep_spacing


def build_chain(
    model_fn, noise_fn, diffusion, sampler="ddpm", num_steps=None, prediction_type="epsilon",
    clip_denoised=True, thresholding=None, timestep_spacing=None, **options,
):
    """The `Chain` of `sampler` with `num_steps` steps over `diffusion`.

    Args:
        model_fn: Callable `(x_t, t) -> network output`, `t` an int32
            tensor `(batch,)` of training timesteps.
        noise_fn: Callable `(shape, step) -> standard normal noise`.
        diffusion: A `GaussianDiffusion`.
        sampler: One of `SAMPLERS`. Defaults to `"ddpm"`.
        num_steps: Integer or `None` (the sampler's default). Defaults to
            `None`.
        prediction_type: What the network outputs. Defaults to
            `"epsilon"`.
        clip_denoised: Boolean, clip the predicted `x_0`. Defaults to
            `True`.
        thresholding: `None` or a quantile in `(0, 1)`: dynamic
            thresholding of the predicted `x_0` instead of clipping.
            Defaults to `None`.
        timestep_spacing: One of `TIMESTEP_SPACINGS`, or `None`: the
            sampler's own (`"karras"` for `"heun"`, else `"trailing"`).
            Defaults to `None`.
        **options: The sampler's own options (`eta` for DDIM,
            `corrector_steps` and `snr` for `"pc"`, `s_churn`, `s_tmin`,
            `s_tmax` and `s_noise` for `"heun"`); others are ignored.

    Returns:
        A `Chain`.
    """
    spec = _spec(sampler)
    num_steps = default_num_steps(sampler, num_steps, diffusion.num_timesteps)
    timestep_spacing = timestep_spacing_of(sampler, timestep_spacing)
    context = make_context(
        model_fn, noise_fn, diffusion, num_steps, prediction_type, clip_denoised, thresholding, timestep_spacing,
    )
    return spec.build(context, **{name: options[name] for name in spec.options if name in options})


def make_context(
    model_fn, noise_fn, diffusion, num_steps, prediction_type="epsilon", clip_denoised=True, thresholding=None,
    timestep_spacing="trailing",
):
    """The `SamplingContext` of `num_steps` steps over `diffusion` (respaced with `timestep_spacing`)."""
    spaced, timestep_map = sampling_schedule(diffusion, num_steps, timestep_spacing)
    return SamplingContext(
        model_fn, noise_fn, spaced, timestep_map, prediction_type, clip_denoised, thresholding, diffusion,
    )


def _spec(sampler):
    if sampler not in REGISTRY:
        raise ValueError(f"Unknown sampler. Received: sampler={sampler!r}. Expected one of {SAMPLERS}.")
    return REGISTRY[sampler]
