"""`ddpm-keras sample`: a PNG grid of samples, by class and guidance on a class-conditional model.

    ddpm-keras sample --preset synthetic_flowers32_cond --out flowers.png --class blue-6-petals
    ddpm-keras sample --checkpoint RUN_DIR --out samples.png --gif denoise.gif
    ddpm-keras sample --checkpoint RUN_DIR --out roses.png --class "pink primrose" --guidance-scale 3
    ddpm-keras sample --checkpoint RUN_DIR --out sweep.png --labels 3,17,40 --guidance-sweep 1,2,4,8
    ddpm-keras sample --checkpoint RUN_DIR --out guided.png --classifier clf.keras --labels 2 --guidance-sweep 0,1,3
"""

import time

from ddpm_keras.cli.common import register
from ddpm_keras.cli.types import in_range
from ddpm_keras.cli.types import non_negative_float
from ddpm_keras.cli.types import probability


def add_sample_parser(commands, formatter):
    """Adds the `sample` command to the `ddpm-keras` sub-parsers."""
    from ddpm_keras.cli.common import add_checkpoint_args
    from ddpm_keras.cli.common import add_sampler_arguments
    from ddpm_keras.cli.types import positive_int

    sample = commands.add_parser(
        "sample",
        help="sample images from a checkpoint into a PNG grid",
        formatter_class=formatter,
        description="Generate images with the EMA network of a checkpoint and save them as a PNG grid. On a "
        "class-conditional model, --labels or --class choose the classes and --guidance-scale the classifier-free "
        "guidance; --guidance-sweep draws the same noise under several scales, one row each. --classifier guides "
        "any model with a noise-aware classifier (ddpm-keras train-classifier) towards --labels; the sweep then "
        "varies --classifier-scale.",
    )
    add_checkpoint_args(sample, preset=True)
    sample.add_argument("--num-images", type=positive_int, default=None,
                        help="number of images. Default: one per label given, else 16")
    add_sampler_arguments(sample)
    sample.add_argument("--batch-size", type=positive_int, default=None,
                        help="images per compiled call, for large requests. Default: all at once")
    sample.add_argument("--gif", default=None, help="also write the denoising trajectory as an animated GIF")
    add_conditioning_args(sample)
    return sample


def add_conditioning_args(parser):
    """--labels, --class, --guidance-scale, --guidance-rescale and --guidance-sweep."""
    parser.add_argument("--labels", default=None, metavar="K,K,...",
                        help="classes (integers or names), one for all images or one per image")
    parser.add_argument("--class", dest="class_names", action="append", default=None, metavar="NAME",
                        help="a class by name, for all images (repeat for one row per class)")
    parser.add_argument("--guidance-scale", type=non_negative_float, default=None,
                        help="classifier-free guidance s (s = 1 + w): 1 the conditional model, larger values "
                        "closer to the class and less varied. Default: 1 (a --preset's own with labels)")
    parser.add_argument("--guidance-rescale", type=probability, default=0.0,
                        help="Lin et al.'s rescale of the guided output's std, in [0, 1], against over-saturation")
    parser.add_argument("--guidance-sweep", default=None, metavar="S,S,...",
                        help="draw the same noise under each guidance scale, one row per scale (with --classifier, "
                        "each classifier scale)")
    parser.add_argument("--classifier", default=None, metavar="CLF.keras",
                        help="classifier guidance with a noise-aware classifier (ddpm-keras train-classifier) "
                        "trained on this model's diffusion, towards --labels / --class")
    parser.add_argument("--classifier-scale", type=non_negative_float, default=1.0,
                        help="classifier guidance's scale s: the noise becomes eps - s sqrt(1 - ab_t) "
                        "grad log p(y | x_t); 1 samples p(x | y), larger values sharpen it")


def requested_labels(args):
    """The labels of `--labels` / `--class` (names stay names, integers become ints), or `None`."""
    from ddpm_keras.cli.common import CLIError

    if args.labels and args.class_names:
        raise CLIError("Pass --labels or --class, not both.")
    if args.class_names:
        return list(args.class_names)
    if not args.labels:
        return None
    return [int(item) if item.strip().lstrip("-").isdigit() else item.strip() for item in args.labels.split(",")]


def sweep_scales(text):
    """The scales of `--guidance-sweep`, or a CLIError naming the bad one."""
    from ddpm_keras.cli.common import CLIError

    try:
        scales = [float(item) for item in text.split(",") if item.strip()]
    except ValueError:
        raise CLIError(f"--guidance-sweep must be numbers separated by commas. Received: {text!r}") from None
    if not scales:
        raise CLIError(f"--guidance-sweep must name at least one scale. Received: {text!r}")
    bad = [scale for scale in scales if not in_range(scale, low=0.0)]
    if bad:
        raise CLIError(f"--guidance-sweep takes finite scales >= 0. Received: {bad[0]:g} in {text!r}")
    return scales


