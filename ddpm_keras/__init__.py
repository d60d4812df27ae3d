"""ddpm_keras: denoising diffusion probabilistic models in Keras 3."""

from ddpm_keras import convert as _convert  # noqa: F401 - registers the keras_io_flowers64 preset
from ddpm_keras.classifier import NoisyClassifier
from ddpm_keras.diffusion import GaussianDiffusion
from ddpm_keras.distillation import ConsistencyDistillation
from ddpm_keras.distillation import ProgressiveDistillation
from ddpm_keras.model import DiffusionModel
from ddpm_keras.nn.classifier import build_classifier
from ddpm_keras.nn.layers import AttentionBlock
from ddpm_keras.nn.layers import TimeEmbedding
from ddpm_keras.nn.unet import build_unet
from ddpm_keras.samplers import SamplerOptions

__version__ = "0.1.0"

__all__ = [
    "AttentionBlock",
    "ConsistencyDistillation",
    "DiffusionModel",
    "GaussianDiffusion",
    "NoisyClassifier",
    "ProgressiveDistillation",
    "SamplerOptions",
    "TimeEmbedding",
    "build_classifier",
    "build_unet",
]
