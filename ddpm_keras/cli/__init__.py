"""The `ddpm-keras` command line: train, resume, sample, evaluate, inpaint, interpolate and export.

    ddpm-keras train --preset tiny --epochs 20          # synthetic flowers, CPU
    ddpm-keras train                                     # Oxford Flowers 102, 64 px
    ddpm-keras train --resume                            # continue after a stop
    ddpm-keras sample --checkpoint checkpoints/tiny-synthetic --out samples.png --gif denoise.gif
    ddpm-keras evaluate --checkpoint RUN_DIR --num-samples 1000 --metrics fid,kid,bpd --out metrics.json
    ddpm-keras inpaint --checkpoint RUN_DIR --image flower.jpg --mask mask.png --out inpainted.png
    ddpm-keras interpolate --checkpoint RUN_DIR --out path.png
    ddpm-keras export --checkpoint RUN_DIR --out generator    # TensorFlow SavedModel

Every default comes from `ddpm_keras.presets`; the options of `train` are in
`ddpm_keras.cli.train`.
"""

import argparse
import os
import re
import sys

from ddpm_keras.utils import files
from ddpm_keras.cli.types import non_negative_int  # noqa: F401 - importable from here
from ddpm_keras.cli.types import number
from ddpm_keras.cli.types import positive_int
from ddpm_keras.cli.types import probability
from ddpm_keras.cli.types import seed as seed_type

PROG = "ddpm-keras"
EVALUATE_METRICS = ("fid", "kid", "is", "bpd")
CHECKPOINTS_DIR = "checkpoints"


class CLIError(Exception):
    """A user error, printed as one line."""


class WorkerLostError(Exception):
    """Another worker of a multi-worker run was lost: printed as one line, exit status `EXIT_WORKER_LOST`."""


# The exit statuses (README, "Training state and resuming").
EXIT_USAGE = 2  # a bad option or input, or a file or folder that cannot be read or written
EXIT_NON_FINITE = 3  # the loss or weights became NaN or Inf: training stopped, the last finite checkpoint kept
EXIT_WORKER_LOST = 75  # EX_TEMPFAIL: relaunching the workers with --resume continues the run
EXIT_INTERRUPTED = 130  # Ctrl-C: the last finished epoch is kept


