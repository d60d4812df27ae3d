"""`ddpm-keras train --inpainting [--init-from RUN]`: an inpainting model, new or started from a trained one.

The flags, the `KEY=VALUE` values of `--mask-rates`, and the start from
another run: its model's weights copied into the inpainting network, the
mask's input channels zero (`nn.inpainting.load_unconditional_weights`).
"""

import argparse
import os

from ddpm_keras.cli.common import CLIError
from ddpm_keras.cli.common import load_model
from ddpm_keras.cli.common import value_type
from ddpm_keras.options import OPTIONS


def add_inpainting_arguments(train):
    """Adds `--inpainting` and `--init-from` to `ddpm-keras train`'s parser."""
    train.add_argument("--inpainting", action="store_true",
                       help="train an inpainting model: the network also takes the masked image and the mask, "
                       "each training image gets a random mask (--mask-rates); `ddpm-keras inpaint` then runs any "
                       "sampler on it")
    train.add_argument("--init-from", default=None, metavar="RUN",
                       help="with --inpainting: start from the model of RUN (a run directory or a .keras file), its "
                       "weights copied and the new input channels zeroed, so training starts from its predictions. "
                       "The network must be the preset's (the run's own preset by default)")


def keyed_value(option):
    """The argparse type of one `KEY=VALUE` of an option with `keys`: a `(key, value)` pair."""
    number = value_type(option.range)

    def parse(text):
        key, sep, value = text.partition("=")
        if not sep or key not in option.keys:
            raise argparse.ArgumentTypeError(f"expected KIND=P with KIND one of {', '.join(option.keys)}, got {text!r}")
        return key, number(value)

    return parse


def inpainting_source(args):
    """The run record of `--init-from` (`{}` for a bare `.keras` file), after checking the flags that go with it."""
    from ddpm_keras.cli import runs

    if args.init_from is None:
        return {}
    if not args.inpainting:
        raise CLIError("--init-from starts an inpainting model from a trained one: add --inpainting.")
    if args.resume:
        raise CLIError("--init-from starts a new run; --resume continues one: pass one of them.")
    return runs.read_record(args.init_from) if os.path.isdir(args.init_from) else {}


def apply_inpainting(args, config):
    """Sets `config`'s UNet to an inpainting one with `--inpainting`; an inpainting flag without it is a `CLIError`."""
    if args.inpainting:
        config["unet"]["inpainting"] = True
    elif not config["unet"].get("inpainting"):
        for option in OPTIONS:
            if option.inpainting and getattr(args, option.name, None) is not None:
                raise CLIError(f"{option.flag} applies to inpainting runs: add --inpainting.")
    return config


def init_from(model, path):
    """Copies the model at `path` into the new inpainting `model`: its network, its EMA, the new channels zero."""
    from ddpm_keras.nn.inpainting import load_unconditional_weights

    source = load_model(path)
    if source.inpainting:
        raise CLIError(f"--init-from {path} is an inpainting model already: continue it with --resume instead.")
    if source.diffusion.get_config() != model.diffusion.get_config() or source.prediction_type != model.prediction_type:
        raise CLIError(f"--init-from {path} has another diffusion or prediction type than the preset's: pass its "
                       "--preset and objective flags (or none: the run's own).")
    try:
        load_unconditional_weights(model.network, source.network)
        load_unconditional_weights(model.ema_network, source.ema_network)
    except ValueError as error:
        raise CLIError(f"--init-from {path} holds a different network than this run's: {error}") from None
    print(f"Starting from {path}: its weights, the mask's input channels zeroed.", flush=True)
    return model
