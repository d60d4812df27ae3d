"""Files saved by an earlier version load and give the same images (`tests/fixtures/`).

The same to float32 rounding: the images were drawn on a CPU with AVX-512,
and another instruction set rounds the network's sums differently (up to
5.4e-7 after DDPM's 1,000 steps, measured on an AVX2 CPU); a changed
weight, sampler or schedule moves them by orders of magnitude more.
"""

import os

import keras
import numpy as np
import pytest

from ddpm_keras import DiffusionModel

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures")
SAMPLINGS = {
    "ddpm": {"sampler": "ddpm"},
    "ddim_5": {"sampler": "ddim", "num_steps": 5},
    "dpmpp_2m_sde_5_karras": {"sampler": "dpmpp_2m_sde", "num_steps": 5, "timestep_spacing": "karras"},
    "unipc_5": {"sampler": "unipc", "num_steps": 5},
}


@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="the fixtures' images were drawn on TensorFlow")
@pytest.mark.parametrize("name", ["tiny_v0_1", "tiny_cond_v0_1"])
def test_a_file_of_version_0_1_gives_the_same_images(name):
    model = keras.saving.load_model(os.path.join(FIXTURES, f"{name}.keras"))
    assert isinstance(model, DiffusionModel) and int(model.epoch) == 0 and int(model.optimizer.iterations) == 2
    labels = {"labels": [0, 1], "guidance_scale": 2.0} if model.num_classes else {}
    # The conditional file adds the labels and guidance to two of the samplers (each chain compiles: seconds).
    samplings = ["ddpm", "dpmpp_2m_sde_5_karras"] if model.num_classes else list(SAMPLINGS)
    with np.load(os.path.join(FIXTURES, f"{name}_images.npz")) as expected:
        assert sorted(expected) == sorted(SAMPLINGS)
        for sampling in samplings:
            options = SAMPLINGS[sampling]
            images = model.generate_images(2, seed=0, verbose=0, **options, **labels)
            np.testing.assert_allclose(images, expected[sampling], rtol=0, atol=1e-5, err_msg=f"{name}, {sampling}")
