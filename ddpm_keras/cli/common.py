"""What the commands of `ddpm-keras` share: exit statuses, errors, loading a checkpoint, checked outputs, flags.

Every command module (`train.py`, `sample.py`, ...) imports from here and
registers itself with `register`; nothing here imports a command, so the
package's imports run one way.
"""

import os
from typing import Callable
from typing import NamedTuple

from ddpm_keras.cli.types import non_negative_int
from ddpm_keras.cli.types import number
from ddpm_keras.cli.types import positive_int
from ddpm_keras.cli.types import seed as seed_type
from ddpm_keras.utils import files

PROG = "ddpm-keras"
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


class Command(NamedTuple):
    """A command of `ddpm-keras`: `add_parser(commands, formatter)` adds its sub-parser, `run(args)` runs it."""

    name: str
    add_parser: Callable
    run: Callable


# The commands in the order of `ddpm-keras --help`, each added by its module's `register` call.
COMMANDS = {}


def register(name, add_parser, run):
    """Makes `name` a command of `ddpm-keras` (a command module calls this once, when imported)."""
    COMMANDS[name] = Command(name, add_parser, run)


def add_checkpoint_args(parser, preset=False):
    """--checkpoint (or, with `preset`, one of --checkpoint and --preset), --seed, --out and --overwrite."""
    if preset:
        source = parser.add_mutually_exclusive_group(required=True)
        source.add_argument("--checkpoint", help="a model.keras file, or a run directory holding one")
        source.add_argument("--preset", help="a pretrained preset, no training needed: a shipped name (see "
                            "DiffusionModel.presets: synthetic_flowers32, synthetic_flowers32_cond, keras_io_flowers64), "
                            "a preset folder, hf://owner/name or kaggle://owner/model/keras/variant; sampled with its "
                            "recommended sampler and guidance unless given")
    else:
        parser.add_argument("--checkpoint", required=True, help="a model.keras file, or a run directory holding one")
    parser.add_argument("--seed", type=seed_type, default=0, help="the same seed gives the same images")
    parser.add_argument("--out", required=True, help="output PNG file")
    add_overwrite_arg(parser)


def add_overwrite_arg(parser, what="an output file"):
    parser.add_argument("--overwrite", action="store_true",
                        help=f"replace {what} that ddpm_keras did not write (one it wrote is replaced anyway)")


def add_sampler_arguments(parser, inpainting=False):
    """--sampler, --steps, --timestep-spacing, the flags of `samplers.SamplerOptions`' table, and --dtype.

    Defaults from `presets.DEFAULT_SAMPLING`; inpainting takes the options
    that apply to it (the replacement method's samplers are ddpm and ddim,
    an inpainting model runs any).
    """
    from ddpm_keras import samplers
    from ddpm_keras.inference.precision import INFERENCE_DTYPES
    from ddpm_keras.presets import DEFAULT_SAMPLING

    # Inpainting: the replacement method's samplers (INPAINT_SAMPLERS), or any on an inpainting model.
    choices = samplers.SAMPLERS
    default = "ddpm" if inpainting else None
    own = (f"ddpm, pc: all T; ddim: {samplers.DEFAULT_DDIM_STEPS}; the solvers: {samplers.DEFAULT_SOLVER_STEPS}; "
           f"consistency: {samplers.DEFAULT_CONSISTENCY_STEPS}")
    default_steps = own if inpainting else (
        f"the default sampler's (the model's own, else {DEFAULT_SAMPLING['num_steps']}), else the sampler's own ({own})"
    )
    model_default = "" if inpainting else (
        f"; default: the model's own (a distilled student's, a preset's: its default_sampling), else "
        f"{DEFAULT_SAMPLING['sampler']}"
    )
    parser.add_argument("--sampler", default=default, choices=choices,
                        help="ddpm: ancestral; ddim: Song et al. 2021 (deterministic with --eta 0); "
                        "pc: DDPM predictor + Langevin corrector; dpmpp_2m, dpmpp_3m: DPM-Solver++ (deterministic); "
                        "dpmpp_2m_sde: its stochastic form; unipc: UniPC (deterministic); consistency: multistep "
                        "consistency sampling (a consistency-distilled student's); heun: EDM's Heun sampler "
                        f"(Karras et al. 2022; 2 calls a step, deterministic unless --s-churn){model_default}")
    parser.add_argument("--steps", type=positive_int, default=None, help=f"reverse steps. Default: {default_steps}")
    own_spacing = "the sampler's own (karras for heun, else trailing)"
    default_spacing = own_spacing if inpainting else (
        f"the default sampler's (the model's own, else {DEFAULT_SAMPLING.get('timestep_spacing', 'trailing')}), "
        f"else {own_spacing}"
    )
    parser.add_argument("--timestep-spacing", default=None, choices=samplers.TIMESTEP_SPACINGS,
                        help=f"which training timesteps the steps visit. Default: {default_spacing}")
    for field in samplers.option_fields(inpainting):
        spec = field.metadata
        parser.add_argument(spec["flag"], dest=field.name, type=value_type(spec), default=field.default,
                            metavar=spec.get("metavar"), help=spec["help"])
    if not inpainting:
        parser.add_argument("--dtype", default=None, choices=INFERENCE_DTYPES,
                            help="the precision the network computes in while sampling (weights stay float32): "
                            "bfloat16 or float16 run faster where the hardware supports them. Default: float32")


