"""`ddpm_keras.sampling` is `ddpm_keras.samplers`: this import path keeps working."""

import sys

from ddpm_keras import samplers as _module

sys.modules[__name__] = _module
