"""Degraded images: what a sample-quality metric must tell apart from the real thing.

A feature extractor for FID is only trustworthy if it sees the faults that
generated images have. These functions make such faults on purpose, from
real images or from the synthetic flowers' drawing parameters, so that an
extractor can be trained to see them and tested to separate them:

- `"noise"`: white Gaussian noise of standard deviation `severity`.
- `"grain"`: Gaussian noise smoothed over about a pixel (blotchy, like an
  under-trained sampler's backgrounds), of standard deviation `severity`.
- `"blur"`: a Gaussian blur of standard deviation `severity` pixels.
- `"colour"`: each image's channels scaled and shifted at random
  (`gain = 1 + severity * N(0, 1)`, `offset = severity * N(0, 1)`), clipped.
- `wrong_petal_flowers`: synthetic flowers drawn with petal counts the data
  never has (2, 3, 10, 11 or 12 instead of 4 to 9).

Images are NumPy arrays `(N, H, W, 3)` in `[-1, 1]`; the same seed gives
the same degradation.

Example:

>>> images = synthetic_flowers(8, img_size=32)
>>> noisy = degrade(images, "noise", 0.1, seed=0)
"""

import numpy as np

from ddpm_keras.data.synthetic import draw_flowers
from ddpm_keras.data.synthetic import synthetic_flowers

DEGRADATIONS = ("noise", "grain", "blur", "colour")
# Petal counts no synthetic flower has (they have 4 to 9).
WRONG_PETAL_COUNTS = (2, 3, 10, 11, 12)


def degrade(images, kind, severity, seed=0):
    """Images with a fault of `kind` (`DEGRADATIONS`) of strength `severity`.

    Args:
        images: Array `(N, H, W, 3)` in `[-1, 1]`.
        kind: String, one of `DEGRADATIONS`.
        severity: Non-negative float: the noise's standard deviation
            (`"noise"`, `"grain"`, in `[-1, 1]` units), the blur's in pixels
            (`"blur"`), the spread of the channel gains and offsets
            (`"colour"`); `0` leaves the images unchanged.
        seed: Integer, the seed of the random parts.

    Returns:
        A float32 array of the images' shape, clipped to `[-1, 1]`.
    """
    images = np.asarray(images, dtype=np.float32)
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"`images` must have shape (N, H, W, 3). Received: images.shape={images.shape}")
    if kind not in DEGRADATIONS:
        raise ValueError(f"Unknown degradation: kind={kind!r}. Expected one of {DEGRADATIONS}.")
    if not np.isfinite(severity) or severity < 0:
        raise ValueError(f"`severity` must be a non-negative number. Received: severity={severity!r}")
    rng = np.random.default_rng(seed)
    if kind == "noise":
        out = images + severity * rng.standard_normal(images.shape)
    elif kind == "grain":
        grain = gaussian_blur(rng.standard_normal(images.shape).astype(np.float32), 1.0)
        out = images + severity * grain / grain.std()
    elif kind == "blur":
        out = gaussian_blur(images, severity)
    else:
        gain = 1.0 + severity * rng.standard_normal((len(images), 3))
        offset = severity * rng.standard_normal((len(images), 3))
        out = shift_colours(images, gain, offset)
    return np.clip(out, -1.0, 1.0).astype(np.float32)


def shift_colours(images, gain, offset):
    """`clip(gain * rgb + offset)` per image and channel, for `(N, H, W, 3)` in `[-1, 1]` (rgb in `[0, 1]`).

    `gain` and `offset` are `(N, 3)`; applied to a colour `(N, 3)` in
    `[0, 1]` (a flower's drawing parameter) as `colour * gain + offset`.
    """
    gain = np.asarray(gain, np.float32)[:, None, None, :]
    offset = np.asarray(offset, np.float32)[:, None, None, :]
    return (np.clip((np.asarray(images, np.float32) + 1.0) / 2.0 * gain + offset, 0.0, 1.0) * 2.0 - 1.0).astype(np.float32)


def gaussian_blur(images, sigma):
    """Blurs `(N, H, W, C)` images with a Gaussian of `sigma` pixels (separable, edges repeated)."""
    images = np.asarray(images, dtype=np.float32)
    if sigma <= 0:
        return images
    radius = max(1, int(np.ceil(3.0 * sigma)))
    offsets = np.arange(-radius, radius + 1, dtype=np.float32)
    kernel = np.exp(-0.5 * (offsets / sigma) ** 2)
    kernel /= kernel.sum()
    out = images
    for axis in (1, 2):
        padding = [(0, 0)] * 4
        padding[axis] = (radius, radius)
        padded = np.pad(out, padding, mode="edge")
        length = out.shape[axis]
        out = sum(w * np.take(padded, np.arange(i, i + length), axis=axis) for i, w in enumerate(kernel))
    return out.astype(np.float32)


def wrong_petal_flowers(num_images, img_size=32, seed=0, return_params=False):
    """Synthetic flowers with a petal count the data never has (`WRONG_PETAL_COUNTS`), all else as drawn.

    Args:
        num_images: Integer, the number of images.
        img_size: Integer or `(height, width)`, the image size.
        seed: Integer, the seed: the same flowers as `synthetic_flowers`
            of this seed but for their petal counts.
        return_params: Boolean, also return the drawing parameters.
    """
    _, params = synthetic_flowers(num_images, img_size, seed=seed, return_params=True)
    rng = np.random.default_rng([seed, 1])
    params["num_petals"] = rng.choice(np.array(WRONG_PETAL_COUNTS), num_images)
    images = draw_flowers(params, img_size)
    return (images, params) if return_params else images
