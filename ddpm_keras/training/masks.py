"""The random masks an inpainting model trains on: boxes, halves, free-form strokes and the whole image.

Each training image of an inpainting model (`build_unet(...,
inpainting=True)`) gets one mask, drawn in the training step from the
model's seed (`random_masks`), of a kind drawn with the probabilities
`mask_rates` (a `DiffusionModel` option):

- `"box"`: a rectangle to fill, each side a uniform fraction in
  `[0.25, 0.75]` of the image's, at a uniform position;
- `"half"`: the top, bottom, left or right half;
- `"stroke"`: a free-form brush stroke, a polyline of
  `STROKE_SEGMENTS` segments of random direction and length
  (`[0.15, 0.4]` of the image size each) with a round brush of radius
  `[0.04, 0.1]` of the image size (LaMa's and Stable Diffusion's
  inpainting training masks, simplified);
- `"all"`: the whole image to fill (no known pixel), so that the model
  also generates freely (`generate_images` feeds it this mask).

The mask convention is `DiffusionModel.inpaint`'s: 1 where a pixel is
known, 0 where it is to be filled. Where the loss counts is
`inpainting_loss` (another option): `"all"`, every pixel (as the Stable
Diffusion inpainting models were trained), or `"hole"`, the pixels to
fill only (`hole_weights`, as Palette trains, Saharia et al. 2022).
Everything is `keras.ops` and `keras.random` with a fixed number of
draws per batch, so it runs inside the compiled training steps of every
backend and under a strategy (where the step's seed carries the replica
id).
"""

import math
import numbers

import keras
import numpy as np
from keras import ops

MASK_KINDS = ("box", "half", "stroke", "all")
# Boxes and strokes most often, halves (outpainting) sometimes, and one image in ten generated freely.
DEFAULT_MASK_RATES = {"box": 0.35, "half": 0.2, "stroke": 0.35, "all": 0.1}
STROKE_SEGMENTS = 4
# Where an inpainting model's loss counts. At sampling the network's output on the known pixels is replaced by the
# exact prediction (`inference.masked.known_pixels_projected`), so "hole" spends all of the training on the pixels
# the model fills; "all", the default, is Stable Diffusion's (and the loss before the option existed).
INPAINTING_LOSSES = ("all", "hole")


def check_mask_rates(mask_rates):
    """`mask_rates` as a dict of every kind of `MASK_KINDS` (in that order) to a float, or a one-line ValueError.

    Args:
        mask_rates: A dict from kinds of `MASK_KINDS` to probabilities
            in `[0, 1]` summing to 1; kinds left out have probability 0.

    Returns:
        A dict `{kind: float}` over `MASK_KINDS`.

    Example:

    >>> check_mask_rates({"box": 0.9, "all": 0.1})
    {'box': 0.9, 'half': 0.0, 'stroke': 0.0, 'all': 0.1}
    """
    if not isinstance(mask_rates, dict) or not mask_rates:
        raise ValueError(
            f"mask_rates must be a dict from mask kinds {MASK_KINDS} to probabilities summing to 1, e.g. "
            f"{DEFAULT_MASK_RATES}. Received: mask_rates={mask_rates!r}"
        )
    unknown = [kind for kind in mask_rates if kind not in MASK_KINDS]
    if unknown:
        raise ValueError(
            f"Unknown mask kind {unknown[0]!r}: expected one of {MASK_KINDS}. Received: mask_rates={mask_rates!r}"
        )
    for kind, rate in mask_rates.items():
        if isinstance(rate, bool) or not isinstance(rate, numbers.Real) or not 0.0 <= rate <= 1.0:
            raise ValueError(f"Each mask rate must be a number in [0, 1]. Received: {kind}={rate!r}")
    total = float(sum(mask_rates.values()))
    if abs(total - 1.0) > 1e-6:
        raise ValueError(f"mask_rates must sum to 1. Received: {mask_rates!r}, summing to {total:.6g}")
    return {kind: float(mask_rates.get(kind, 0.0)) for kind in MASK_KINDS}


def check_inpainting_loss(inpainting_loss):
    """`inpainting_loss` if it is one of `INPAINTING_LOSSES`, or a one-line ValueError."""
    if inpainting_loss not in INPAINTING_LOSSES:
        raise ValueError(
            f"inpainting_loss must be one of {INPAINTING_LOSSES}: 'all' (the loss on every pixel) or 'hole' "
            f"(on the pixels to fill). Received: inpainting_loss={inpainting_loss!r}"
        )
    return inpainting_loss


def hole_weights(masks, weights=None):
    """The loss weight of each pixel under `inpainting_loss="hole"`: `(batch, H, W, 1)`, 0 where known.

    The pixel's weight is `1 - mask` times its example's `weights` (the
    timestep weights, `(batch,)`, or `None`: 1). The denoising loss is
    then the mean over every pixel and channel of the batch of weight
    times squared error (`training.objective.compute_loss`): the squared
    errors on the pixels to fill, summed, over the number of pixels (the
    loss of Palette's implementation), so that an image with a larger
    hole weighs more and an image generated freely (mask kind `"all"`)
    counts as in an unconditional model.

    Example:

    >>> hole_weights(ops.convert_to_tensor([[[[1.0], [0.0]]]]), ops.convert_to_tensor([2.0]))  # [[[[0.], [2.]]]]
    """
    hole = 1.0 - ops.cast(masks, "float32")
    if weights is None:
        return hole
    return hole * ops.reshape(ops.cast(weights, "float32"), (-1, 1, 1, 1))


