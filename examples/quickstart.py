"""The main job in Python: the `quickstart` preset learns 16-px synthetic flowers of 4 classes from scratch
(about 4.5 minutes on a 2-core CPU), then saves a grid of samples, a row per class, under classifier-free guidance."""

from ddpm_keras import DiffusionModel
from ddpm_keras.data import SYNTHETIC_CLASS_NAMES
from ddpm_keras.data import load_synthetic
from ddpm_keras.presets import DEFAULT_SAMPLING
from ddpm_keras.presets import get_preset
from ddpm_keras.visualize import save_image_grid

model = DiffusionModel.from_preset("quickstart")  # the UNet, the diffusion and Adam of presets.PRESETS["quickstart"]
preset = get_preset("quickstart")
training = preset["training"]
dataset = load_synthetic(training["synthetic_images"], img_size=preset["unet"]["img_size"],
                         batch_size=training["batch_size"], with_labels=True)  # (images, labels) batches
model.fit(dataset, epochs=training["epochs"])  # 20 epochs of 128 steps, as `ddpm-keras train --preset quickstart`
labels = [label for label in range(len(SYNTHETIC_CLASS_NAMES)) for _ in range(4)]  # red, yellow, blue, purple
images = model.generate_images(16, seed=0, labels=labels, guidance_scale=training["plot_guidance"], **DEFAULT_SAMPLING)
print("wrote", save_image_grid(images, "samples.png", ncols=4, scale=4))
