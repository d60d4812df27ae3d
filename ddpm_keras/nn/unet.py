"""The noise-prediction UNet of Ho et al. 2020, as in the keras.io DDPM example."""

import keras
from keras import layers

from ddpm_keras.nn.layers import AttentionBlock
from ddpm_keras.nn.layers import TimeEmbedding
from ddpm_keras.nn.layers import check_attention_residual
from ddpm_keras.nn.layers import kernel_init
from ddpm_keras.utils.checks import check_positive_int
from ddpm_keras.utils.checks import image_size
from ddpm_keras.utils.checks import is_int


def residual_block(x, temb, width, groups, activation_fn, dropout):
    """GroupNorm-act-conv, add the projected time embedding, GroupNorm-act-(dropout)-conv, skip."""
    if x.shape[-1] == width:
        residual = x
    else:
        residual = layers.Conv2D(width, 1, kernel_initializer=kernel_init(1.0))(x)

    t = layers.Activation(activation_fn)(temb)
    t = layers.Dense(width, kernel_initializer=kernel_init(1.0))(t)
    t = layers.Reshape((1, 1, width))(t)

    h = layers.GroupNormalization(groups=groups)(x)
    h = layers.Activation(activation_fn)(h)
    h = layers.Conv2D(width, 3, padding="same", kernel_initializer=kernel_init(1.0))(h)
    h = layers.Add()([h, t])
    h = layers.GroupNormalization(groups=groups)(h)
    h = layers.Activation(activation_fn)(h)
    if dropout:
        h = layers.Dropout(dropout)(h)
    h = layers.Conv2D(width, 3, padding="same", kernel_initializer=kernel_init(0.0))(h)
    return layers.Add()([h, residual])