def build_parser():
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Train and sample denoising diffusion probabilistic models (Keras 3).",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    formatter = argparse.ArgumentDefaultsHelpFormatter

    train = commands.add_parser(
        "train",
        help="train a model (and resume it)",
        formatter_class=formatter,
        description="Train a DiffusionModel with model.fit. Each epoch writes RUN_DIR/model.keras "
        "(network, EMA, optimizer, epoch; atomically), appends to RUN_DIR/log.csv and, every "
        "--plot-every epochs, writes a grid of samples to RUN_DIR/samples/.",
    )
    from ddpm_keras.cli.train import add_train_arguments

    add_train_arguments(train)

    from ddpm_keras.cli.sample import add_sample_parser

    add_sample_parser(commands, formatter)

    evaluate = commands.add_parser(
        "evaluate",
        help="measure sample quality (FID, KID, Inception Score) and bits/dim of a checkpoint",
        formatter_class=formatter,
        description="Generate --num-samples images with the EMA network and compare them with the real images of "
        "--dataset (FID, KID), score them (Inception Score), and compute the negative log-likelihood of real "
        "images in bits per dimension (bpd). Prints a table; --out writes JSON. The real images' features are "
        "cached (--cache-dir) and recomputed when the images change.",
    )
    evaluate.add_argument("--checkpoint", required=True, help="a model.keras file, or a run directory holding one")
    evaluate.add_argument("--dataset", default=None,
                          help="oxford_flowers102, synthetic or PATH to a folder of images. Default: the run's "
                          "(its run.json)")
    evaluate.add_argument("--split", default=None, help="tfds split. Default: the run's, else train")
    evaluate.add_argument("--data-dir", default=None, help="tfds data directory")
    evaluate.add_argument("--metrics", default="fid,kid", type=_metric_list,
                          help=f"comma-separated, from {','.join(EVALUATE_METRICS)}")
    evaluate.add_argument("--num-samples", type=positive_int, default=1000, help="generated images for fid, kid, is")
    evaluate.add_argument("--seed", type=seed_type, default=0, help="seed of the samples and of bpd's noise")
    _add_sampler_args(evaluate)
    evaluate.add_argument("--batch-size", type=positive_int, default=128, help="images per compiled sampling call")
    _add_extractor_args(evaluate)
    evaluate.add_argument("--classifier", default=None,
                          help="a .keras model images -> class probabilities for is. Default: InceptionV3")
    evaluate.add_argument("--kid-subset-size", type=positive_int, default=1000, help="images per KID subset")
    evaluate.add_argument("--is-splits", type=positive_int, default=10, help="Inception Score splits")
    evaluate.add_argument("--bpd-images", type=positive_int, default=256, help="real images for bpd (the first ones)")
    evaluate.add_argument("--bpd-steps", type=positive_int, default=None,
                          help="timesteps for bpd: all T (exact) or fewer (a stratified estimate)")
    evaluate.add_argument("--out", default=None, help="also write the results to this JSON file")
    add_overwrite_arg(evaluate)
    from ddpm_keras.utils.distribute import STRATEGIES

    evaluate.add_argument("--strategy", default="none", choices=STRATEGIES,
                          help="mirrored: split the sampling over this machine's GPUs; multiworker: over the "
                          "processes of TF_CONFIG or srun (on JAX KERAS_DISTRIBUTION_*), each running this command; "
                          "the chief writes --out. Chunks of --batch-size go to the replicas in turn: the same "
                          "images as one process")

    from ddpm_keras.cli.edit import add_edit_parsers

    add_edit_parsers(commands, formatter)

    from ddpm_keras.cli.export import add_export_parser

    add_export_parser(commands, formatter)

    from ddpm_keras.cli.convert import add_import_parser

    add_import_parser(commands, formatter)
    return parser


def _add_checkpoint_args(parser):
    parser.add_argument("--checkpoint", required=True, help="a model.keras file, or a run directory holding one")
    parser.add_argument("--seed", type=seed_type, default=0, help="the same seed gives the same images")
    parser.add_argument("--out", required=True, help="output PNG file")
    add_overwrite_arg(parser)


def add_overwrite_arg(parser, what="an output file"):
    parser.add_argument("--overwrite", action="store_true",
                        help=f"replace {what} that ddpm_keras did not write (one it wrote is replaced anyway)")


def _add_sampler_args(parser, inpainting=False):
    """--sampler, --steps, --eta, --timestep-spacing (and --thresholding): defaults from `presets.DEFAULT_SAMPLING`."""
    from ddpm_keras import samplers
    from ddpm_keras.inference.precision import INFERENCE_DTYPES
    from ddpm_keras.presets import DEFAULT_SAMPLING

    choices = samplers.INPAINT_SAMPLERS if inpainting else samplers.SAMPLERS
    default = "ddpm" if inpainting else DEFAULT_SAMPLING["sampler"]
    default_steps = "all T" if inpainting else (
        f"{DEFAULT_SAMPLING['num_steps']} for the default sampler, else the sampler's own (ddpm, pc: all T; "
        f"ddim: {samplers.DEFAULT_DDIM_STEPS}; the solvers: {samplers.DEFAULT_SOLVER_STEPS})"
    )
    parser.add_argument("--sampler", default=default, choices=choices,
                        help="ddpm: ancestral; ddim: Song et al. 2021 (deterministic with --eta 0); "
                        "pc: DDPM predictor + Langevin corrector; dpmpp_2m, dpmpp_3m: DPM-Solver++ (deterministic); "
                        "dpmpp_2m_sde: its stochastic form; unipc: UniPC (deterministic)")
    parser.add_argument("--steps", type=positive_int, default=None, help=f"reverse steps. Default: {default_steps}")
    parser.add_argument("--eta", type=probability, default=0.0, help="DDIM noise in [0, 1]: 0 deterministic, 1 DDPM-like")
    default_spacing = "trailing" if inpainting else (
        f"{DEFAULT_SAMPLING.get('timestep_spacing', 'trailing')} for the default sampler, else trailing"
    )
    parser.add_argument("--timestep-spacing", default=None, choices=samplers.TIMESTEP_SPACINGS,
                        help=f"which training timesteps the steps visit. Default: {default_spacing}")
    if not inpainting:
        parser.add_argument("--thresholding", type=number(0.0, 1.0, low_open=True, high_open=True), default=None,
                            metavar="Q",
                            help="dynamic thresholding of the predicted x_0 at quantile Q, e.g. 0.995 "
                            "(Imagen), instead of clipping")
        parser.add_argument("--dtype", default=None, choices=INFERENCE_DTYPES,
                            help="the precision the network computes in while sampling (weights stay float32): "
                            "bfloat16 or float16 run faster where the hardware supports them. Default: float32")


