"""Train the `tiny` preset on synthetic flowers for about three minutes and save a grid of samples."""

from ddpm_keras import DiffusionModel
from ddpm_keras.data import load_synthetic
from ddpm_keras.presets import DEFAULT_SAMPLING
from ddpm_keras.presets import get_preset
from ddpm_keras.visualize import save_image_grid

model = DiffusionModel.from_preset("tiny")  # the UNet, the diffusion and Adam of presets.PRESETS["tiny"]
preset = get_preset("tiny")
dataset = load_synthetic(1024, img_size=preset["unet"]["img_size"], batch_size=preset["training"]["batch_size"])
# 20 epochs, as `ddpm-keras train --preset tiny`: after 5 the EMA network (decay 0.995) is still half its
# random initialisation and draws noise.
model.fit(dataset, epochs=preset["training"]["epochs"])
images = model.generate_images(num_images=16, seed=0, **DEFAULT_SAMPLING)  # (16, 32, 32, 3) in [-1, 1]
print("wrote", save_image_grid(images, "samples.png", scale=4))
