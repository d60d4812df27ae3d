"""`TeacherStudentGrid`: the teacher's samples above the student's, from the same noise, as distillation goes."""

import os

import keras
import numpy as np

from ddpm_keras.training.checkpoint import SAMPLES_DIR
from ddpm_keras.visualize import display_scale
from ddpm_keras.visualize import save_image_grid


class TeacherStudentGrid(keras.callbacks.Callback):
    """Saves a two-row grid every `every` epochs: the teacher's samples, then the student's, from the same `x_T`.

    The teacher's row is drawn once, when training begins; the student's
    (the distiller's `generate_images`: deterministic DDIM over its
    round's steps) after each `every`-th epoch, to
    `<run_dir>/samples/epoch_0001.png`, ... A deterministic teacher
    sampler (the default, the distiller's `teacher_sampling`: the DDIM
    chain the student imitates) makes the rows comparable image by image.

    Args:
        run_dir: String, the run directory.
        teacher: The teacher `DiffusionModel`.
        num_images: Integer, images per row. Defaults to `8`.
        seed: Integer, the seed of `x_T`. Defaults to `0`.
        every: Integer, epochs between grids. Defaults to `1`.
        teacher_sampling: `None` (the distiller's `teacher_sampling`) or a
            dict of `generate_images`' sampler options for the teacher's
            row. Defaults to `None`.
        guidance_scale: Float, classifier-free guidance of a conditional
            model's samples (labels `0, 1, ...` across each row). Defaults
            to `1.0`.
    """

    def __init__(self, run_dir, teacher, num_images=8, seed=0, every=1, teacher_sampling=None, guidance_scale=1.0):
        super().__init__()
        self.run_dir, self.teacher, self.every = os.fspath(run_dir), teacher, every
        self.noise = np.random.default_rng(seed).standard_normal((num_images,) + teacher.image_shape).astype("float32")
        self.teacher_sampling = teacher_sampling
        self.conditioning = {}
        if teacher.num_classes:
            self.conditioning = {"labels": np.arange(num_images) % teacher.num_classes, "guidance_scale": guidance_scale}
        self.teacher_images = None
        self.last_path = None

    def on_train_begin(self, logs=None):
        if self.teacher_images is None:
            sampling = self.teacher_sampling or self.model.teacher_sampling
            self.teacher_images = self.teacher.generate_images(
                initial_noise=self.noise, seed=0, verbose=0, **sampling, **self.conditioning
            )

    def on_epoch_end(self, epoch, logs=None):
        if (epoch + 1) % self.every:
            return
        student = self.model.generate_images(initial_noise=self.noise, seed=0, verbose=0, **self.conditioning)
        images = np.concatenate([self.teacher_images, student])
        path = os.path.join(self.run_dir, SAMPLES_DIR, f"epoch_{epoch + 1:04d}.png")
        self.last_path = save_image_grid(images, path, ncols=len(self.noise), scale=display_scale(images))
