"""FID, KID, the Inception Score and reference statistics against closed forms and direct computations."""

import os
import time

import keras
import numpy as np
import pytest
import scipy.linalg

from ddpm_keras.metrics import FeatureMoments
from ddpm_keras.metrics import FrechetInceptionDistance
from ddpm_keras.metrics import InceptionScore
from ddpm_keras.metrics import KernelInceptionDistance
from ddpm_keras.metrics import ReferenceStatistics
from ddpm_keras.metrics import WeightsUnavailableError
from ddpm_keras.metrics import extractor_id
from ddpm_keras.metrics import features as features_module
from ddpm_keras.metrics import frechet_distance
from ddpm_keras.metrics import inception_features
from ddpm_keras.metrics import inception_score
from ddpm_keras.metrics import intra_class_frechet_distance
from ddpm_keras.metrics import kernel_distance
from ddpm_keras.metrics import mmd2_unbiased
from ddpm_keras.metrics import reference as reference_module
from ddpm_keras.metrics import reference_statistics


def flatten_extractor(size=2, offset=3.0):
    """`images (N, size, size, 3) -> (N, 3 size^2)`: the pixels themselves, shifted by `offset`."""
    inputs = keras.Input((size, size, 3))
    outputs = keras.layers.Rescaling(1.0, offset=offset)(keras.layers.Flatten()(inputs))
    return keras.Model(inputs, outputs, name="flatten")


def gaussian_images(n, mean, scale, seed, size=2):
    rng = np.random.default_rng(seed)
    return (mean + scale * rng.standard_normal((n, size, size, 3))).astype(np.float32)


def random_spd(dims, seed):
    a = np.random.default_rng(seed).standard_normal((dims, dims))
    return a @ a.T / dims + 0.1 * np.eye(dims)


def test_frechet_distance_matches_the_closed_form_for_commuting_covariances():
    rng = np.random.default_rng(0)
    mean1, mean2 = rng.normal(size=5), rng.normal(size=5)
    variances1, variances2 = rng.uniform(0.1, 2.0, 5), rng.uniform(0.1, 2.0, 5)
    # Diagonal covariances: Tr((C1 C2)^(1/2)) = sum sqrt(v1 v2).
    expected = np.sum((mean1 - mean2) ** 2) + np.sum((np.sqrt(variances1) - np.sqrt(variances2)) ** 2)
    got = frechet_distance(mean1, np.diag(variances1), mean2, np.diag(variances2))
    assert got == pytest.approx(expected, rel=1e-10)


def test_frechet_distance_matches_scipy_sqrtm_and_is_zero_for_identical_gaussians():
    c1, c2 = random_spd(6, 1), random_spd(6, 2)
    mean1, mean2 = np.arange(6.0), np.arange(6.0)[::-1]
    reference = np.sum((mean1 - mean2) ** 2) + np.trace(c1) + np.trace(c2) - 2 * np.trace(scipy.linalg.sqrtm(c1 @ c2)).real
    assert frechet_distance(mean1, c1, mean2, c2) == pytest.approx(reference, rel=1e-9)
    assert frechet_distance(mean1, c1, mean1, c1) == pytest.approx(0.0, abs=1e-9)


def test_intra_class_fid_is_the_mean_of_the_per_class_distances():
    rng = np.random.default_rng(0)
    reference = rng.normal(size=(300, 4))
    reference_labels = np.arange(300) % 3
    # Class 0 drawn exactly as its real images, class 1 shifted by d (FD |d|^2), class 2 scaled by 2 (FD Tr(C)).
    shift = np.array([1.0, -2.0, 0.5, 0.0])
    features = reference.copy()
    features[reference_labels == 1] += shift
    features[reference_labels == 2] = 2 * features[reference_labels == 2] - reference[reference_labels == 2].mean(0)
    trace = np.trace(np.cov(reference[reference_labels == 2], rowvar=False))
    expected = (0.0 + shift @ shift + trace) / 3
    got = intra_class_frechet_distance(features, reference_labels, reference, reference_labels)
    assert got == pytest.approx(expected, rel=1e-9)
    # The plain FD of the pooled images cannot see a class drawn as another: here it is 0, the intra-class FD is not.
    distinct = reference + 3.0 * np.eye(4)[reference_labels]  # the class means 3 apart in their own axis
    swapped = np.where(reference_labels == 0, 1, np.where(reference_labels == 1, 0, reference_labels))
    pooled = frechet_distance(distinct.mean(0), np.cov(distinct, rowvar=False), distinct.mean(0),
                              np.cov(distinct, rowvar=False))
    assert pooled == pytest.approx(0.0, abs=1e-9)
    assert intra_class_frechet_distance(distinct, swapped, distinct, reference_labels) == pytest.approx(
        2 * 18.0 / 3, rel=0.1)  # |3 e0 - 3 e1|^2 = 18 for two of the three classes
    with pytest.raises(ValueError, match="Class 5 has 1 generated"):
        intra_class_frechet_distance(reference[:4], [0, 0, 5, 0], reference, reference_labels)