def sampling_options(args, num_timesteps=None):
    """The `generate_images` options of a command's sampler arguments; the default sampler gets its default steps.

    With the model's `num_timesteps`, the default sampler's default step
    count is capped at it, and a larger `--steps` is a `CLIError`.
    """
    from ddpm_keras.presets import DEFAULT_SAMPLING

    default = args.sampler == DEFAULT_SAMPLING["sampler"]
    if num_timesteps is not None:
        check_steps(args.steps, num_timesteps)
    steps = DEFAULT_SAMPLING["num_steps"] if args.steps is None and default else args.steps
    if num_timesteps is not None and steps is not None:
        steps = min(steps, num_timesteps)
    spacing = args.timestep_spacing or (DEFAULT_SAMPLING.get("timestep_spacing", "trailing") if default else "trailing")
    options = {"sampler": args.sampler, "num_steps": steps, "eta": args.eta, "timestep_spacing": spacing}
    for name in ("thresholding", "dtype"):
        if getattr(args, name, None) is not None:
            options[name] = getattr(args, name)
    return options


def check_steps(steps, num_timesteps):
    """A `CLIError` for a `--steps` above the model's timesteps (the samplers visit each at most once)."""
    if steps is not None and steps > num_timesteps:
        raise CLIError(f"--steps {steps} is more than the model's {num_timesteps} timesteps: pass "
                       f"--steps {num_timesteps} or fewer.")


def _add_extractor_args(parser):
    parser.add_argument("--inception-weights", default="imagenet",
                        help="InceptionV3 weights for FID/KID: imagenet (downloaded to ~/.keras/models on first "
                        "use) or PATH to the .h5 file")
    parser.add_argument("--feature-extractor", default=None,
                        help="a .keras model images in [-1, 1] -> features, used instead of InceptionV3")
    parser.add_argument("--cache-dir", default=None,
                        help="where the real images' feature statistics are cached. Default: "
                        "~/.cache/ddpm_keras/reference ($DDPM_KERAS_CACHE)")


def _metric_list(text):
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in EVALUATE_METRICS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"unknown metric {', '.join(unknown) or repr(text)}: choose from {','.join(EVALUATE_METRICS)}"
        )
    return list(dict.fromkeys(names))


