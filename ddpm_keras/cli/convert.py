"""`ddpm-keras import-keras-io`: a checkpoint of the keras.io DDPM example as a `.keras` file.

    ddpm-keras import-keras-io --out flowers64.keras            # the example author's published weights
    ddpm-keras import-keras-io checkpoints/ --out mine.keras --preset flowers64
    ddpm-keras sample --checkpoint flowers64.keras --out flowers.png

The conversion itself is `ddpm_keras.convert.convert_keras_io_checkpoint`.
"""

from ddpm_keras.cli.common import check_output
from ddpm_keras.cli.common import register
from ddpm_keras.convert import KERAS_IO_CHECKPOINT_URL
from ddpm_keras.presets import PRESETS


def add_import_parser(commands, formatter):
    """Adds the `import-keras-io` command to the subparsers `commands`; returns its parser."""
    parser = commands.add_parser(
        "import-keras-io",
        help="convert a TensorFlow checkpoint of the keras.io DDPM example into a model.keras",
        formatter_class=formatter,
        description="Read the weights the keras.io DDPM example saved with tf.keras 2 (PREFIX.index + "
        "PREFIX.data-*) into this package's UNet with the example's attention (attention_residual='normalized') "
        "and write a DiffusionModel .keras file that sample, evaluate, inpaint and interpolate take. A checkpoint "
        "of one network fills both the network and its EMA; one of the example's whole model fills each.",
    )
    parser.add_argument(
        "source", metavar="SOURCE", nargs="?", default=KERAS_IO_CHECKPOINT_URL,
        help="the checkpoint: its prefix (e.g. checkpoints/diffusion_model_checkpoint), a directory holding one "
        ".index file, a .zip of one, or an http(s) URL of such a zip (downloaded once to ~/.keras/models). "
        "The default is the example author's flowers64 weights",
    )
    parser.add_argument("--out", required=True, help="the .keras file to write")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an existing --out that is not a DiffusionModel written by ddpm_keras")
    parser.add_argument("--preset", default="flowers64", choices=sorted(PRESETS),
                        help="the configuration the checkpoint was trained with: its UNet, diffusion and "
                        "training options")
    return parser


def import_keras_io(args):
    """`ddpm-keras import-keras-io`: converts the checkpoint and says where it went."""
    from ddpm_keras.convert import convert_keras_io_checkpoint

    check_output(args.out, "--out", ".keras", args.overwrite)
    path = convert_keras_io_checkpoint(args.source, args.out, preset=args.preset, overwrite=args.overwrite)
    print(f"Wrote {path} (preset {args.preset}, from {args.source}). "
          f"Sample from it: ddpm-keras sample --checkpoint {path} --out samples.png")


register("import-keras-io", add_import_parser, import_keras_io)
