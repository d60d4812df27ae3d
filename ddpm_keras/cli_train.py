"""The options of `ddpm-keras train`, and how they override the preset or must agree with a resumed model."""

import argparse

from ddpm_keras.cli import CLIError
from ddpm_keras.cli import _add_extractor_args
from ddpm_keras.cli import non_negative_int
from ddpm_keras.cli import positive_int
from ddpm_keras.diffusion import PREDICTION_TYPES
from ddpm_keras.distribute import PRECISIONS
from ddpm_keras.distribute import STRATEGIES
from ddpm_keras.presets import PRESETS
from ddpm_keras.schedules import BETA_SCHEDULES

# The options that override a preset's model: argparse dest -> (preset part, key).
MODEL_FLAGS = {
    "prediction_type": ("training", "prediction_type"),
    "loss_weighting": ("training", "loss_weighting"),
    "snr_gamma": ("training", "snr_gamma"),
    "ema_warmup": ("training", "ema_warmup"),
    "beta_schedule": ("diffusion", "beta_schedule"),
    "zero_terminal_snr": ("diffusion", "rescale_zero_terminal_snr"),
    "cond_drop_prob": ("training", "cond_drop_prob"),
}


def positive_float(text):
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a positive number, got {value}")
    return value


def add_train_arguments(train):
    """Adds every option of `ddpm-keras train` to its subparser `train`."""
    train.add_argument("--preset", default="flowers64", choices=sorted(PRESETS), help="model and training defaults")
    train.add_argument(
        "--dataset",
        default=None,
        help="oxford_flowers102 (tfds), synthetic (procedural flowers, no download) or PATH to a "
        "folder of images. Default: the preset's (flowers64: oxford_flowers102, tiny: synthetic)",
    )
    train.add_argument("--split", default="train", help="tfds split of oxford_flowers102, e.g. train+validation+test")
    train.add_argument("--data-dir", default=None, help="tfds data directory (default: ~/tensorflow_datasets)")
    train.add_argument("--epochs", type=positive_int, default=None, help="total epochs to reach. Default: the preset's")
    train.add_argument(
        "--steps-per-epoch", type=positive_int, default=None, help="batches per epoch (the data repeats). Default: one pass"
    )
    train.add_argument("--batch-size", type=positive_int, default=None, help="Default: the preset's")
    train.add_argument("--learning-rate", type=float, default=None, help="Adam learning rate. Default: the preset's")
    train.add_argument("--img-size", type=positive_int, default=None, help="image size in pixels. Default: the preset's")
    _add_objective_arguments(train)
    train.add_argument("--out", default=None, help="run directory. Default: checkpoints/PRESET-DATASET")
    train.add_argument("--resume", action="store_true", help="continue from RUN_DIR/model.keras at the next epoch")
    train.add_argument("--plot-every", type=non_negative_int, default=None, help="epochs between sample grids (0: never). Default: the preset's")
    train.add_argument("--seed", type=int, default=0, help="seed of the data order, noise and sample grids")
    train.add_argument("--precision", default="float32", choices=PRECISIONS,
                       help="mixed_bfloat16 for recent GPUs, TPUs and AVX512_BF16 CPUs; mixed_float16 adds loss "
                       "scaling for older GPUs. Weights, EMA and samples stay float32")
    train.add_argument("--strategy", default="none", choices=STRATEGIES,
                       help="mirrored: every GPU of this machine; multiworker: several machines (TF_CONFIG). "
                       "--batch-size is the global batch")
    train.add_argument("--jit-compile", action="store_true",
                       help="compile the training step with XLA (pays for small models and on GPUs)")
    train.add_argument("--fid-every", type=non_negative_int, default=0,
                       help="epochs between FID/KID measurements of EMA samples against the training images "
                       "(0: never); they go into log.csv, quality.csv and quality.png")
    train.add_argument("--fid-samples", type=positive_int, default=1000, help="samples per FID/KID measurement")
    _add_extractor_args(train)


