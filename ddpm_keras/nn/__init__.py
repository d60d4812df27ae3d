"""The network: the UNet of the keras.io example (`build_unet`) and its layers, serializable Keras objects."""

from ddpm_keras.nn.layers import AttentionBlock
from ddpm_keras.nn.layers import TimeEmbedding
from ddpm_keras.nn.unet import build_unet
from ddpm_keras.nn.unet import network_num_classes

__all__ = ["AttentionBlock", "TimeEmbedding", "build_unet", "network_num_classes"]
