"""`ddpm_keras.layers` is `ddpm_keras.nn.layers`: this import path keeps working."""

import sys

from ddpm_keras.nn import layers as _module

sys.modules[__name__] = _module