def build_unet(
    img_size,
    img_channels,
    widths,
    has_attention,
    num_res_blocks=2,
    norm_groups=8,
    interpolation="nearest",
    activation_fn=keras.activations.swish,
    first_conv_channels=64,
    dropout=0.0,
    attention_residual="input",
    num_classes=None,
    inpainting=False,
):
    """Builds the noise-prediction UNet of the keras.io DDPM example.

    A sinusoidal time embedding and its MLP; at each resolution
    `num_res_blocks` residual blocks (with self-attention where
    `has_attention`) and a strided-conv downsampling; a middle block
    (residual, attention, residual); the mirrored up path with skip
    concatenations, `num_res_blocks + 1` blocks per level and nearest
    upsampling + conv; a GroupNorm-swish-conv head. Kernels use
    `VarianceScaling(fan_avg, uniform)`; the last conv of each residual
    branch, the attention projection and the head start near zero.

    The example's flowers configuration, `build_unet(64, 3, [64, 128, 256,
    512], [False, False, True, True])`, has its 63,200,387 parameters.

    Args:
        img_size: Integer or `(height, width)`, the image size. Each side
            must be divisible by `2 ** (len(widths) - 1)`.
        img_channels: Integer, the channels of the images (and of the
            predicted noise).
        widths: List of integers, the channels at each resolution, each
            divisible by `norm_groups`.
        has_attention: List of booleans, one per entry of `widths`: whether
            that resolution has self-attention.
        num_res_blocks: Integer, residual blocks per resolution on the way
            down. Defaults to `2`.
        norm_groups: Integer, the groups of every GroupNormalization.
            Defaults to `8` (the example found 8 better than 32 on flowers).
        interpolation: String, the interpolation of the upsampling.
            Defaults to `"nearest"`.
        activation_fn: The activation. Defaults to `keras.activations.swish`.
        first_conv_channels: Integer, the channels of the first conv, also
            setting the time embedding's size (4x). Defaults to `64`.
        dropout: Float in `[0, 1)`, dropout inside each residual block.
            Defaults to `0.0`.
        attention_residual: `"input"` or `"normalized"`, what each
            attention block adds its output to: its input (Ho et al.'s
            code) or its GroupNorm's output (the keras.io example, whose
            checkpoints `ddpm_keras.convert` imports). Same weights either
            way. Defaults to `"input"`.
        num_classes: `None` or a positive integer, the number of classes of
            a class-conditional network (classifier-free guidance, Ho &
            Salimans 2022). A third input `labels` (int32 `(batch,)`) is
            embedded by an `Embedding(num_classes + 1, 4 * first_conv_channels)`
            named `"class_embedding"` (initialised `N(0, 1)`, as PyTorch's
            `nn.Embedding` in guided-diffusion) and added to the time
            embedding after its MLP, `emb = time_mlp(t) + class_emb(y)`
            (Dhariwal & Nichol 2021), so every residual block sees it. The
            last label, `num_classes`, is the "null" label: the
            unconditional model. Defaults to `None`: no labels, the
            network above unchanged.
        inpainting: Boolean, an inpainting network (the Stable Diffusion
            inpainting models' input): two more inputs after the
            timesteps, `masked_image` (the images with their unknown
            pixels zeroed) and `mask` (`(batch, H, W, 1)`, 1 where a
            pixel is known), concatenated with `x_t` on channels (a layer
            named `"inpainting_inputs"`) before the first conv. Defaults
            to `False`.

    Returns:
        A functional `keras.Model` named `"unet"` with inputs
        `[images (batch, H, W, img_channels) float, timesteps (batch,) int]`
        (`[images, timesteps, masked_image, mask]` with `inpainting`,
        then `labels (batch,) int` with `num_classes`) and output the
        predicted noise `(batch, H, W, img_channels)`.

    Example:

    >>> unet = build_unet(32, 3, [32, 64, 128], [False, True, True])
    >>> noise = unet([x_t, t])
    >>> conditional = build_unet(32, 3, [32, 64, 128], [False, True, True], num_classes=10)
    >>> noise = conditional([x_t, t, labels])    # labels in [0, 10]; 10 is the null label
    >>> inpainter = build_unet(32, 3, [32, 64, 128], [False, True, True], inpainting=True)
    >>> noise = inpainter([x_t, t, images * mask, mask])    # mask (batch, 32, 32, 1), 1 = known
    """
    height, width, widths, has_attention = check_levels(
        img_size, img_channels, widths, has_attention, num_res_blocks, norm_groups, first_conv_channels
    )
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1). Received: dropout={dropout}")
    check_attention_residual("attention_residual", attention_residual)
    if num_classes is not None and (not is_int(num_classes) or num_classes < 1):
        raise ValueError(
            "num_classes must be a positive integer (a class-conditional network) or None (unconditional). "
            f"Received: num_classes={num_classes!r}"
        )

    images = keras.Input(shape=(height, width, img_channels), name="images")
    timesteps = keras.Input(shape=(), dtype="int32", name="timesteps")
    inputs = [images, timesteps]
    first = images
    if inpainting:
        masked_image = keras.Input(shape=(height, width, img_channels), name="masked_image")
        mask = keras.Input(shape=(height, width, 1), name="mask")
        inputs += [masked_image, mask]
        first = layers.Concatenate(axis=-1, name="inpainting_inputs")([images, masked_image, mask])

    x = layers.Conv2D(
        first_conv_channels, 3, padding="same", kernel_initializer=kernel_init(1.0)
    )(first)
    temb = time_mlp(timesteps, first_conv_channels * 4, activation_fn)
    if num_classes is not None:
        labels = keras.Input(shape=(), dtype="int32", name="labels")
        inputs.append(labels)
        class_emb = layers.Embedding(
            int(num_classes) + 1, first_conv_channels * 4,
            embeddings_initializer=keras.initializers.RandomNormal(stddev=1.0), name="class_embedding",
        )(labels)
        temb = layers.Add(name="add_class_embedding")([temb, class_emb])

    def block(x, level_width, attention):
        x = residual_block(x, temb, level_width, norm_groups, activation_fn, dropout)
        if attention:
            x = AttentionBlock(level_width, groups=norm_groups, residual=attention_residual)(x)
        return x

    skips = [x]
    for level, (level_width, attention) in enumerate(zip(widths, has_attention)):
        for _ in range(num_res_blocks):
            x = block(x, level_width, attention)
            skips.append(x)
        if level != len(widths) - 1:
            x = layers.Conv2D(
                level_width, 3, strides=2, padding="same", kernel_initializer=kernel_init(1.0)
            )(x)
            skips.append(x)

    x = block(x, widths[-1], True)
    x = residual_block(x, temb, widths[-1], norm_groups, activation_fn, dropout)

    for level in reversed(range(len(widths))):
        for _ in range(num_res_blocks + 1):
            x = layers.Concatenate(axis=-1)([x, skips.pop()])
            x = block(x, widths[level], has_attention[level])
        if level != 0:
            x = layers.UpSampling2D(size=2, interpolation=interpolation)(x)
            x = layers.Conv2D(
                widths[level], 3, padding="same", kernel_initializer=kernel_init(1.0)
            )(x)

    x = layers.GroupNormalization(groups=norm_groups)(x)
    x = layers.Activation(activation_fn)(x)
    x = layers.Conv2D(
        img_channels, 3, padding="same", kernel_initializer=kernel_init(0.0), dtype="float32"
    )(x)
    return keras.Model(inputs, x, name="unet")