@pytest.mark.parametrize("batch_size", [3, 16, 100])
def test_streaming_fid_equals_the_one_shot_float64_computation(batch_size):
    real = gaussian_images(100, 0.0, 0.5, seed=0)
    fake = gaussian_images(90, 0.1, 0.4, seed=1)
    extractor = flatten_extractor()
    fid = FrechetInceptionDistance(real, extractor, batch_size=batch_size)
    for chunk in np.array_split(fake, 4):
        fid.update_state(chunk)
    # Independent reference: numpy's covariance and scipy's sqrtm on the float64 features.
    f_real = real.reshape(len(real), -1).astype(np.float64) + 3.0
    f_fake = fake.reshape(len(fake), -1).astype(np.float64) + 3.0
    c_real, c_fake = np.cov(f_real, rowvar=False), np.cov(f_fake, rowvar=False)
    diff = f_real.mean(0) - f_fake.mean(0)
    expected = diff @ diff + np.trace(c_real) + np.trace(c_fake) - 2 * np.trace(scipy.linalg.sqrtm(c_real @ c_fake)).real
    assert fid.result() == pytest.approx(expected, rel=1e-6)
    fid.reset_state()
    fid.update_state(real)
    assert fid.result() == pytest.approx(0.0, abs=1e-6)


def test_feature_moments_keep_their_digits_under_a_large_mean():
    rng = np.random.default_rng(0)
    features = 1e6 + rng.standard_normal((2000, 3))
    moments = FeatureMoments()
    for chunk in np.array_split(features, 7):
        moments.update(chunk)
    mean, covariance = moments.mean_and_covariance()
    np.testing.assert_allclose(mean, features.mean(0), rtol=1e-12)
    np.testing.assert_allclose(covariance, np.cov(features, rowvar=False), rtol=1e-6, atol=1e-9)


def test_fid_warns_when_the_covariance_is_singular():
    fid = FrechetInceptionDistance(gaussian_images(100, 0.0, 0.5, seed=0), flatten_extractor())
    fid.update_state(gaussian_images(5, 0.0, 0.5, seed=1))  # 5 images, 12 feature dimensions
    with pytest.warns(UserWarning, match="singular"):
        fid.result()


def test_mmd_equals_the_direct_double_sum():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(7, 4)), rng.normal(0.3, 1.0, size=(9, 4))

    def k(a, b):
        return (a @ b / 4 + 1.0) ** 3

    xx = sum(k(x[i], x[j]) for i in range(7) for j in range(7) if i != j) / (7 * 6)
    yy = sum(k(y[i], y[j]) for i in range(9) for j in range(9) if i != j) / (9 * 8)
    xy = sum(k(x[i], y[j]) for i in range(7) for j in range(9)) / (7 * 9)
    assert mmd2_unbiased(x, y) == pytest.approx(xx + yy - 2 * xy, rel=1e-12)


def test_kid_is_unbiased_for_one_distribution_and_positive_for_two():
    rng = np.random.default_rng(0)
    reference = rng.normal(size=(600, 8))
    same = rng.normal(size=(600, 8))
    mean, std = kernel_distance(same, reference, subset_size=100, num_subsets=200, seed=0)
    # Unbiased: the mean over subsets is within its standard error of 0.
    assert abs(mean) < 3 * std / np.sqrt(200)
    shifted_mean, shifted_std = kernel_distance(rng.normal(0.5, 1.0, (600, 8)), reference, 100, 200, seed=0)
    assert shifted_mean > 10 * shifted_std / np.sqrt(200) and shifted_mean > 10 * abs(mean)


def test_kid_metric_streams_images_and_reports_its_spread():
    real = gaussian_images(200, 0.0, 0.5, seed=0)
    kid = KernelInceptionDistance(real, flatten_extractor(), subset_size=50, num_subsets=20)
    kid.update_state(gaussian_images(60, 0.3, 0.5, seed=1))
    kid.update_state(gaussian_images(60, 0.3, 0.5, seed=2))
    mean, std = kid.result(return_std=True)
    features = np.concatenate([gaussian_images(60, 0.3, 0.5, seed=s).reshape(60, -1) for s in (1, 2)]) + 3.0
    expected = kernel_distance(features, real.reshape(200, -1) + 3.0, 50, 20, seed=0)
    assert (mean, std) == pytest.approx(expected, rel=1e-5)
    assert mean > 0 and kid.result() == mean


