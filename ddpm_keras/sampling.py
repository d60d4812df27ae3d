"""The samplers, under their former module name: see `ddpm_keras.samplers`."""

from ddpm_keras.samplers import *  # noqa: F401,F403
from ddpm_keras.samplers import __all__  # noqa: F401
