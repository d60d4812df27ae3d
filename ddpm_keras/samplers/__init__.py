"""Reverse-process samplers written as whole loops in `keras.ops`, one family a module.

A sampler is built from `model_fn(x_t, t) -> network output` (the
network, however the caller wraps it; `t` is always an ORIGINAL training
timestep), the network's `prediction_type`, `noise_fn(shape, step) ->
standard normal noise` (the caller's randomness; every draw of a chain
passes a distinct integer `step`), a `GaussianDiffusion` and the number of
steps, and is a `Chain` that `run_chain` runs with `keras.ops.fori_loop`
(or a caller runs in segments), so the caller can compile it once and
reuse it. Samplers know nothing of Keras models or training. Every one
reads the network through `make_denoiser`, so it works with every
prediction type, clipping and dynamic thresholding.

Samplers (`SAMPLERS`; network calls = `num_steps` unless said):

- `"ddpm"` (`ddpm.py`): ancestral sampling (Ho et al. 2020), respaced
  with fewer steps than `T` (Nichol & Dhariwal 2021). Stochastic.
- `"ddim"` (`ddim.py`): Song et al. 2021; `eta=0` deterministic (the
  probability-flow ODE, first order), `eta=1` the respaced DDPM chain.
- `"pc"` (`pc.py`): predictor-corrector (Song et al. 2021): a DDPM step,
  then `corrector_steps` Langevin steps (`1 + corrector_steps` calls a step).
- `"dpmpp_2m"`, `"dpmpp_3m"`, `"dpmpp_2m_sde"` (`dpm_solver.py`):
  DPM-Solver++ multistep (Lu et al. 2022), second and third order, and the
  stochastic second-order solver of diffusers' `sde-dpmsolver++`.
- `"unipc"` (`unipc.py`): UniPC (Zhao et al. 2023), `bh2`,
  predictor-corrector multistep.

All walk the kept timesteps `s_0 < ... < s_{n-1}` of
`sampling_timesteps(diffusion, n, timestep_spacing)` from `s_{n-1} = T - 1`
down (the respaced diffusion of `respaced`), and their last step returns
the predicted `x_0` at `s_0` (DDIM and the ODE solvers) or the posterior
mean (DDPM). `inpaint.py` adds the replacement method and RePaint
resampling; `ddim.ddim_encode_chain` runs DDIM backwards (x_0 -> x_T).
`guidance.guided_model_fn` turns a conditional network into the
`model_fn(x_t, t)` of every sampler, with classifier-free guidance.
"""

import functools
from typing import Callable
from typing import NamedTuple

from ddpm_keras.utils.checks import check_number
from ddpm_keras.utils.checks import is_int
from ddpm_keras.samplers.common import Chain
from ddpm_keras.samplers.common import advance
from ddpm_keras.samplers.common import check_thresholding
from ddpm_keras.samplers.common import dynamic_threshold
from ddpm_keras.samplers.common import finish
from ddpm_keras.samplers.common import make_denoiser
from ddpm_keras.samplers.common import run_chain
from ddpm_keras.samplers.common import slerp
from ddpm_keras.samplers.common import start
from ddpm_keras.samplers.common import trajectory_length
from ddpm_keras.samplers.context import SamplingContext
from ddpm_keras.samplers.ddim import ddim_chain
from ddpm_keras.samplers.ddim import ddim_coefficients
from ddpm_keras.samplers.ddim import ddim_encode_chain
from ddpm_keras.samplers.ddpm import ddpm_chain
from ddpm_keras.samplers.dpm_solver import DPMPP_SAMPLERS
from ddpm_keras.samplers.dpm_solver import dpmpp_chain
from ddpm_keras.samplers.dpm_solver import dpmpp_coefficients
from ddpm_keras.samplers.guidance import guided_model_fn
from ddpm_keras.samplers.inpaint import INPAINT_SAMPLERS
from ddpm_keras.samplers.inpaint import inpaint_chain
from ddpm_keras.samplers.pc import pc_chain
from ddpm_keras.samplers.timesteps import TIMESTEP_SPACINGS
from ddpm_keras.samplers.timesteps import check_num_steps
from ddpm_keras.samplers.timesteps import check_spacing
from ddpm_keras.samplers.timesteps import respaced
from ddpm_keras.samplers.timesteps import sampling_schedule
from ddpm_keras.samplers.timesteps import sampling_timesteps
from ddpm_keras.samplers.timesteps import spaced_timesteps
from ddpm_keras.samplers.unipc import unipc_chain
from ddpm_keras.samplers.unipc import unipc_coefficients

