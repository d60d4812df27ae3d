"""The noise-aware classifier of classifier guidance: the UNet's downsampling half, pooled, and a dense head.

Dhariwal & Nichol 2021 (guided-diffusion's `EncoderUNetModel`) classify a
noisy image `x_t` at its timestep `t` with the encoder of the diffusion
UNet: the same residual blocks fed by the timestep embedding, the same
attention at the chosen resolutions, then normalisation, pooling and a
linear layer. `ddpm_keras.classifier.NoisyClassifier` trains it; the
samplers follow the gradient of its log-probability
(`ddpm_keras.samplers.classifier_guided_model_fn`).
"""

import keras
from keras import layers

from ddpm_keras.nn.layers import AttentionBlock
from ddpm_keras.nn.layers import check_attention_residual
from ddpm_keras.nn.layers import kernel_init
from ddpm_keras.nn.unet import check_levels
from ddpm_keras.nn.unet import residual_block
from ddpm_keras.nn.unet import time_mlp
from ddpm_keras.utils.checks import check_positive_int


def build_classifier(
    img_size,
    img_channels,
    num_classes,
    widths,
    has_attention,
    num_res_blocks=2,
    norm_groups=8,
    first_conv_channels=None,
    activation_fn=keras.activations.swish,
    dropout=0.0,
    attention_residual="input",
):
    """Builds a classifier of noisy images `[x_t, t] -> logits`, the encoder of `build_unet`.

    A first conv; at each resolution `num_res_blocks` residual blocks fed
    by the timestep embedding (with self-attention where `has_attention`)
    and a strided-conv downsampling; a middle block (residual, attention,
    residual); then GroupNorm, the activation, global average pooling and
    a dense layer to `num_classes` logits (guided-diffusion's
    `pool="adaptive"` head).

    Args:
        img_size: Integer or `(height, width)`. Each side must be divisible
            by `2 ** (len(widths) - 1)`.
        img_channels: Integer, the channels of the images.
        num_classes: Integer >= 2, the classes.
        widths: List of integers, the channels at each resolution, each
            divisible by `norm_groups`.
        has_attention: List of booleans, one per entry of `widths`.
        num_res_blocks: Integer, residual blocks per resolution. Defaults
            to `2`.
        norm_groups: Integer, the groups of every GroupNormalization.
            Defaults to `8`.
        first_conv_channels: Integer or `None`, the channels of the first
            conv (the time embedding has 4x). Defaults to `None`:
            `widths[0]`.
        activation_fn: The activation. Defaults to `keras.activations.swish`.
        dropout: Float in `[0, 1)`, dropout inside each residual block.
            Defaults to `0.0`.
        attention_residual: `"input"` or `"normalized"`, as in `build_unet`.
            Defaults to `"input"`.

    Returns:
        A functional `keras.Model` named `"classifier"`, inputs
        `[images (batch, H, W, img_channels) float, timesteps (batch,) int]`,
        output the logits `(batch, num_classes)` in float32.

    Example:

    >>> classifier = build_classifier(32, 3, 10, [32, 64, 128], [False, True, True])
    >>> logits = classifier([x_t, t])
    """
    first_conv_channels = widths[0] if first_conv_channels is None and len(widths) else first_conv_channels
    height, width, widths, has_attention = check_levels(
        img_size, img_channels, widths, has_attention, num_res_blocks, norm_groups, first_conv_channels
    )
    check_positive_int("num_classes", num_classes)
    if num_classes < 2:
        raise ValueError(f"A classifier needs num_classes >= 2. Received: num_classes={num_classes}")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1). Received: dropout={dropout}")
    check_attention_residual("attention_residual", attention_residual)

    images = keras.Input(shape=(height, width, img_channels), name="images")
    timesteps = keras.Input(shape=(), dtype="int32", name="timesteps")
    x = layers.Conv2D(first_conv_channels, 3, padding="same", kernel_initializer=kernel_init(1.0))(images)
    temb = time_mlp(timesteps, first_conv_channels * 4, activation_fn)

    def block(x, level_width, attention):
        x = residual_block(x, temb, level_width, norm_groups, activation_fn, dropout)
        if attention:
            x = AttentionBlock(level_width, groups=norm_groups, residual=attention_residual)(x)
        return x

    for level, (level_width, attention) in enumerate(zip(widths, has_attention)):
        for _ in range(num_res_blocks):
            x = block(x, level_width, attention)
        if level != len(widths) - 1:
            x = layers.Conv2D(level_width, 3, strides=2, padding="same", kernel_initializer=kernel_init(1.0))(x)
    x = block(x, widths[-1], True)
    x = residual_block(x, temb, widths[-1], norm_groups, activation_fn, dropout)

    x = layers.GroupNormalization(groups=norm_groups)(x)
    x = layers.Activation(activation_fn)(x)
    x = layers.GlobalAveragePooling2D()(x)
    logits = layers.Dense(int(num_classes), kernel_initializer=kernel_init(1.0), dtype="float32", name="logits")(x)
    return keras.Model([images, timesteps], logits, name="classifier")


def encoder_config(unet, width=1.0):
    """The `build_classifier` arguments of a UNet config's encoder at `width` times its widths.

    One residual block per level; each width is at least 4 and the groups
    of GroupNormalization divide the narrowest. On the synthetic flowers a
    quarter of the tiny UNet's widths guides as well as the full encoder at
    less than half its cost per step (`bench/classifier_guidance.py`).

    Args:
        unet: A dict of `build_unet` arguments (a preset's `"unet"`).
        width: Float > 0, the fraction of the UNet's widths. Defaults to
            `1.0`.

    Returns:
        A dict of `widths`, `has_attention`, `num_res_blocks`,
        `norm_groups` and `first_conv_channels`.

    Example:

    >>> build_classifier(32, 3, 10, **encoder_config(get_preset("tiny")["unet"], width=0.25))
    """
    if not width > 0:
        raise ValueError(f"width must be a fraction > 0 of the UNet's widths. Received: width={width!r}")
    widths = [max(4, int(w * width)) for w in unet["widths"]]
    most = min(unet.get("norm_groups", 8), min(widths))
    groups = max(g for g in range(1, most + 1) if all(w % g == 0 for w in widths))
    return {
        "widths": widths, "has_attention": list(unet["has_attention"]), "num_res_blocks": 1, "norm_groups": groups,
        "first_conv_channels": widths[0],
    }

