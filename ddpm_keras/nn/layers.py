"""Custom layers of the UNet: the sinusoidal time embedding and self-attention.

Both are written with `keras.ops` only and registered for serialization, so
networks that use them save to and load from `.keras` files on any backend.
"""

import math

import keras
from keras import layers
from keras import ops

PACKAGE = "ddpm_keras"


def kernel_init(scale):
    """The example's initializer: `VarianceScaling(scale, "fan_avg", "uniform")`.

    A scale of 0 (used on the last layer of each residual branch, the
    attention projection and the head, as in Ho et al.) becomes `1e-10`, so
    those layers start near zero and each block starts near the identity.
    """
    return keras.initializers.VarianceScaling(
        max(scale, 1e-10), mode="fan_avg", distribution="uniform"
    )


ATTENTION_RESIDUALS = ("input", "normalized")


def check_attention_residual(name, value):
    """Raises a one-line `ValueError` unless `value` is one of `ATTENTION_RESIDUALS`."""
    if value not in ATTENTION_RESIDUALS:
        raise ValueError(
            f"{name} must be one of {ATTENTION_RESIDUALS}: 'input' adds the attention to the block's input "
            f"(Ho et al.), 'normalized' to its GroupNorm output (the keras.io example). Received: {name}={value!r}"
        )


@keras.saving.register_keras_serializable(package=PACKAGE)
class TimeEmbedding(layers.Layer):
    """Sinusoidal embedding of integer timesteps (Vaswani et al. 2017).

    Args:
        dim: Integer, the size of the embedding; even and at least 4.

    Call arguments:
        inputs: Integer or float tensor of shape `(batch,)`, the timesteps.

    Returns:
        Float tensor `(batch, dim)`: `[sin(t * f_i), cos(t * f_i)]` with
        frequencies `f_i = 10000 ** (-i / (dim / 2 - 1))`.
    """

    def __init__(self, dim, **kwargs):
        super().__init__(**kwargs)
        if not isinstance(dim, int) or dim < 4 or dim % 2:
            raise ValueError(
                f"dim must be an even integer >= 4. Received: dim={dim!r}"
            )
        self.dim = dim

    def call(self, inputs):
        half_dim = self.dim // 2
        exponent = -math.log(10000.0) / (half_dim - 1)
        frequencies = ops.exp(ops.arange(half_dim, dtype="float32") * exponent)
        angles = ops.cast(inputs, "float32")[:, None] * frequencies[None, :]
        emb = ops.concatenate([ops.sin(angles), ops.cos(angles)], axis=-1)
        return ops.cast(emb, self.compute_dtype)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.dim)

    def get_config(self):
        config = super().get_config()
        config.update({"dim": self.dim})
        return config


@keras.saving.register_keras_serializable(package=PACKAGE)
class AttentionBlock(layers.Layer):
    """Single-head self-attention over the pixels of a feature map.

    `x + proj(attention(norm(x)))` with GroupNorm, query/key/value and an
    output projection initialised near zero, as in Ho et al. 2020. The
    keras.io example instead adds the *normalised* input back,
    `norm(x) + proj(attention(norm(x)))`: `residual="normalized"` computes
    that, for the weights of its checkpoints (`ddpm_keras.convert`). Both
    have the same weights. The softmax runs in float32 under mixed precision.

    Args:
        units: Integer, the number of channels of the input and output.
        groups: Integer, the number of groups of the GroupNormalization.
            Defaults to `8`.
        residual: `"input"` (the block's input, as in the paper's reference
            code) or `"normalized"` (the GroupNorm's output, as in the
            keras.io example): what the attention's projection is added to.
            Defaults to `"input"`.

    Call arguments:
        inputs: Tensor `(batch, height, width, units)`.

    Example:

    >>> block = AttentionBlock(64, groups=8)
    >>> y = block(keras.random.normal((2, 16, 16, 64)))  # (2, 16, 16, 64)
    """

    def __init__(self, units, groups=8, residual="input", **kwargs):
        super().__init__(**kwargs)
        if units % groups:
            raise ValueError(
                "units must be divisible by groups. "
                f"Received: units={units}, groups={groups}"
            )
        check_attention_residual("residual", residual)
        self.units = units
        self.groups = groups
        self.residual = residual
        self.norm = layers.GroupNormalization(groups=groups, dtype=self.dtype_policy)
        self.query = layers.Dense(units, kernel_initializer=kernel_init(1.0), dtype=self.dtype_policy)
        self.key = layers.Dense(units, kernel_initializer=kernel_init(1.0), dtype=self.dtype_policy)
        self.value = layers.Dense(units, kernel_initializer=kernel_init(1.0), dtype=self.dtype_policy)
        self.proj = layers.Dense(units, kernel_initializer=kernel_init(0.0), dtype=self.dtype_policy)

    def build(self, input_shape):
        self.norm.build(input_shape)
        for dense in (self.query, self.key, self.value, self.proj):
            dense.build(input_shape)

    def call(self, inputs):
        _, height, width, channels = inputs.shape
        x = self.norm(inputs)
        q = ops.reshape(self.query(x), (-1, height * width, channels))
        k = ops.reshape(self.key(x), (-1, height * width, channels))
        v = ops.reshape(self.value(x), (-1, height * width, channels))
        scores = ops.einsum("bic,bjc->bij", q, k) * (float(self.units) ** -0.5)
        weights = ops.cast(ops.softmax(ops.cast(scores, "float32"), axis=-1), v.dtype)
        attended = ops.einsum("bij,bjc->bic", weights, v)
        attended = ops.reshape(attended, (-1, height, width, channels))
        return (x if self.residual == "normalized" else inputs) + self.proj(attended)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update({"units": self.units, "groups": self.groups, "residual": self.residual})
        return config