def test_inception_score_is_1_for_identical_and_k_for_k_equiprobable_classes():
    identical = np.tile([[0.2, 0.5, 0.3]], (40, 1))
    assert inception_score(identical, splits=4)[0] == pytest.approx(1.0, abs=1e-12)
    one_hot = np.eye(5)[np.arange(100) % 5]  # each split of 10 holds every class twice
    mean, std = inception_score(one_hot, splits=10)
    assert mean == pytest.approx(5.0, rel=1e-9) and std == pytest.approx(0.0, abs=1e-9)


def test_inception_score_metric_runs_its_classifier_and_checks_its_output():
    inputs = keras.Input((2, 2, 3))
    logits = keras.layers.Dense(4)(keras.layers.Flatten()(inputs))
    classifier = keras.Model(inputs, keras.layers.Softmax()(logits))
    images = gaussian_images(20, 0.0, 1.0, seed=0)
    score = InceptionScore(classifier, splits=2)
    score.update_state(images)
    expected = inception_score(np.asarray(classifier.predict(images, verbose=0), np.float64), splits=2)
    assert score.result(return_std=True) == pytest.approx(expected, rel=1e-5)
    logits_only = InceptionScore(keras.Model(inputs, logits), splits=2)
    logits_only.update_state(images)
    with pytest.raises(ValueError, match="softmax"):
        logits_only.result()


def test_inception_features_resize_to_299_and_pool_2048_features():
    extractor = inception_features(weights=None)
    resized = extractor.get_layer("resize_299")
    assert tuple(resized.output.shape[1:3]) == (299, 299)
    features = extractor.predict(np.zeros((2, 16, 16, 3), np.float32), verbose=0)
    assert features.shape == (2, 2048) and np.all(np.isfinite(features))


def test_offline_imagenet_weights_are_a_one_line_error_naming_file_cache_and_fix(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    monkeypatch.setattr(features_module, "probe_host", lambda url: "storage.googleapis.com: no network")
    start = time.perf_counter()
    with pytest.raises(WeightsUnavailableError) as error:
        inception_features()
    message = str(error.value)
    assert time.perf_counter() - start < 5
    assert "\n" not in message
    assert "inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5" in message
    assert os.path.join(str(tmp_path), "models") in message and "--inception-weights" in message
    with pytest.raises(FileNotFoundError, match="no_such.h5"):
        inception_features(weights=str(tmp_path / "no_such.h5"))


def test_cached_imagenet_weights_are_used_without_the_network(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    monkeypatch.setattr(features_module, "probe_host", pytest.fail)
    cached = tmp_path / "models" / "inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5"
    cached.parent.mkdir()
    cached.write_bytes(b"")
    assert features_module.resolve_inception_weights("imagenet") == str(cached)


def test_reference_cache_is_reused_for_the_same_images_and_recomputed_when_they_change(tmp_path, monkeypatch):
    extractor = flatten_extractor()
    calls = []
    original = reference_module.extract_features
    monkeypatch.setattr(reference_module, "extract_features", lambda *a, **k: calls.append(1) or original(*a, **k))
    images = gaussian_images(50, 0.0, 0.5, seed=0)
    kwargs = dict(dataset_name="toy", split="train", cache_dir=str(tmp_path), verbose=0)
    first = reference_statistics(images, extractor, **kwargs)
    again = reference_statistics(images[::-1].copy(), extractor, **kwargs)  # same images, another order
    assert len(calls) == 1
    np.testing.assert_array_equal(again.covariance, first.covariance)
    assert [p.name for p in tmp_path.iterdir()] == [f"toy-train-2x2-{extractor_id(extractor).replace('-', '_')}.npz"]
    changed = images.copy()
    changed[7, 0, 0, 0] += 0.5
    with pytest.warns(UserWarning, match="recomputing"):
        recomputed = reference_statistics(changed, extractor, **kwargs)
    assert len(calls) == 2 and not np.allclose(recomputed.mean, first.mean)
    other = flatten_extractor(offset=-1.0)
    reference_statistics(images, other, **kwargs)  # another extractor: its own file
    assert len(calls) == 3 and len(list(tmp_path.iterdir())) == 2


def test_reference_statistics_round_trip_and_guard_against_the_wrong_extractor(tmp_path):
    extractor = flatten_extractor()
    images = gaussian_images(40, 0.0, 0.5, seed=0)
    statistics = reference_statistics(images, extractor, cache_dir=False, keep_features=False, verbose=0)
    loaded = ReferenceStatistics.load(statistics.save(tmp_path / "stats.npz"))
    np.testing.assert_array_equal(loaded.covariance, statistics.covariance)
    assert loaded.extractor == extractor_id(extractor) and loaded.features is None
    fid = FrechetInceptionDistance(str(tmp_path / "stats.npz"), extractor)
    fid.update_state(images)
    assert fid.result() == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ValueError, match="keep_features=True"):
        KernelInceptionDistance(loaded, extractor)
    with pytest.raises(ValueError, match="feature extractor"):
        FrechetInceptionDistance(loaded, flatten_extractor(offset=0.0))
