"""`ddpm_keras.distribute` is `ddpm_keras.utils.distribute`: this import path keeps working."""

import sys

from ddpm_keras.utils import distribute as _module

sys.modules[__name__] = _module
