"""The keras.io DDPM example's UNet in Keras 2 (`tf_keras`): the oracle of the checkpoint converter.

Written for the tests from the example's published description (keras.io,
"Denoising Diffusion Probabilistic Model", A. K. Nain, 2022): the same layers,
created in the same order and called the same way, so that `save_weights`
writes the checkpoint the example writes. In particular its attention block
adds the *normalised* input back, its activations are plain functions (op
layers in Keras 2), it downsamples where `widths[i] != widths[-1]` and its
head has 3 channels.
"""

import math

import numpy as np
import tensorflow as tf
import tf_keras as keras
from tf_keras import layers


def kernel_init(scale):
    return keras.initializers.VarianceScaling(max(scale, 1e-10), mode="fan_avg", distribution="uniform")


class AttentionBlock(layers.Layer):
    """GroupNorm, single-head attention, projection; the residual is the normalised input."""

    def __init__(self, units, groups=8, **kwargs):
        super().__init__(**kwargs)
        self.units = units
        self.groups = groups
        self.norm = layers.GroupNormalization(groups=groups)
        self.query = layers.Dense(units, kernel_initializer=kernel_init(1.0))
        self.key = layers.Dense(units, kernel_initializer=kernel_init(1.0))
        self.value = layers.Dense(units, kernel_initializer=kernel_init(1.0))
        self.proj = layers.Dense(units, kernel_initializer=kernel_init(0.0))

    def call(self, inputs):
        batch, height, width = tf.shape(inputs)[0], tf.shape(inputs)[1], tf.shape(inputs)[2]
        inputs = self.norm(inputs)
        q, k, v = self.query(inputs), self.key(inputs), self.value(inputs)
        scores = tf.einsum("bhwc,bHWc->bhwHW", q, k) * tf.cast(self.units, tf.float32) ** -0.5
        scores = tf.reshape(scores, [batch, height, width, height * width])
        scores = tf.reshape(tf.nn.softmax(scores, -1), [batch, height, width, height, width])
        return inputs + self.proj(tf.einsum("bhwHW,bHWc->bhwc", scores, v))


class TimeEmbedding(layers.Layer):
    def __init__(self, dim, **kwargs):
        super().__init__(**kwargs)
        half_dim = dim // 2
        self.frequencies = tf.exp(tf.range(half_dim, dtype=tf.float32) * -(math.log(10000) / (half_dim - 1)))

    def call(self, inputs):
        angles = tf.cast(inputs, tf.float32)[:, None] * self.frequencies[None, :]
        return tf.concat([tf.sin(angles), tf.cos(angles)], axis=-1)


def residual_block(x, temb, width, groups, activation_fn):
    residual = x if x.shape[3] == width else layers.Conv2D(width, 1, kernel_initializer=kernel_init(1.0))(x)
    t = layers.Dense(width, kernel_initializer=kernel_init(1.0))(activation_fn(temb))[:, None, None, :]
    x = activation_fn(layers.GroupNormalization(groups=groups)(x))
    x = layers.Conv2D(width, 3, padding="same", kernel_initializer=kernel_init(1.0))(x)
    x = layers.Add()([x, t])
    x = activation_fn(layers.GroupNormalization(groups=groups)(x))
    x = layers.Conv2D(width, 3, padding="same", kernel_initializer=kernel_init(0.0))(x)
    return layers.Add()([x, residual])


def build_model(img_size, img_channels, widths, has_attention, num_res_blocks=2, norm_groups=8,
                interpolation="nearest", first_conv_channels=64):
    """The example's `build_model` (its global `first_conv_channels` made an argument)."""
    activation_fn = keras.activations.swish
    image_input = layers.Input(shape=(img_size, img_size, img_channels), name="image_input")
    time_input = keras.Input(shape=(), dtype=tf.int64, name="time_input")
    x = layers.Conv2D(first_conv_channels, 3, padding="same", kernel_initializer=kernel_init(1.0))(image_input)
    temb = TimeEmbedding(first_conv_channels * 4)(time_input)
    temb = layers.Dense(first_conv_channels * 4, activation=activation_fn, kernel_initializer=kernel_init(1.0))(temb)
    temb = layers.Dense(first_conv_channels * 4, kernel_initializer=kernel_init(1.0))(temb)

    skips = [x]
    for i in range(len(widths)):
        for _ in range(num_res_blocks):
            x = residual_block(x, temb, widths[i], norm_groups, activation_fn)
            if has_attention[i]:
                x = AttentionBlock(widths[i], groups=norm_groups)(x)
            skips.append(x)
        if widths[i] != widths[-1]:
            x = layers.Conv2D(widths[i], 3, strides=2, padding="same", kernel_initializer=kernel_init(1.0))(x)
            skips.append(x)

    x = residual_block(x, temb, widths[-1], norm_groups, activation_fn)
    x = AttentionBlock(widths[-1], groups=norm_groups)(x)
    x = residual_block(x, temb, widths[-1], norm_groups, activation_fn)

    for i in reversed(range(len(widths))):
        for _ in range(num_res_blocks + 1):
            x = layers.Concatenate(axis=-1)([x, skips.pop()])
            x = residual_block(x, temb, widths[i], norm_groups, activation_fn)
            if has_attention[i]:
                x = AttentionBlock(widths[i], groups=norm_groups)(x)
        if i != 0:
            x = layers.UpSampling2D(size=2, interpolation=interpolation)(x)
            x = layers.Conv2D(widths[i], 3, padding="same", kernel_initializer=kernel_init(1.0))(x)

    x = activation_fn(layers.GroupNormalization(groups=norm_groups)(x))
    x = layers.Conv2D(3, 3, padding="same", kernel_initializer=kernel_init(0.0))(x)
    return keras.Model([image_input, time_input], x, name="unet")


class DiffusionModel(keras.Model):
    """The example's whole model as a checkpoint sees it: `network` and `ema_network` attributes."""

    def __init__(self, network, ema_network):
        super().__init__()
        self.network = network
        self.ema_network = ema_network

    def call(self, inputs):
        return self.ema_network(inputs)


def randomize(model, seed, scale=0.2):
    """Sets every weight to `normal * scale` (GroupNorm's gamma to 1 + that): no layer left at its ~0 start."""
    rng = np.random.default_rng(seed)
    values = []
    for weight in model.weights:
        value = rng.standard_normal(weight.shape).astype("float32") * scale
        values.append(value + 1.0 if "gamma" in weight.name else value)
    model.set_weights(values)
