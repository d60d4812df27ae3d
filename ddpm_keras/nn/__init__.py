"""The networks: the UNet of the keras.io example (`build_unet`), its encoder as a noise-aware classifier
(`build_classifier`) and their layers, serializable Keras objects."""

from ddpm_keras.nn.layers import AttentionBlock
from ddpm_keras.nn.classifier import build_classifier
from ddpm_keras.nn.layers import TimeEmbedding
from ddpm_keras.nn.unet import build_unet
from ddpm_keras.nn.unet import network_num_classes

__all__ = ["AttentionBlock", "TimeEmbedding", "build_classifier", "build_unet", "network_num_classes"]
