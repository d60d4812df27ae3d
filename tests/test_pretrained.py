"""The shipped presets: they load offline in a fresh process, and draw flowers as well as they were measured to.

The quality tests catch what the closed-form tests cannot: a change that
quietly makes the pictures worse. Each samples 256 images with the preset's
recommended sampling and compares them with real synthetic flowers in the
shipped flower features (`metrics.flower_features`). The bounds sit between
the spread measured over sampling seeds and the faults `bench/pretrained.py
--breaks` measures (seeds 0-2; the note at QUALITY).
"""

import functools
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from ddpm_keras import DiffusionModel
from ddpm_keras import hub
from ddpm_keras.data import synthetic_class_of
from ddpm_keras.data import synthetic_flowers
from ddpm_keras.metrics import extract_features
from ddpm_keras.metrics import flower_features
from ddpm_keras.metrics import frechet_distance
from ddpm_keras.metrics import intra_class_frechet_distance

SHIPPED = ("synthetic_flowers32", "synthetic_flowers32_cond")
REFERENCE_SEED = 9001  # bench/pretrained.py's reference: 4,096 real flowers

# Per preset: samples, and the FD bound. Measured with bench/pretrained.py --seeds 0,1,2 --breaks
# --num-samples N, the presets' recommended sampling (DDPM respaced to 50 steps); FD mean +- std over
# seeds, then the seeds' values (the test draws seed 0). Each fault is one coefficient of the ancestral
# step 10% off (the posterior mean's x_0 and x_t weights, its noise), or guidance off:
# - synthetic_flowers32, 256 samples: 132.9 +- 10.6 (119.3, 145.1, 134.2). Faults, all caught on every
#   seed: noise x 1.1 173.5 +- 7.9 (lowest 162.3), x_0 x 1.1 183.3 +- 8.7 (174.6), x_t x 1.1 642 +- 9.
# - synthetic_flowers32_cond, 256 samples, guidance 1.5: 10.4 +- 1.6 (12.7, 9.3, 9.1). Faults, all caught
#   on every seed: guidance off 27.3 +- 3.1 (lowest 24.9), noise x 1.1 41.8 +- 3.3 (39.5), x_0 x 1.1
#   305 +- 16, x_t x 1.1 437 +- 7. Class accuracy 1.000 on every seed, broken or not, except x_t (0.96).
#   The intra-class FD, from the same noise, guided over unguided: 0.632 +- 0.041 (0.656, 0.574, 0.664);
#   with guidance off the two are the same images, ratio 1.
QUALITY = {"synthetic_flowers32": (256, 155.0), "synthetic_flowers32_cond": (256, 20.0)}
CLASS_ACCURACY_BOUND = 0.95
GUIDANCE_GAIN_BOUND = 0.8  # the conditional preset's intra-class FD, guided over unguided


def test_the_shipped_presets_load_and_sample_offline_in_a_fresh_process(tmp_path):
    script = (
        "import json, os, numpy as np\n"
        "from ddpm_keras import DiffusionModel\n"
        "out = {}\n"
        f"for name in {SHIPPED!r}:\n"
        "    images = DiffusionModel.from_preset(name).generate_images(2, seed=0, sampler='ddim', num_steps=2, verbose=0)\n"
        "    out[name] = [list(np.shape(images)), bool(np.isfinite(images).all())]\n"
        "out['cache'] = sorted(os.listdir(os.environ['KERAS_HOME']))\n"
        "print(json.dumps(out))\n"
    )
    env = {**os.environ, "KERAS_HOME": str(tmp_path), "HF_HUB_OFFLINE": "1", "no_proxy": "*",
           "HTTPS_PROXY": "http://127.0.0.1:9", "HTTP_PROXY": "http://127.0.0.1:9"}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    for name in SHIPPED:
        assert result[name] == [[2, 32, 32, 3], True]
    assert "ddpm_keras" not in result["cache"]  # nothing was downloaded or converted


