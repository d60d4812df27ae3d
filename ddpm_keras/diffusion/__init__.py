"""The mathematics of Gaussian diffusion, in `keras.ops` on float64 tables: no network, no training.

- `schedules`: the beta schedules (linear, cosine, sigmoid) and zero-terminal-SNR rescaling.
- `terms`: the float64 table of every per-timestep term of a beta schedule.
- `gaussian`: `GaussianDiffusion`, the forward process, its posterior and the
  prediction types (`split_prediction`, `prediction_target`), and `gather`.
- `objectives`: the loss weightings (min-SNR-gamma) per timestep.
- `likelihood`: the terms of the variational bound in bits per dimension.
- `ode`: the probability-flow ODE, its solvers and trace estimators, and
  the likelihood it gives.
- `distillation`: progressive distillation's grids, two-step target and weights.
- `consistency`: the consistency function's parameterisation and the
  consistency-distillation target.
"""

from ddpm_keras.diffusion.gaussian import PREDICTION_TYPES
from ddpm_keras.diffusion.gaussian import GaussianDiffusion
from ddpm_keras.diffusion.gaussian import check_prediction_type
from ddpm_keras.diffusion.gaussian import gather
from ddpm_keras.diffusion.terms import TERM_NAMES
from ddpm_keras.diffusion.terms import compute_terms

__all__ = [
    "PREDICTION_TYPES", "TERM_NAMES", "GaussianDiffusion", "check_prediction_type", "compute_terms", "gather",
]