def load_classifier(path):
    """The `NoisyClassifier` of `--classifier`, or a CLIError naming the file."""
    import os

    from ddpm_keras import NoisyClassifier
    from ddpm_keras.cli.common import CLIError
    from ddpm_keras.cli.common import load_keras_file

    if not os.path.isfile(path):
        raise CLIError(f"--classifier {path}: no such file (ddpm-keras train-classifier writes one).")
    classifier = load_keras_file(path, "--classifier")
    if not isinstance(classifier, NoisyClassifier):
        raise CLIError(f"--classifier {path} holds a {type(classifier).__name__}, not a NoisyClassifier.")
    return classifier


def load_preset(args):
    """The model of `--preset` and its recommended sampling (`generate_images` arguments), or a CLIError."""
    from ddpm_keras import DiffusionModel
    from ddpm_keras import hub
    from ddpm_keras.cli.common import CLIError

    try:
        # A hub or converted preset is fetched or made once, then read from its local folder.
        source = hub.preset_folder(args.preset) if hub.is_weights_handle(args.preset) else args.preset
        model = DiffusionModel.from_preset(source, compile=False)
        metadata = hub.read_metadata(source)
    except (ValueError, OSError) as error:
        raise CLIError(f"--preset {args.preset}: {error}") from None
    return model, dict(metadata.get("sampling") or {})


def sample(args):
    """`ddpm-keras sample`: a PNG grid of samples from a checkpoint (and a GIF of their trajectory)."""
    import numpy as np

    from ddpm_keras.cli.common import CLIError
    from ddpm_keras.cli.common import check_output
    from ddpm_keras.cli.common import load_model
    from ddpm_keras.cli.common import sampling_options
    from ddpm_keras.cli.common import save_grid
    from ddpm_keras.visualize import display_scale
    from ddpm_keras.visualize import save_gif

    check_output(args.out, "--out", ".png", args.overwrite)
    if args.gif:
        check_output(args.gif, "--gif", ".gif", args.overwrite)
    if args.gif and args.guidance_sweep:
        raise CLIError("--gif draws one trajectory: use it without --guidance-sweep.")
    scales = sweep_scales(args.guidance_sweep) if args.guidance_sweep else None
    model, recommended = load_preset(args) if args.preset else (load_model(args.checkpoint), {})
    classifier = load_classifier(args.classifier) if args.classifier else None
    options = sampling_options(args, model.diffusion.num_timesteps, model.default_sampling)
    labels = requested_labels(args)
    if labels is None and args.preset and model.num_classes and classifier is None:
        labels = [i % model.num_classes for i in range(args.num_images or 16)]  # every class, in turn
    if args.guidance_scale is None:
        args.guidance_scale = recommended.get("guidance_scale", 1.0) if labels is not None and model.num_classes else 1.0
    ncols = None
    if args.class_names and len(args.class_names) > 1:
        per_class = max(1, (args.num_images or 16) // len(labels))
        labels, ncols = [name for name in labels for _ in range(per_class)], per_class
    elif labels is not None and len(labels) == 1:
        labels = labels[0]
    num_images = args.num_images or (len(labels) if isinstance(labels, list) else 16)
    common = dict(num_images=num_images, seed=args.seed, batch_size=args.batch_size, labels=labels,
                  guidance_rescale=args.guidance_rescale, classifier=classifier, **options)
    start = time.perf_counter()
    if scales:
        swept = "classifier_scale" if classifier is not None else "guidance_scale"
        fixed = {"guidance_scale": args.guidance_scale} if classifier is not None else {}
        rows = [model.generate_images(**{swept: scale}, **fixed, **common) for scale in scales]
        save_grid(np.concatenate(rows), args.out, ncols=num_images)
        kind = "classifier guidance" if classifier is not None else "guidance"
        print(f"Wrote {len(scales)} rows of {num_images} samples ({args.sampler}), the same noise under {kind} "
              f"scales {', '.join(f'{s:g}' for s in scales)} (top to bottom), to {args.out} in "
              f"{time.perf_counter() - start:.1f} s.")
        return
    result = model.generate_images(
        guidance_scale=args.guidance_scale, classifier_scale=args.classifier_scale, return_trajectory=bool(args.gif),
        **common,
    )
    images, trajectory = result if args.gif else (result, None)
    save_grid(images, args.out, ncols=ncols)
    print(f"Wrote {num_images} samples ({args.sampler}) to {args.out} in {time.perf_counter() - start:.1f} s.")
    if args.gif:
        save_gif(trajectory, args.gif, scale=display_scale(images))
        print(f"Wrote the denoising trajectory ({len(trajectory)} frames) to {args.gif}.")


register("sample", add_sample_parser, sample)