def test_the_shipped_presets_describe_themselves():
    for name in SHIPPED:
        metadata = DiffusionModel.presets[name]
        assert metadata["img_size"] == [32, 32] and metadata["parameter_count"] > 600_000
        assert metadata["training"]["steps"] > 10_000 and metadata["description"] and metadata["trained_on"]
        sampling = {k: v for k, v in metadata["sampling"].items() if k != "guidance_scale"}
        assert sampling == {"sampler": "ddpm", "num_steps": 50}
    assert DiffusionModel.presets["synthetic_flowers32_cond"]["sampling"]["guidance_scale"] > 1


@pytest.fixture(scope="module")
def extractor():
    return flower_features()


def sample_and_measure(name, extractor, num_samples, guidance=None):
    """Samples of seed 0 with the preset's recommended sampling (`guidance` overrides its scale), their features,
    and the real flowers' features; labels a quarter per class for a conditional preset."""
    model = DiffusionModel.from_preset(name, compile=False)
    sampling = dict(hub.read_metadata(name)["sampling"])
    recommended = sampling.pop("guidance_scale", 1.0)
    labels = None if model.num_classes is None else np.arange(num_samples) % model.num_classes
    conditioning = {} if labels is None else {"labels": labels, "guidance_scale": guidance or recommended}
    images = np.asarray(model.generate_images(num_samples, seed=0, verbose=0, **sampling, **conditioning))
    return (images, labels, extract_features(extractor, images), *real_flowers_features(extractor, model.num_classes))


@functools.lru_cache(maxsize=None)
def real_flowers_features(extractor, num_classes):
    """The features of bench/pretrained.py's reference, 4,096 real flowers (a quarter per class), and their labels."""
    labels = None if num_classes is None else np.arange(4096) % num_classes
    return extract_features(extractor, synthetic_flowers(4096, 32, seed=REFERENCE_SEED, labels=labels)), labels


def frechet(features, real_features):
    return frechet_distance(np.mean(features, 0), np.cov(features, rowvar=False),
                            np.mean(real_features, 0), np.cov(real_features, rowvar=False))


@pytest.mark.parametrize("name", SHIPPED)
def test_the_shipped_presets_draw_as_well_as_measured(name, extractor):
    num_samples, bound = QUALITY[name]
    images, labels, features, real_features, real_labels = sample_and_measure(name, extractor, num_samples)
    fd = frechet(features, real_features)
    assert fd <= bound, f"{name}: FD {fd:.1f} against the bound {bound}"
    if labels is None:
        return
    accuracy = float(np.mean(synthetic_class_of(images) == labels))
    assert accuracy >= CLASS_ACCURACY_BOUND, f"{name}: class accuracy {accuracy:.3f}"
    # What the recommended guidance gains over none, from the same noise: each class nearer its real flowers.
    unguided = sample_and_measure(name, extractor, num_samples, guidance=1.0)[2]
    ratio = (intra_class_frechet_distance(features, labels, real_features, real_labels)
             / intra_class_frechet_distance(unguided, labels, real_features, real_labels))
    assert ratio <= GUIDANCE_GAIN_BOUND, f"{name}: intra-class FD {ratio:.3f} of the unguided one"


def test_sample_takes_a_preset_and_names_a_bad_one(tmp_path, capsys):
    from PIL import Image

    from ddpm_keras.cli import main

    out = tmp_path / "flowers.png"
    assert main(["sample", "--preset", "synthetic_flowers32_cond", "--out", str(out), "--num-images", "4",
                 "--sampler", "ddim", "--steps", "2", "--class", "blue-6-petals"]) == 0
    assert Image.open(out).size[0] > 0 and "Wrote 4 samples" in capsys.readouterr().out
    assert main(["sample", "--preset", "no_such_preset", "--out", str(tmp_path / "x.png")]) != 0
    assert "--preset no_such_preset: Unknown preset" in capsys.readouterr().err