def value_type(spec):
    """The argparse type of a table row's values (`range`, `low`, `integer`, ...): an integer or a number."""
    if spec.get("integer"):
        return positive_int if spec.get("low", 0) >= 1 else non_negative_int
    limits = {key: spec[key] for key in ("low", "high", "low_open", "high_open") if spec.get(key) is not None}
    return number(**limits)


def sampling_options(args, num_timesteps=None, default_sampling=None):
    """The `generate_images` options of a command's sampler arguments; the default sampler gets its default steps.

    The default is the model's `default_sampling` (a distilled student's
    sampler and steps, a preset's), else `presets.DEFAULT_SAMPLING`: with
    no `--sampler` its sampler, and for its sampler its steps and spacing
    where those flags are not given. With the model's `num_timesteps`, the
    default step count is capped at it, and a larger `--steps` is a
    `CLIError`.
    """
    from ddpm_keras.presets import DEFAULT_SAMPLING

    default_sampling = default_sampling or DEFAULT_SAMPLING
    if args.sampler is None:
        args.sampler = default_sampling["sampler"]
    default = args.sampler == default_sampling["sampler"]
    if num_timesteps is not None:
        check_steps(args.steps, num_timesteps)
    steps = default_sampling.get("num_steps") if args.steps is None and default else args.steps
    if num_timesteps is not None and steps is not None:
        steps = min(steps, num_timesteps)
    from ddpm_keras import samplers

    spacing = args.timestep_spacing or (default_sampling.get("timestep_spacing") if default else None)
    spacing = samplers.timestep_spacing_of(args.sampler, spacing)
    options = {"sampler": args.sampler, "num_steps": steps, "timestep_spacing": spacing}
    for name in [field.name for field in samplers.option_fields()] + ["dtype"]:
        if getattr(args, name, None) is not None:
            options[name] = getattr(args, name)
    return options


def check_steps(steps, num_timesteps):
    """A `CLIError` for a `--steps` above the model's timesteps (the samplers visit each at most once)."""
    if steps is not None and steps > num_timesteps:
        raise CLIError(f"--steps {steps} is more than the model's {num_timesteps} timesteps: pass "
                       f"--steps {num_timesteps} or fewer.")


def add_extractor_args(parser):
    parser.add_argument("--inception-weights", default="imagenet",
                        help="InceptionV3 weights for FID/KID: imagenet (downloaded to ~/.keras/models on first "
                        "use) or PATH to the .h5 file")
    parser.add_argument("--feature-extractor", default=None,
                        help="a .keras model images in [-1, 1] -> features, used instead of InceptionV3")
    parser.add_argument("--cache-dir", default=None,
                        help="where the real images' feature statistics are cached. Default: "
                        "~/.cache/ddpm_keras/reference ($DDPM_KERAS_CACHE)")


def is_user_error(error):
    from ddpm_keras.data import DatasetUnavailableError
    from ddpm_keras.metrics import WeightsUnavailableError

    return isinstance(error, (CLIError, ValueError, FileNotFoundError, DatasetUnavailableError, WeightsUnavailableError))


def load_model(path):
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


def save_grid(images, path, ncols=None):
    from ddpm_keras.visualize import display_scale
    from ddpm_keras.visualize import save_image_grid

    save_image_grid(images, path, ncols=ncols, scale=display_scale(images))


def slug(dataset):
    """A directory-friendly name for a dataset name or path."""
    return files.slug(os.path.basename(os.path.normpath(dataset)) or "data", keep="-")