def _add_objective_arguments(train):
    """The model's options (`MODEL_FLAGS`): each overrides the preset; a resumed run keeps its model's."""
    train.add_argument("--prediction-type", default=None, choices=PREDICTION_TYPES,
                       help="what the network predicts: epsilon (the noise), v (Salimans & Ho 2022) or x0. "
                       "Default: the preset's")
    train.add_argument("--loss-weighting", default=None, choices=("none", "min_snr"),
                       help="per-timestep loss weights: none, or min_snr (min-SNR-gamma, Hang et al. 2023). "
                       "Default: the preset's")
    train.add_argument("--snr-gamma", type=positive_float, default=None,
                       help="min_snr's gamma, the clamp of the SNR. Default: the preset's")
    train.add_argument("--beta-schedule", default=None, choices=BETA_SCHEDULES,
                       help="the forward process's betas: linear (Ho et al. 2020), cosine (Nichol & Dhariwal 2021) "
                       "or sigmoid. Default: the preset's")
    train.add_argument("--zero-terminal-snr", default=None, action=argparse.BooleanOptionalAction,
                       help="rescale the betas so that the last step is pure noise (Lin et al. 2023); needs "
                       "--prediction-type v or x0. Default: the preset's")
    train.add_argument("--ema-warmup", default=None, action=argparse.BooleanOptionalAction,
                       help="raise the EMA decay from 2/11 to the preset's ema as min(ema, (1 + n) / (10 + n)) "
                       "after n steps. Default: the preset's")
    train.add_argument("--class-conditional", action="store_true",
                       help="train on the dataset's labels (sub-folders, tfds labels, synthetic classes) with a "
                       "class embedding, for classifier-free guidance. Conditional presets: flowers64_cond, tiny_cond")
    train.add_argument("--cond-drop-prob", type=float, default=None, metavar="P",
                       help="probability that a label is replaced by the null label in training (Ho & Salimans). "
                       "Default: the preset's")


def _flag(dest):
    return "--" + dest.replace("_", "-")


def _value(dest, value):
    """A flag's value as the model's option: `--loss-weighting none` is `None`."""
    return None if dest == "loss_weighting" and value == "none" else value


def apply_model_flags(config, args):
    """Writes the model options given on the command line into the preset `config` (in place)."""
    for dest, (part, key) in MODEL_FLAGS.items():
        value = getattr(args, dest)
        if value is not None:
            config[part][key] = _value(dest, value)
    return config


def model_record(model):
    """The options of `model` that `MODEL_FLAGS` set, for run.json: what the run actually trains."""
    return {
        "prediction_type": model.prediction_type, "loss_weighting": model.loss_weighting,
        "snr_gamma": model.snr_gamma, "ema": model.ema, "ema_warmup": model.ema_warmup,
        "diffusion": model.diffusion.get_config(), "num_classes": model.num_classes,
        "cond_drop_prob": model.cond_drop_prob if model.num_classes else None,
    }


def class_conditioning(args, config, dataset_name):
    """The class names of a conditional run (and `config`'s `num_classes` set from them), or `None`.

    A run is conditional with `--class-conditional` or a preset whose UNet
    has `num_classes`; the names come from the dataset (its sub-folders,
    tfds's label names, or the synthetic classes) and must number the
    preset's `num_classes`.
    """
    from ddpm_keras.data import dataset_class_names

    preset_classes = config["unet"].get("num_classes")
    if not (args.class_conditional or preset_classes):
        if args.cond_drop_prob is not None:
            raise CLIError("--cond-drop-prob applies to class-conditional runs: add --class-conditional.")
        return None
    names = dataset_class_names(dataset_name, data_dir=args.data_dir)
    if preset_classes and preset_classes != len(names):
        raise CLIError(
            f"The preset's network has {preset_classes} classes but {dataset_name} has {len(names)}: "
            "pass --class-conditional with an unconditional preset to size the network from the data."
        )
    config["unet"]["num_classes"] = len(names)
    return list(names)


def check_resumed_model(args, model, model_path):
    """Raises a `CLIError` where a model option given with `--resume` differs from the saved model's."""
    saved = {
        "prediction_type": model.prediction_type,
        "loss_weighting": model.loss_weighting,
        "snr_gamma": model.snr_gamma,
        "ema_warmup": model.ema_warmup,
        "beta_schedule": model.diffusion.beta_schedule,
        "zero_terminal_snr": model.diffusion.rescale_zero_terminal_snr,
        "cond_drop_prob": model.cond_drop_prob,
    }
    if args.class_conditional and model.num_classes is None:
        raise CLIError(
            f"--class-conditional, but the resumed model ({model_path}) is unconditional: a resumed run keeps "
            "its network. Drop the option, or start a new run with --out DIR."
        )
    for dest, value in saved.items():
        given = getattr(args, dest)
        if given is not None and _value(dest, given) != value:
            option = _flag(dest) if given is True else "--no-" + _flag(dest)[2:] if given is False else f"{_flag(dest)} {given}"
            raise CLIError(
                f"{option} differs from the resumed model's {value!r} ({model_path}): a resumed run "
                "keeps its model's options. Drop the option, or start a new run with --out DIR."
            )
