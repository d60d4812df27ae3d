"""The faults of data.degrade against closed forms and SciPy, and the shipped flower extractor against them.

The extractor is trustworthy for FID only if real flowers sit near the
floor and every fault generated images have stands far above it.
"""

import numpy as np
import pytest
from scipy import ndimage

from ddpm_keras.data import synthetic_flowers
from ddpm_keras.data.degrade import DEGRADATIONS
from ddpm_keras.data.degrade import WRONG_PETAL_COUNTS
from ddpm_keras.data.degrade import degrade
from ddpm_keras.data.degrade import gaussian_blur
from ddpm_keras.data.degrade import shift_colours
from ddpm_keras.data.degrade import wrong_petal_flowers
from ddpm_keras.data.synthetic import draw_flowers
from ddpm_keras.metrics import extract_features
from ddpm_keras.metrics import flower_features
from ddpm_keras.metrics import frechet_distance


def test_noise_has_the_standard_deviation_asked_for():
    grey = np.zeros((8, 32, 32, 3), np.float32)
    for kind in ("noise", "grain"):
        noisy = degrade(grey, kind, 0.1, seed=3)
        assert noisy.std() == pytest.approx(0.1, rel=0.05), kind
        assert abs(noisy.mean()) < 0.01
    white = degrade(grey, "noise", 0.1, seed=3)
    grain = degrade(grey, "grain", 0.1, seed=3)
    neighbours = lambda x: np.corrcoef(x[:, :, 1:].ravel(), x[:, :, :-1].ravel())[0, 1]  # noqa: E731
    assert abs(neighbours(white)) < 0.05 and neighbours(grain) > 0.5  # grain is smooth over a pixel


def test_blur_matches_scipy_and_keeps_constants():
    images = synthetic_flowers(3, 16, seed=0)
    ours = gaussian_blur(images, 0.8)
    reference = ndimage.gaussian_filter(images, sigma=(0, 0.8, 0.8, 0), mode="nearest", truncate=3.0)
    np.testing.assert_allclose(ours, reference, atol=2e-3)
    flat = np.full((1, 8, 8, 3), 0.3, np.float32)
    np.testing.assert_allclose(gaussian_blur(flat, 1.3), flat, atol=1e-6)
    np.testing.assert_array_equal(degrade(images, "blur", 0.0), images)


def test_colour_shift_is_the_affine_map_clipped():
    images = synthetic_flowers(2, 8, seed=1)
    gain, offset = np.array([[1.2, 0.9, 1.0], [1.0, 1.0, 0.5]]), np.array([[0.1, -0.1, 0.0], [0.0, 0.2, 0.0]])
    rgb = (images + 1) / 2
    expected = np.clip(rgb * gain[:, None, None] + offset[:, None, None], 0, 1) * 2 - 1
    np.testing.assert_allclose(shift_colours(images, gain, offset), expected, atol=1e-6)


def test_wrong_petal_flowers_change_the_petal_count_only():
    images, params = wrong_petal_flowers(64, 16, seed=4, return_params=True)
    assert set(params["num_petals"]) <= set(WRONG_PETAL_COUNTS)
    _, real = synthetic_flowers(64, 16, seed=4, return_params=True)
    np.testing.assert_array_equal(params["radius"], real["radius"])
    np.testing.assert_array_equal(draw_flowers(real, 16), synthetic_flowers(64, 16, seed=4))
    assert not np.allclose(images, synthetic_flowers(64, 16, seed=4))


def test_bad_degradations_are_one_line_errors():
    images = synthetic_flowers(1, 8)
    with pytest.raises(ValueError, match="Unknown degradation: kind='jpeg'"):
        degrade(images, "jpeg", 0.1)
    with pytest.raises(ValueError, match="severity=-1"):
        degrade(images, "noise", -1)
    with pytest.raises(ValueError, match=r"images.shape=\(8, 8, 3\)"):
        degrade(images[0], "noise", 0.1)


@pytest.fixture(scope="module")
def extractor():
    return flower_features()


@pytest.mark.parametrize("img_size", [16, 32])
def test_the_shipped_extractor_puts_every_fault_far_above_the_floor(extractor, img_size):
    reference = extract_features(extractor, synthetic_flowers(2048, img_size, seed=7001))
    real = synthetic_flowers(500, img_size, seed=7002)

    def fd(images):
        features = extract_features(extractor, images)
        return frechet_distance(features.mean(0), np.cov(features, rowvar=False),
                                reference.mean(0), np.cov(reference, rowvar=False))

    floor = fd(real)
    faults = {kind: fd(degrade(real, kind, severity, seed=1))
              for kind, severity in zip(DEGRADATIONS, (0.08, 0.08, 0.7, 0.1))}
    faults["petals"] = fd(wrong_petal_flowers(500, img_size, seed=7002))
    assert all(value > 10 * floor for value in faults.values()), (floor, faults)
    # Stronger faults are further away.
    assert fd(degrade(real, "noise", 0.3, seed=1)) > faults["noise"]


def test_the_extractor_reads_any_image_size_and_names_a_missing_file(extractor, tmp_path):
    assert extractor.predict(synthetic_flowers(2, 64), verbose=0).shape == (2, 128)
    with pytest.raises(FileNotFoundError, match="No flower feature extractor at .*missing.keras"):
        flower_features(tmp_path / "missing.keras")
    corrupt = tmp_path / "corrupt.keras"
    corrupt.write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="Cannot load the flower feature extractor .*corrupt.keras"):
        flower_features(corrupt)
