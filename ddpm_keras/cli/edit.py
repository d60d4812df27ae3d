"""`ddpm-keras inpaint` and `ddpm-keras interpolate`: editing real images with a checkpoint.

    ddpm-keras inpaint --checkpoint RUN_DIR --image flower.jpg --mask mask.png --out inpainted.png
    ddpm-keras interpolate --checkpoint RUN_DIR --out path.png --images a.jpg b.jpg
"""

import os

from ddpm_keras.cli.common import CLIError
from ddpm_keras.cli.common import add_checkpoint_args
from ddpm_keras.cli.common import add_sampler_arguments
from ddpm_keras.cli.common import check_output
from ddpm_keras.cli.common import check_steps
from ddpm_keras.cli.common import load_model
from ddpm_keras.cli.common import register
from ddpm_keras.cli.common import save_grid
from ddpm_keras.cli.types import positive_int


def add_inpaint_parser(commands, formatter):
    """Adds `ddpm-keras inpaint` and its options to the sub-parsers `commands`."""
    inpaint = commands.add_parser(
        "inpaint",
        help="fill in the masked region of an image",
        formatter_class=formatter,
        description="Inpaint an image: pixels where the mask is white are kept, black ones are generated "
        "(replacement method, RePaint resampling with --resample > 1, with --sampler ddpm or ddim; an inpainting "
        "model, trained with `train --inpainting`, takes the mask as an input and runs any sampler). The output "
        "PNG shows the original, the masked input and --num-images results.",
    )
    add_checkpoint_args(inpaint)
    inpaint.add_argument("--image", required=True, help="the image (any size: centre-cropped and resized)")
    inpaint.add_argument("--mask", required=True, help="a black-and-white image: white = keep, black = fill")
    inpaint.add_argument("--num-images", type=positive_int, default=4, help="number of fillings to draw")
    add_sampler_arguments(inpaint, inpainting=True)
    inpaint.add_argument("--resample", type=positive_int, default=1,
                         help="RePaint resampling count per step (blends the edges; costs that many network calls); "
                         "1 for an inpainting model")


def add_interpolate_parser(commands, formatter):
    """Adds `ddpm-keras interpolate` and its options to the sub-parsers `commands`."""
    interpolate = commands.add_parser(
        "interpolate",
        help="spherical interpolation between two noises or two images",
        formatter_class=formatter,
        description="Decode a spherical interpolation between two latent noises with a deterministic sampler "
        "(DDIM by default). With --images A B the two latents come from DDIM inversion of two real images.",
    )
    add_checkpoint_args(interpolate)
    interpolate.add_argument("--num-images", type=positive_int, default=8, help="images along the path, ends included")
    interpolate.add_argument("--sampler", default="ddim", choices=_deterministic_samplers(),
                             help="the deterministic sampler that decodes the path (ddim with --images)")
    interpolate.add_argument("--steps", type=positive_int, default=50, help="decoding steps")
    interpolate.add_argument("--images", nargs=2, metavar=("A", "B"), default=None, help="two image files to interpolate")


def _deterministic_samplers():
    from ddpm_keras.inference.runner import DETERMINISTIC_SAMPLERS

    return DETERMINISTIC_SAMPLERS


def inpaint(args):
    """`ddpm-keras inpaint`: original, masked input and fillings, one row each, in a PNG."""
    import numpy as np

    check_output(args.out, "--out", ".png", args.overwrite)
    model = load_model(args.checkpoint)
    check_steps(args.steps, model.diffusion.num_timesteps)
    height, width, _ = model.image_shape
    image = _read_image(args.image, (height, width))
    mask = (_read_image(args.mask, (height, width)).mean(axis=-1, keepdims=True) > 0.0).astype("float32")
    if mask.min() == 1.0:
        raise CLIError(f"The mask {args.mask} is white everywhere: nothing to fill (black marks the region to fill).")
    images = np.repeat(image[None], args.num_images, axis=0)
    filled = model.inpaint(images, mask, seed=args.seed, sampler=args.sampler, num_steps=args.steps,
                           eta=args.eta, resample=args.resample, timestep_spacing=args.timestep_spacing)
    masked = np.where(mask > 0, image, 0.0)[None]
    rows = [image[None], masked, filled]
    save_grid(np.concatenate([np.pad(r, ((0, args.num_images - len(r)), (0, 0), (0, 0), (0, 0)),
                                      constant_values=1.0) for r in rows]), args.out, ncols=args.num_images)
    print(f"Wrote the original, the masked input and {args.num_images} fillings to {args.out}.")


def interpolate(args):
    """`ddpm-keras interpolate`: a row of images along a spherical path between two latents."""
    import numpy as np

    check_output(args.out, "--out", ".png", args.overwrite)
    model = load_model(args.checkpoint)
    check_steps(args.steps, model.diffusion.num_timesteps)
    images = None
    if args.images:
        size = model.image_shape[:2]
        images = tuple(_read_image(path, size)[None] for path in args.images)
    if images is not None and args.sampler != "ddim":
        raise CLIError(f"--images needs --sampler ddim (the inverse of the DDIM encoding). Received: --sampler {args.sampler}")
    path = model.interpolate(num_images=args.num_images, seed=args.seed, num_steps=args.steps, images=images,
                             sampler=args.sampler)
    grid = path if images is None else np.concatenate([images[0], path, images[1]])
    save_grid(grid, args.out, ncols=len(grid))
    print(f"Wrote {args.num_images} interpolated images to {args.out}"
          + (" (the two inputs at the ends)." if images else "."))


def _read_image(path, size):
    """An image file as float32 `(H, W, 3)` in [-1, 1], cropped and resized as for training."""
    import numpy as np
    from PIL import Image
    from PIL import UnidentifiedImageError

    from ddpm_keras.data import preprocess_image

    if not os.path.isfile(path):
        raise FileNotFoundError(f"No image file at {path}.")
    try:
        with Image.open(path) as picture:
            pixels = np.asarray(picture.convert("RGB"))
    except (UnidentifiedImageError, OSError) as error:
        raise CLIError(f"Cannot read the image {path}: {error}") from None
    return np.asarray(preprocess_image(pixels, size), dtype="float32")


register("inpaint", add_inpaint_parser, inpaint)
register("interpolate", add_interpolate_parser, interpolate)
