"""The `ddpm-keras` command line: train, resume, sample, evaluate, inpaint, interpolate, export and more.

    ddpm-keras train --preset tiny --epochs 20          # synthetic flowers, CPU
    ddpm-keras train                                     # Oxford Flowers 102, 64 px
    ddpm-keras train --resume                            # continue after a stop
    ddpm-keras sample --checkpoint checkpoints/tiny-synthetic --out samples.png --gif denoise.gif
    ddpm-keras evaluate --checkpoint RUN_DIR --num-samples 1000 --metrics fid,kid,bpd --out metrics.json
    ddpm-keras inpaint --checkpoint RUN_DIR --image flower.jpg --mask mask.png --out inpainted.png
    ddpm-keras interpolate --checkpoint RUN_DIR --out path.png
    ddpm-keras train-classifier --checkpoint RUN_DIR --out clf.keras     # then sample --classifier clf.keras
    ddpm-keras export --checkpoint RUN_DIR --out generator    # TensorFlow SavedModel
    ddpm-keras distill --teacher RUN_DIR --target-steps 4 --out RUN_DIR2  # a student of 4 sampling steps
    ddpm-keras ema --checkpoint RUN_DIR --std 0.05,0.1,0.15 --out emas   # post-hoc EMA (train --posthoc-ema-every)

Every default comes from `ddpm_keras.presets`; the options of `train` are in
`ddpm_keras.cli.train`.
"""

import argparse
import sys

from ddpm_keras.cli import train  # noqa: F401 - each command module registers its command, in this order
from ddpm_keras.cli import sample  # noqa: F401
from ddpm_keras.cli import train_classifier  # noqa: F401
from ddpm_keras.cli import distill  # noqa: F401
from ddpm_keras.cli import evaluate  # noqa: F401
from ddpm_keras.cli import edit  # noqa: F401
from ddpm_keras.cli import export  # noqa: F401
from ddpm_keras.cli import ema  # noqa: F401
from ddpm_keras.cli import convert  # noqa: F401
from ddpm_keras.cli.common import COMMANDS
from ddpm_keras.cli.common import EXIT_INTERRUPTED
from ddpm_keras.cli.common import EXIT_NON_FINITE
from ddpm_keras.cli.common import EXIT_USAGE
from ddpm_keras.cli.common import EXIT_WORKER_LOST
from ddpm_keras.cli.common import PROG
from ddpm_keras.cli.common import WorkerLostError
from ddpm_keras.cli.common import is_user_error
from ddpm_keras.utils import files


def build_parser():
    """The parser of `ddpm-keras`: one sub-parser per registered command (`common.COMMANDS`)."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Train and sample denoising diffusion probabilistic models (Keras 3).",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS.values():
        command.add_parser(commands, argparse.ArgumentDefaultsHelpFormatter)
    return parser


def main(argv=None):
    """Runs the command line; returns the exit status (see `common.EXIT_*`)."""
    args = build_parser().parse_args(argv)
    try:
        COMMANDS[args.command].run(args)
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
        if not is_user_error(error):
            raise
        return _fail(error, EXIT_USAGE)
    return 0


def _fail(error, status):
    """Prints `error` as the one line `ddpm-keras: error: ...` on standard error; returns `status`."""
    text = " ".join(str(error).split())
    print(f"{PROG}: error: {text}", file=sys.stderr)
    return status


if __name__ == "__main__":
    sys.exit(main())
