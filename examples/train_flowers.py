"""The keras.io DDPM example, ported: train on Oxford Flowers 102 at 64 px with model.fit.

    python examples/train_flowers.py                       # the example's settings (a GPU is advised)
    python examples/train_flowers.py --preset tiny --dataset synthetic --epochs 5   # minutes on a CPU

Sizes and hyperparameters come from `ddpm_keras.presets`. Each epoch writes
RUN_DIR/model.keras (resumable with `ddpm-keras train --resume --out RUN_DIR`),
RUN_DIR/log.csv and, every few epochs, a grid of samples in RUN_DIR/samples/.
"""

import argparse

from ddpm_keras import DiffusionModel
from ddpm_keras.callbacks import RunCheckpoint
from ddpm_keras.callbacks import SamplePlotter
from ddpm_keras.data import load_dataset
from ddpm_keras.presets import PRESETS
from ddpm_keras.presets import get_preset

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--preset", default="flowers64", choices=sorted(PRESETS))
parser.add_argument("--dataset", default=None, help="oxford_flowers102, synthetic or a folder; default: the preset's")
parser.add_argument("--epochs", type=int, default=None, help="default: the preset's")
parser.add_argument("--out", default=None, help="run directory; default: checkpoints/example-PRESET")
args = parser.parse_args()

config = get_preset(args.preset)
training = config["training"]
run_dir = args.out or f"checkpoints/example-{args.preset}"

# Data: centre crop, resize, [-1, 1], random flips; shuffled before batching.
flowers_ds = load_dataset(
    args.dataset or training["dataset"], img_size=config["unet"]["img_size"], batch_size=training["batch_size"]
)

# The UNet, the diffusion utility and the model that trains one with the other, compiled with Adam:
# DiffusionModel(build_unet(**config["unet"]), GaussianDiffusion(**config["diffusion"]), **model_options(config)).
model = DiffusionModel.from_preset(args.preset)

model.fit(
    flowers_ds,
    epochs=args.epochs or training["epochs"],
    callbacks=[RunCheckpoint(run_dir), SamplePlotter(run_dir, every=training["plot_every"])],
)