DEFAULT_DDIM_STEPS = 50
DEFAULT_SOLVER_STEPS = 20


class SamplerSpec(NamedTuple):
    """A registered sampler: how to build it, which options it takes, its default and fewest steps."""

    build: Callable
    options: tuple = ()
    default_steps: int = None  # None: every timestep
    min_steps: int = 1
    stochastic: bool = False


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
}
SAMPLERS = tuple(REGISTRY)


def default_num_steps(sampler, num_steps, num_timesteps):
    """`num_steps`, or the sampler's default (`50` for DDIM, `20` for the solvers, `T` for the chains), at most `T`."""
    if num_steps is not None:
        return int(num_steps)
    default = REGISTRY[sampler].default_steps
    return num_timesteps if default is None else min(default, num_timesteps)


def build_chain(
    model_fn, noise_fn, diffusion, sampler="ddpm", num_steps=None, prediction_type="epsilon",
    clip_denoised=True, thresholding=None, timestep_spacing="trailing", **options,
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
        timestep_spacing: One of `TIMESTEP_SPACINGS`. Defaults to
            `"trailing"`.
        **options: The sampler's own options (`eta` for DDIM,
            `corrector_steps` and `snr` for `"pc"`); others are ignored.

    Returns:
        A `Chain`.
    """
    spec = _spec(sampler)
    num_steps = default_num_steps(sampler, num_steps, diffusion.num_timesteps)
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
    return SamplingContext(model_fn, noise_fn, spaced, timestep_map, prediction_type, clip_denoised, thresholding)


def _spec(sampler):
    if sampler not in REGISTRY:
        raise ValueError(f"Unknown sampler. Received: sampler={sampler!r}. Expected one of {SAMPLERS}.")
    return REGISTRY[sampler]


def check_sampler_args(
    sampler, num_steps, num_timesteps, eta=0.0, corrector_steps=1, snr=0.16, samplers=None,
    timestep_spacing="trailing", thresholding=None,
):
    """Validates a sampler's arguments; returns the number of steps to run."""
    samplers = SAMPLERS if samplers is None else samplers
    if sampler not in samplers:
        raise ValueError(f"Unknown sampler. Received: sampler={sampler!r}. Expected one of {samplers}.")
    if num_steps is not None:
        check_num_steps(num_steps, num_timesteps)
    num_steps = default_num_steps(sampler, num_steps, num_timesteps)
    min_steps = min(REGISTRY[sampler].min_steps, num_timesteps)
    if num_steps < min_steps:
        raise ValueError(
            f"sampler={sampler!r} is a multistep solver of order {min_steps}: it needs num_steps >= {min_steps}. "
            f"Received: num_steps={num_steps} (use 'ddim' for fewer steps)"
        )
    if isinstance(eta, bool) or not isinstance(eta, (int, float)) or not 0.0 <= eta <= 1.0:
        raise ValueError(f"eta must be a float in [0, 1] (0: deterministic DDIM). Received: eta={eta!r}")
    if not is_int(corrector_steps) or corrector_steps < 0:
        raise ValueError(
            f"corrector_steps must be a non-negative integer. Received: corrector_steps={corrector_steps!r}"
        )
    check_number("snr", snr, low=0.0, low_open=True)
    check_spacing(timestep_spacing)
    check_thresholding(thresholding)
    return num_steps


__all__ = [
    "Chain", "DEFAULT_DDIM_STEPS", "DEFAULT_SOLVER_STEPS", "INPAINT_SAMPLERS", "REGISTRY", "SAMPLERS",
    "SamplerSpec", "SamplingContext", "TIMESTEP_SPACINGS", "advance", "build_chain", "check_num_steps",
    "check_sampler_args", "check_spacing", "check_thresholding", "ddim_coefficients", "ddim_encode_chain",
    "default_num_steps", "dpmpp_coefficients", "dynamic_threshold", "finish", "guided_model_fn", "inpaint_chain",
    "make_context", "make_denoiser", "respaced", "run_chain", "sampling_schedule", "sampling_timesteps",
    "slerp", "spaced_timesteps", "start", "trajectory_length", "unipc_coefficients",
]