def random_masks(batch, height, width, mask_rates, seed):
    """One random mask per image, 1 where the pixel is known: float32 `(batch, height, width, 1)`.

    The kind of each mask is drawn with the probabilities `mask_rates`,
    then its shape (see the module docstring). Every kind's shape is drawn
    for every image (a fixed number of draws, so that a compiled step has
    one structure), and the kind picks one.

    Args:
        batch: Integer or scalar tensor, the number of masks.
        height, width: Integers, the image size.
        mask_rates: A dict of kinds to probabilities (`check_mask_rates`).
        seed: A `keras.random.SeedGenerator` (the model's), or what
            `keras.random` takes as a seed.

    Returns:
        A float32 tensor `(batch, height, width, 1)` of 0 and 1.

    Example:

    >>> masks = random_masks(8, 32, 32, DEFAULT_MASK_RATES, keras.random.SeedGenerator(0))
    """
    rates = check_mask_rates(mask_rates)
    if isinstance(seed, numbers.Integral):
        seed = keras.random.SeedGenerator(int(seed))  # an integer would give every draw the same numbers

    def uniform(*shape, low=0.0, high=1.0):
        return keras.random.uniform((batch,) + shape, minval=low, maxval=high, seed=seed)

    ys = (ops.arange(height, dtype="float32") + 0.5)[None, :, None]
    xs = (ops.arange(width, dtype="float32") + 0.5)[None, None, :]
    size = float(min(height, width))

    # Box: sides in [0.25, 0.75] of the image's, anywhere inside it.
    box_height, box_width = uniform(low=0.25, high=0.75) * height, uniform(low=0.25, high=0.75) * width
    top, left = uniform() * (height - box_height), uniform() * (width - box_width)
    top, left, box_height, box_width = (ops.reshape(v, (-1, 1, 1)) for v in (top, left, box_height, box_width))
    box = (ys >= top) & (ys < top + box_height) & (xs >= left) & (xs < left + box_width)

    # Half: 0 top, 1 bottom, 2 left, 3 right.
    side = ops.reshape(ops.floor(uniform() * 4.0), (-1, 1, 1))
    upper = ops.broadcast_to(ys < height / 2.0, (1, height, width))
    lefter = ops.broadcast_to(xs < width / 2.0, (1, height, width))
    half = ops.where(
        side < 2.0, ops.where(side < 1.0, upper, ~upper), ops.where(side < 3.0, lefter, ~lefter)
    )

    # Stroke: a polyline from a uniform start, each segment a random direction and length, round brush.
    start_y, start_x = uniform() * height, uniform() * width
    angles = uniform(STROKE_SEGMENTS, high=2.0 * math.pi)
    lengths = uniform(STROKE_SEGMENTS, low=0.15, high=0.4) * size
    radius = ops.reshape(ops.maximum(uniform(low=0.04, high=0.1) * size, 0.75), (-1, 1, 1))
    vertices_y = ops.clip(start_y[:, None] + ops.cumsum(lengths * ops.sin(angles), axis=1), 0.0, height)
    vertices_x = ops.clip(start_x[:, None] + ops.cumsum(lengths * ops.cos(angles), axis=1), 0.0, width)
    vertices_y = ops.concatenate([start_y[:, None], vertices_y], axis=1)
    vertices_x = ops.concatenate([start_x[:, None], vertices_x], axis=1)
    stroke = None
    for k in range(STROKE_SEGMENTS):
        near = _distance_to_segment(
            ys, xs, vertices_y[:, k], vertices_x[:, k], vertices_y[:, k + 1], vertices_x[:, k + 1]
        ) <= radius
        stroke = near if stroke is None else stroke | near

    # The kind of each mask: the first k with u < rate_0 + ... + rate_k.
    u = ops.reshape(uniform(), (-1, 1, 1))
    bounds = np.cumsum([rates[kind] for kind in MASK_KINDS])
    unknown = ops.ones_like(box)  # "all"
    for kind, bound, shape in reversed(list(zip(MASK_KINDS[:-1], bounds[:-1], (box, half, stroke)))):
        unknown = ops.where(u < float(bound), shape, unknown)
    return ops.cast(~unknown, "float32")[..., None]


def _distance_to_segment(ys, xs, y0, x0, y1, x1):
    """The distance `(batch, H, W)` from each pixel centre to the segment `(y0, x0)-(y1, x1)` of each image."""
    y0, x0, y1, x1 = (ops.reshape(v, (-1, 1, 1)) for v in (y0, x0, y1, x1))
    dy, dx = y1 - y0, x1 - x0
    along = ((ys - y0) * dy + (xs - x0) * dx) / ops.maximum(dy * dy + dx * dx, 1e-6)
    along = ops.clip(along, 0.0, 1.0)
    return ops.sqrt(ops.square(ys - y0 - along * dy) + ops.square(xs - x0 - along * dx))


def masked_images(images, masks):
    """The network's `masked_image` input: `images` where known (`masks == 1`), 0 where to fill."""
    return images * ops.cast(masks, images.dtype)
