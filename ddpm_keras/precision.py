"""`ddpm_keras.precision` is `ddpm_keras.inference.precision`: this import path keeps working."""

import sys

from ddpm_keras.inference import precision as _module

sys.modules[__name__] = _module
