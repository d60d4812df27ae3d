"""`ddpm_keras.finite` is `ddpm_keras.training.finite`: this import path keeps working."""

import sys

from ddpm_keras.training import finite as _module

sys.modules[__name__] = _module
