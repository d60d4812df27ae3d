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
- `"consistency"` (`consistency.py`): multistep consistency sampling
  (Song et al. 2023, Algorithm 1), for a consistency model (an `"x0"`
  network that maps any `x_t` to its trajectory's start, such as
  `ConsistencyDistillation`'s student): each step takes the model's `x_0`
  and re-noises it to the next kept level with fresh noise; 1 step by
  default, deterministic only then.
- `"heun"` (`heun.py`): EDM's second-order Heun sampler (Karras et al.
  2022, Algorithm 2) on their `rho = 7` grid (its default spacing,
  `"karras"`), deterministic unless `s_churn > 0` re-adds noise
  (`s_tmin`, `s_tmax`, `s_noise`): `2 num_steps - 1` calls (no corrector
  on the last step, to `sigma = 0`).

All walk the kept timesteps `s_0 < ... < s_{n-1}` of
`sampling_timesteps(diffusion, n, timestep_spacing)` from `s_{n-1} = T - 1`
down (the respaced diffusion of `respaced`), and their last step returns
the predicted `x_0` at `s_0` (DDIM, the ODE solvers and `"consistency"`) or
the posterior mean (DDPM); `"heun"`'s churn also calls the network at the
training timesteps between them (`SamplingContext.training_diffusion`).
`inpaint.py` adds the replacement method and RePaint resampling;
`ddim.ddim_encode_chain` runs DDIM backwards (x_0 -> x_T).
`guidance.guided_model_fn` turns a conditional network into the
`model_fn(x_t, t)` of every sampler, with classifier-free guidance;
`guidance.classifier_guided_model_fn` adds a noise-aware classifier's gradient.

`registry.py` holds `REGISTRY` (a new sampler is its module and one entry)
and `build_chain`; `options.py` holds `SamplerOptions`, the one table of the
samplers' options (a new option is one field), and `DEFAULT_SAMPLING`;
`timesteps.py` the spacings of the kept timesteps.
"""

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
from ddpm_keras.samplers.ddim import ddim_coefficients
from ddpm_keras.samplers.ddim import ddim_encode_chain
from ddpm_keras.samplers.dpm_solver import dpmpp_coefficients
from ddpm_keras.samplers.guidance import classifier_guided_model_fn
from ddpm_keras.samplers.guidance import guided_model_fn
from ddpm_keras.samplers.heun import heun_schedule
from ddpm_keras.samplers.inpaint import INPAINT_SAMPLERS
from ddpm_keras.samplers.inpaint import inpaint_chain
from ddpm_keras.samplers.options import DEFAULT_SAMPLING
from ddpm_keras.samplers.options import SamplerOptions
from ddpm_keras.samplers.options import default_sampling_for
from ddpm_keras.samplers.options import option_fields
from ddpm_keras.samplers.options import sampler_options
from ddpm_keras.samplers.registry import DEFAULT_CONSISTENCY_STEPS
from ddpm_keras.samplers.registry import DEFAULT_DDIM_STEPS
from ddpm_keras.samplers.registry import DEFAULT_SOLVER_STEPS
from ddpm_keras.samplers.registry import REGISTRY
from ddpm_keras.samplers.registry import SAMPLERS
from ddpm_keras.samplers.registry import SamplerSpec
from ddpm_keras.samplers.registry import build_chain
from ddpm_keras.samplers.registry import default_num_steps
from ddpm_keras.samplers.registry import make_context
from ddpm_keras.samplers.registry import timestep_spacing_of
from ddpm_keras.samplers.timesteps import TIMESTEP_SPACINGS
from ddpm_keras.samplers.timesteps import check_num_steps
from ddpm_keras.samplers.timesteps import check_spacing
from ddpm_keras.samplers.timesteps import respaced
from ddpm_keras.samplers.timesteps import sampling_schedule
from ddpm_keras.samplers.timesteps import sampling_timesteps
from ddpm_keras.samplers.timesteps import spaced_timesteps
from ddpm_keras.samplers.unipc import unipc_coefficients

__all__ = [
    "Chain", "DEFAULT_CONSISTENCY_STEPS", "DEFAULT_DDIM_STEPS", "DEFAULT_SAMPLING", "DEFAULT_SOLVER_STEPS",
    "INPAINT_SAMPLERS", "REGISTRY", "SAMPLERS",
    "SamplerOptions", "SamplerSpec", "SamplingContext", "TIMESTEP_SPACINGS", "advance", "build_chain", "check_num_steps",
    "check_spacing", "check_thresholding", "ddim_coefficients", "ddim_encode_chain",
    "classifier_guided_model_fn", "default_num_steps", "default_sampling_for", "dpmpp_coefficients",
    "dynamic_threshold", "finish", "guided_model_fn", "heun_schedule", "inpaint_chain",
    "make_context", "option_fields", "sampler_options", "make_denoiser", "respaced", "run_chain", "sampling_schedule", "sampling_timesteps",
    "slerp", "spaced_timesteps", "start", "timestep_spacing_of", "trajectory_length", "unipc_coefficients",
]
