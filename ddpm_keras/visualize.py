"""Images a person can look at: PNG grids and animated GIFs of samples.

Works on NumPy arrays in `[-1, 1]`, as `DiffusionModel.generate_images`
returns them; needs no display.
"""

import math

import numpy as np
from PIL import Image
from PIL import PngImagePlugin

from ddpm_keras.utils.files import IMAGE_MARK_KEY
from ddpm_keras.utils.files import WRITER
from ddpm_keras.utils.files import atomic_write


def to_uint8(images, value_range=(-1.0, 1.0)):
    """Maps float images in `value_range` to uint8 `[0, 255]`, clipping outside it."""
    low, high = value_range
    images = (np.asarray(images, dtype=np.float32) - low) / (high - low)
    return np.round(np.clip(images, 0.0, 1.0) * 255.0).astype(np.uint8)


def image_grid(images, ncols=None, padding=2, value_range=(-1.0, 1.0), scale=1):
    """Tiles a batch `(N, H, W, C)` into one uint8 image, `ncols` per row, enlarged `scale` times.

    Args:
        images: Array `(N, H, W, C)` with C = 1 or 3, values in `value_range`.
        ncols: Integer, images per row. Defaults to `ceil(sqrt(N))`.
        padding: Integer, white pixels between images. Defaults to `2`.
        value_range: `(low, high)` of the input values. Defaults to `(-1, 1)`.
        scale: Integer, the enlargement of the whole grid (nearest
            neighbour: each pixel becomes a `scale` x `scale` block).
            Defaults to `1`.

    Returns:
        A uint8 array `(rows * (H + padding) + padding, ncols * (W + padding) + padding, C)`, times `scale`
        in height and width.
    """
    if isinstance(scale, bool) or not isinstance(scale, int) or scale < 1:
        raise ValueError(f"scale must be a positive integer. Received: scale={scale!r}")
    images = to_uint8(images, value_range)
    if images.ndim != 4 or images.shape[-1] not in (1, 3):
        raise ValueError(
            "images must have shape (N, H, W, 1 or 3). "
            f"Received: shape={images.shape}"
        )
    n, h, w, c = images.shape
    ncols = ncols or math.ceil(math.sqrt(n))
    nrows = math.ceil(n / ncols)
    grid = np.full(
        (nrows * (h + padding) + padding, ncols * (w + padding) + padding, c), 255, np.uint8
    )
    for i, image in enumerate(images):
        top = padding + (i // ncols) * (h + padding)
        left = padding + (i % ncols) * (w + padding)
        grid[top : top + h, left : left + w] = image
    return np.repeat(np.repeat(grid, scale, axis=0), scale, axis=1) if scale > 1 else grid


def _to_pil(array):
    return Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array)


def display_scale(images):
    """The enlargement that makes a grid of `images` visible: 4x up to 32 px, else 2x."""
    return 4 if max(np.shape(images)[1:3]) <= 32 else 2


def save_image_grid(images, path, ncols=None, padding=2, scale=1, value_range=(-1.0, 1.0)):
    """Saves a batch of images as one PNG grid (see `image_grid`); returns `path`.

    `scale` enlarges the grid by an integer factor (nearest neighbour), so
    that 32-px samples are visible. The file is written atomically and
    marked as written by ddpm_keras (a PNG text chunk), so that a later
    command may replace it.
    """
    picture = _to_pil(image_grid(images, ncols, padding, value_range, scale))
    atomic_write(path, lambda f: picture.save(f, format="PNG", pnginfo=_png_mark()))
    return path


def save_gif(frames, path, ncols=None, duration_ms=80, hold_last_ms=1500, scale=1, value_range=(-1.0, 1.0)):
    """Saves a sequence of batches `(T, N, H, W, C)` as an animated GIF of grids; returns `path`.

    Each frame is the grid of one step (e.g. of a denoising trajectory); the
    last frame is held for `hold_last_ms`.
    """
    frames = np.asarray(frames)
    if frames.ndim != 5:
        raise ValueError(
            f"frames must have shape (T, N, H, W, C). Received: shape={frames.shape}"
        )
    pictures = [_to_pil(image_grid(f, ncols, value_range=value_range, scale=scale)) for f in frames]
    durations = [duration_ms] * (len(pictures) - 1) + [max(hold_last_ms, duration_ms)]
    atomic_write(
        path,
        lambda f: pictures[0].save(
            f, format="GIF", save_all=True, append_images=pictures[1:], duration=durations, loop=0,
            comment=WRITER.encode(),
        ),
    )
    return path


def plot_metrics(rows, path, keys, x_key="epoch", title=None):
    """Plots metrics against `x_key` to a PNG, one panel per key; returns `path`.

    Args:
        rows: List of dicts (such as the rows of a CSV log); rows without a
            value for a key are skipped in that panel.
        path: String, the PNG file, written atomically.
        keys: Sequence of strings, the metrics to plot (e.g. `["fid", "kid"]`).
            A key `k` with a `k_std` column gets error bars.
        x_key: String, the horizontal axis. Defaults to `"epoch"`.
        title: String or `None`, the figure's title. Defaults to `None`.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    figure = Figure(figsize=(4.5 * len(keys), 3.4), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    for axes, key in zip(figure.subplots(1, len(keys), squeeze=False)[0], keys):
        points = [(float(r[x_key]), float(r[key]), _float_or_nan(r.get(f"{key}_std"))) for r in rows
                  if r.get(key) not in (None, "")]
        if points:
            x, y, std = (np.array(column) for column in zip(*points))
            axes.errorbar(x, y, yerr=None if np.all(np.isnan(std)) else std, marker="o", capsize=3)
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
        axes.set_xlabel(x_key)
        axes.set_ylabel(key.upper())
        axes.grid(alpha=0.3)
    if title:
        figure.suptitle(title)
    atomic_write(path, lambda f: figure.savefig(f, format="png", metadata={IMAGE_MARK_KEY: WRITER}))
    return path


def _float_or_nan(value):
    return float("nan") if value in (None, "") else float(value)


def _png_mark():
    info = PngImagePlugin.PngInfo()
    info.add_text(IMAGE_MARK_KEY, WRITER)
    return info
