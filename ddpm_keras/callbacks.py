"""`ddpm_keras.callbacks` is `ddpm_keras.training.callbacks`: this import path keeps working."""

import sys

from ddpm_keras.training import callbacks as _module

sys.modules[__name__] = _module
