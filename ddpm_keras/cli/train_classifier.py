"""`ddpm-keras train-classifier`: a noise-aware classifier for classifier guidance, trained on a dataset's classes.

    ddpm-keras train-classifier --checkpoint checkpoints/tiny-synthetic --out clf.keras --epochs 10
    ddpm-keras sample --checkpoint checkpoints/tiny-synthetic --classifier clf.keras --labels 0 \\
        --classifier-scale 3 --out guided.png

The classifier is the encoder of the preset's UNet at `--width` times its
widths (`build_classifier`, `nn.classifier.encoder_config`), on
the diffusion and image size of `--checkpoint` (the model it will guide) or
of the preset. Its labels come from the dataset's classes, as `train
--class-conditional` takes them. It is saved after every epoch whose loss is
finite, through a temporary file (an interrupted run keeps the last epoch).
"""

from ddpm_keras.cli.common import add_overwrite_arg
from ddpm_keras.cli.common import register
from ddpm_keras.cli.types import positive_float
from ddpm_keras.cli.types import positive_int
from ddpm_keras.cli.types import seed as seed_type

DEFAULT_EPOCHS = 10
DEFAULT_LEARNING_RATE = 3e-4
DEFAULT_WIDTH = 0.25


def add_train_classifier_parser(commands, formatter):
    """Adds the `train-classifier` command to the `ddpm-keras` sub-parsers."""
    from ddpm_keras.presets import PRESETS

    parser = commands.add_parser(
        "train-classifier",
        help="train a noise-aware classifier for classifier guidance (sample --classifier)",
        formatter_class=formatter,
        description="Train a classifier of noisy images x_t at their timestep (Dhariwal & Nichol 2021) on a "
        "dataset's classes, for `ddpm-keras sample --classifier`. Its diffusion and image size are those of "
        "--checkpoint (the model it will guide), or of --preset.",
    )
    parser.add_argument("--out", required=True, help="the classifier's .keras file")
    add_overwrite_arg(parser)
    parser.add_argument("--checkpoint", default=None,
                        help="the model to guide (a model.keras or run directory): its diffusion and image size")
    parser.add_argument("--preset", default="tiny", choices=sorted(PRESETS),
                        help="the UNet whose encoder the classifier is, and without --checkpoint its diffusion, "
                        "image size, batch size and dataset")
    parser.add_argument("--width", type=positive_float, default=DEFAULT_WIDTH,
                        help="the classifier's widths as a fraction of the preset UNet's (one residual block a "
                        "level): a quarter guides the synthetic flowers as well as the full encoder, at less cost")
    parser.add_argument("--dataset", default=None,
                        help="synthetic, oxford_flowers102 or a folder with one sub-folder per class. "
                        "Default: the preset's")
    parser.add_argument("--split", default="train", help="the tfds split. Default: train")
    parser.add_argument("--data-dir", default=None, help="tfds data directory (default: ~/tensorflow_datasets)")
    parser.add_argument("--epochs", type=positive_int, default=DEFAULT_EPOCHS)
    parser.add_argument("--steps-per-epoch", type=positive_int, default=None,
                        help="batches per epoch (the data repeats). Default: one pass")
    parser.add_argument("--batch-size", type=positive_int, default=None, help="Default: the preset's")
    parser.add_argument("--learning-rate", type=positive_float, default=DEFAULT_LEARNING_RATE)
    parser.add_argument("--seed", type=seed_type, default=0, help="the seed of the data order and of the noise")
    return parser


def train_classifier(args):
    """`ddpm-keras train-classifier`: fits a `NoisyClassifier` and reports its accuracy by noise level."""
    import time

    import keras
    import numpy as np

    from ddpm_keras import NoisyClassifier
    from ddpm_keras import build_classifier
    from ddpm_keras.cli.common import CLIError
    from ddpm_keras.cli.common import check_output
    from ddpm_keras.cli.common import load_model
    from ddpm_keras.data import dataset_class_names
    from ddpm_keras.data import load_dataset
    from ddpm_keras.diffusion import GaussianDiffusion
    from ddpm_keras.nn.classifier import encoder_config
    from ddpm_keras.presets import get_preset
    from ddpm_keras.training.checkpoint import save_atomically

    check_output(args.out, "--out", ".keras", args.overwrite)
    config = get_preset(args.preset)
    if args.checkpoint:
        model = load_model(args.checkpoint)
        diffusion, (height, width, channels) = model.diffusion, model.image_shape
    else:
        diffusion = GaussianDiffusion(**config["diffusion"])
        height = width = config["unet"]["img_size"]
        channels = config["unet"]["img_channels"]
    dataset_name = args.dataset or config["training"]["dataset"]
    names = dataset_class_names(dataset_name, data_dir=args.data_dir)
    if len(names) < 2:
        raise CLIError(f"A classifier needs a dataset of at least 2 classes; {dataset_name} has {len(names)}.")
    network = build_classifier((height, width), channels, len(names), **encoder_config(config["unet"], args.width))
    classifier = NoisyClassifier(network, diffusion, seed=args.seed, class_names=names)
    classifier.compile(optimizer=keras.optimizers.Adam(args.learning_rate))
    batch_size = args.batch_size or config["training"]["batch_size"]
    dataset = load_dataset(
        dataset_name, split=args.split, img_size=(height, width), batch_size=batch_size, data_dir=args.data_dir,
        seed=args.seed, with_labels=True,
    )
    if args.steps_per_epoch:
        dataset = dataset.repeat()
    print(f"Training a {network.count_params():,}-parameter classifier of {len(names)} classes on noisy "
          f"{dataset_name} ({height}x{width}, T={diffusion.num_timesteps}) into {args.out}", flush=True)
    start = time.perf_counter()
    classifier.fit(
        dataset, epochs=args.epochs, steps_per_epoch=args.steps_per_epoch, verbose=2,
        callbacks=[keras.callbacks.TerminateOnNaN(), _save_when_finite(classifier, args.out, save_atomically)],
    )
    images, labels = next(iter(dataset))
    accuracy = classifier.accuracy_by_noise_level(np.asarray(images), np.asarray(labels))
    print(f"Trained in {time.perf_counter() - start:.0f} s. Accuracy on a batch of training images by timestep: "
          + ", ".join(f"t={t}: {a:.2f}" for t, a in accuracy.items()))


def _save_when_finite(classifier, path, save):
    """A Keras callback saving `classifier` to `path` after each epoch whose loss is finite."""
    import math

    import keras

    class SaveWhenFinite(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            loss = (logs or {}).get("loss")
            if loss is not None and math.isfinite(loss):
                save(classifier, path)

    return SaveWhenFinite()


register("train-classifier", add_train_classifier_parser, train_classifier)
