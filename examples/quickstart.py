"""Train the `tiny` preset on synthetic flowers for a few minutes and save a grid of samples."""

import keras

from ddpm_keras import DiffusionModel, GaussianDiffusion, build_unet
from ddpm_keras.data import load_synthetic
from ddpm_keras.presets import get_preset, model_options
from ddpm_keras.visualize import save_image_grid

preset = get_preset("tiny")
network = build_unet(**preset["unet"])
model = DiffusionModel(network, GaussianDiffusion(**preset["diffusion"]), **model_options(preset))
model.compile(optimizer=keras.optimizers.Adam(preset["training"]["learning_rate"]))
dataset = load_synthetic(1024, img_size=preset["unet"]["img_size"], batch_size=preset["training"]["batch_size"])
model.fit(dataset, epochs=5)
images = model.generate_images(num_images=16, seed=0)  # (16, 32, 32, 3) in [-1, 1]
print("wrote", save_image_grid(images, "samples.png", scale=4))