def time_mlp(timesteps, units, activation_fn):
    """The timestep embedding every residual block reads: sinusoidal, then Dense-activation-Dense of `units`."""
    temb = TimeEmbedding(units)(timesteps)
    temb = layers.Dense(units, activation=activation_fn, kernel_initializer=kernel_init(1.0))(temb)
    return layers.Dense(units, kernel_initializer=kernel_init(1.0))(temb)


def check_levels(img_size, img_channels, widths, has_attention, num_res_blocks, norm_groups, first_conv_channels):
    """The checked `(height, width, widths, has_attention)` of a UNet-shaped network, or a one-line ValueError.

    Shared by `build_unet` and `ddpm_keras.nn.classifier.build_classifier`.
    """
    height, width = image_size(img_size)
    check_positive_int("img_channels", img_channels)
    check_positive_int("num_res_blocks", num_res_blocks)
    check_positive_int("norm_groups", norm_groups)
    check_positive_int("first_conv_channels", first_conv_channels)
    widths = list(widths)
    has_attention = [bool(a) for a in has_attention]
    if not widths or len(widths) != len(has_attention):
        raise ValueError(
            "widths and has_attention must be non-empty lists of the same "
            f"length. Received: widths={widths}, has_attention={has_attention}"
        )
    for name, value in [("first_conv_channels", first_conv_channels)] + [
        ("widths", w) for w in widths
    ]:
        check_positive_int(name, value)
        if value % norm_groups:
            raise ValueError(
                f"Every width must be divisible by norm_groups={norm_groups} "
                f"for GroupNormalization. Received: {name}={value if name != 'widths' else widths}"
            )
    factor = 2 ** (len(widths) - 1)
    if height % factor or width % factor:
        raise ValueError(
            f"img_size must be divisible by 2 ** (len(widths) - 1) = {factor} "
            f"to downsample {len(widths) - 1} times. Received: img_size={img_size}, "
            f"widths={widths}. Use a size that is a multiple of {factor}, or fewer widths."
        )
    return height, width, widths, has_attention

def network_num_classes(network):
    """The number of classes of a network: `None` for an unconditional one.

    A network taking `[images, timesteps]` is unconditional; one taking
    `[images, timesteps, labels]` is class-conditional, with the number of
    classes read from its `"class_embedding"` layer (`build_unet(...,
    num_classes=N)`: `N + 1` rows, the last one the null label `N`).

    Args:
        network: A functional `keras.Model`, such as `build_unet(...)`.

    Returns:
        `None`, or the integer `num_classes`.

    Example:

    >>> network_num_classes(build_unet(16, 3, [8, 16], [False, True], num_classes=10))
    10
    """
    inputs = getattr(network, "inputs", None) or []
    if network_is_inpainting(network):
        inputs = inputs[:2] + inputs[4:]  # the masked image and the mask are not the labels
    if len(inputs) == 2:
        return None
    embedding = None
    if len(inputs) == 3:
        try:
            embedding = network.get_layer("class_embedding")
        except ValueError:
            pass
    if not isinstance(embedding, layers.Embedding):
        found = "no 'class_embedding' Embedding layer" if len(inputs) == 3 else f"{len(inputs)} inputs"
        raise ValueError(
            "network must take [images, timesteps], or [images, timesteps, labels] with an Embedding layer "
            "named 'class_embedding' of num_classes + 1 rows (build_unet(..., num_classes=N)). "
            f"Received: a network with {found}"
        )
    return int(embedding.input_dim) - 1


# The inputs an inpainting network takes after `[images, timesteps]` (`build_unet(..., inpainting=True)`).
INPAINTING_INPUTS = ("masked_image", "mask")


def network_is_inpainting(network):
    """Whether `network` is an inpainting network: inputs `[images, timesteps, masked_image, mask, ...]`.

    Args:
        network: A functional `keras.Model`, such as `build_unet(...)`.

    Returns:
        `True` when its third and fourth inputs are named `"masked_image"`
        and `"mask"` (`build_unet(..., inpainting=True)`,
        `inpainting_network`), else `False`.

    Example:

    >>> network_is_inpainting(build_unet(16, 3, [8, 16], [False, True], inpainting=True))
    True
    """
    return tuple(input_names(network)[2:4]) == INPAINTING_INPUTS


def input_names(network):
    """The names of a functional network's inputs (`[]` for a network without inputs)."""
    return [getattr(tensor, "name", "").split(":")[0] for tensor in getattr(network, "inputs", None) or []]