def main(argv=None):
    """Runs the command line; returns the exit status (see `EXIT_*`)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        from ddpm_keras.cli.convert import import_keras_io
        from ddpm_keras.cli.edit import inpaint
        from ddpm_keras.cli.edit import interpolate
        from ddpm_keras.cli.evaluate import evaluate
        from ddpm_keras.cli.sample import sample
        from ddpm_keras.cli.export import export
        from ddpm_keras.cli.train import train

        commands = {
            "train": train, "sample": sample, "evaluate": evaluate, "inpaint": inpaint, "interpolate": interpolate,
            "export": export, "import-keras-io": import_keras_io,
        }
        commands[args.command](args)
    except WorkerLostError as error:
        return _fail(error, EXIT_WORKER_LOST)
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted; the last finished epoch is in the run directory.", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as error:  # noqa: BLE001 - user errors become one line
        from ddpm_keras.training.finite import NonFiniteError

        if isinstance(error, NonFiniteError):
            return _fail(error, EXIT_NON_FINITE)
        if isinstance(error, OSError) and not isinstance(error, FileNotFoundError) and error.errno is not None:
            return _fail(files.describe_os_error(error), EXIT_USAGE)
        if not _is_user_error(error):
            raise
        return _fail(error, EXIT_USAGE)
    return 0


def _fail(error, status):
    """Prints `error` as the one line `ddpm-keras: error: ...` on standard error; returns `status`."""
    text = " ".join(str(error).split())
    print(f"{PROG}: error: {text}", file=sys.stderr)
    return status


def _is_user_error(error):
    from ddpm_keras.data import DatasetUnavailableError
    from ddpm_keras.metrics import WeightsUnavailableError

    return isinstance(error, (CLIError, ValueError, FileNotFoundError, DatasetUnavailableError, WeightsUnavailableError))


def _load_model(path):
    """Loads a DiffusionModel from a `.keras` file or a run directory holding `model.keras`.

    A file that is not a whole `.keras` archive, one that Keras's safe mode
    refuses, one of another model, and one whose weights hold NaN or Inf
    are one-line errors naming the file.
    """
    from ddpm_keras import DiffusionModel
    from ddpm_keras.training.finite import check_finite_model

    if os.path.isdir(path):
        path = os.path.join(path, "model.keras")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"No checkpoint at {path}: expected a model.keras file or a run directory holding one.")
    model = load_keras_file(path)
    if not isinstance(model, DiffusionModel):
        raise CLIError(f"{path} holds a {type(model).__name__}, not a DiffusionModel.")
    return check_finite_model(model, path)


def load_keras_file(path, option=None):
    """`keras.saving.load_model(path)`, with each way it can fail as one `CLIError` naming the file (and `option`)."""
    import zipfile

    import keras

    from ddpm_keras.utils.download import one_line

    named = f"{option} {path}" if option else path
    try:
        with zipfile.ZipFile(path) as archive:
            broken = archive.testzip()
    except (zipfile.BadZipFile, EOFError):
        broken = ""
    if broken is not None:
        raise CLIError(f"{named} is corrupt or truncated ({os.path.getsize(path):,} bytes): not a whole .keras "
                       "archive.")
    try:
        return keras.saving.load_model(path)
    except Exception as error:  # noqa: BLE001 - Keras's loading errors become one line
        if "safe_mode" in str(error):
            raise CLIError(
                f"Keras's safe mode refused {named}: it holds Python code (a lambda or function) that would run "
                "when loaded, and ddpm_keras never turns safe mode off for a file it did not write. If you trust "
                "the file, load it yourself: keras.saving.load_model(path, safe_mode=False)."
            ) from None
        raise CLIError(f"Cannot load {named} ({type(error).__name__}: {one_line(error)}).") from None


def check_output(path, option, suffix=None, overwrite=False):
    """Checks an output file's name and that it can be written, before any long computation (`files.check_output`)."""
    if suffix is not None and not path.lower().endswith(suffix):
        raise CLIError(f"{option} must name a {suffix} file. Received: {option} {path}")
    return files.check_output(path, option, overwrite=overwrite)


def _save_grid(images, path, ncols=None):
    from ddpm_keras.visualize import display_scale
    from ddpm_keras.visualize import save_image_grid

    save_image_grid(images, path, ncols=ncols, scale=display_scale(images))


def _slug(dataset):
    """A directory-friendly name for a dataset name or path."""
    name = os.path.basename(os.path.normpath(dataset)) or "data"
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


if __name__ == "__main__":
    sys.exit(main())
