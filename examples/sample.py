"""Sample a grid of images from a checkpoint.

    python examples/sample.py checkpoints/tiny-synthetic/model.keras samples.png --num-images 16
"""

import argparse

import keras

import ddpm_keras  # noqa: F401  (registers the custom layers and model for loading)
from ddpm_keras.visualize import save_image_grid

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("checkpoint", help="a model.keras file")
parser.add_argument("out", help="the PNG to write")
parser.add_argument("--num-images", type=int, default=16)
parser.add_argument("--seed", type=int, default=0)
args = parser.parse_args()

model = keras.saving.load_model(args.checkpoint)
images = model.generate_images(num_images=args.num_images, seed=args.seed)
print("wrote", save_image_grid(images, args.out, scale=2))
