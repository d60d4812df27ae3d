"""`ddpm-keras export`: a checkpoint's generator as a TensorFlow SavedModel for serving.

    ddpm-keras export --checkpoint RUN_DIR --out flowers_generator
    ddpm-keras export --checkpoint RUN_DIR --out gen --sampler ddim --steps 50 --dtype bfloat16
"""

import time

from ddpm_keras.cli.common import register


def add_export_parser(commands, formatter):
    """Adds the `export` command to the `ddpm-keras` sub-parsers."""
    from ddpm_keras.cli.common import add_overwrite_arg
    from ddpm_keras.cli.common import add_sampler_arguments

    export = commands.add_parser(
        "export",
        help="write the generator as a TensorFlow SavedModel (serving)",
        formatter_class=formatter,
        description="Write a TensorFlow SavedModel whose serving signature takes seed (int64) and num_images "
        "(int32) and returns uint8 images, the sampler below compiled in. It loads with "
        "tf.saved_model.load alone (no Keras, no ddpm_keras) and gives the images `sample` gives for the "
        "same seed and options. Needs KERAS_BACKEND=tensorflow (the default).",
    )
    export.add_argument("--checkpoint", required=True, help="a model.keras file, or a run directory holding one")
    export.add_argument("--out", required=True,
                        help="the SavedModel directory to write: a new or empty folder, or a previous export of "
                        "ddpm_keras holding nothing else (replaced)")
    add_overwrite_arg(export, "a folder holding other files")
    add_sampler_arguments(export)
    return export


def export(args):
    """Runs `ddpm-keras export`."""
    from ddpm_keras.cli.common import load_model
    from ddpm_keras.cli.common import sampling_options
    from ddpm_keras.utils.files import check_output

    check_output(args.out, "--out", overwrite=args.overwrite, kind="dir")
    model = load_model(args.checkpoint)
    options = sampling_options(args, model.diffusion.num_timesteps, model.default_sampling)
    start = time.perf_counter()
    model.export_generator(args.out, overwrite=args.overwrite, **options)
    steps = options["num_steps"] or "default"
    print(
        f"Wrote the generator ({options['sampler']}, {steps} steps) to {args.out} in "
        f"{time.perf_counter() - start:.1f} s. Serve it with "
        f"tf.saved_model.load({args.out!r}).signatures['serving_default'](seed=..., num_images=...)."
    )


register("export", add_export_parser, export)
