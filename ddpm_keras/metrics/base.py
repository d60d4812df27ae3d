"""What the feature-based metrics share: the reference, the extractor, and `update_state` on arrays or datasets."""

import os

from ddpm_keras.metrics.features import extract_features
from ddpm_keras.metrics.features import extractor_id
from ddpm_keras.metrics.features import inception_features
from ddpm_keras.metrics.reference import ReferenceStatistics
from ddpm_keras.metrics.reference import reference_statistics
from ddpm_keras.utils.checks import check_positive_int


def as_reference(real_images, feature_extractor, keep_features=True, batch_size=64, verbose=0):
    """`real_images` as a `ReferenceStatistics` made with `feature_extractor`.

    Loaded from an `.npz` path, computed from images or a dataset (not
    cached), or checked as given: statistics of another extractor, or
    without the features when `keep_features`, are a `ValueError`.
    """
    if isinstance(real_images, (str, os.PathLike)):
        real_images = ReferenceStatistics.load(real_images)
    if not isinstance(real_images, ReferenceStatistics):
        return reference_statistics(
            real_images, feature_extractor, cache_dir=False, keep_features=keep_features,
            batch_size=batch_size, verbose=verbose,
        )
    identity = extractor_id(feature_extractor)
    if real_images.extractor and real_images.extractor != identity:
        raise ValueError(
            f"The reference statistics were computed with the feature extractor {real_images.extractor}, "
            f"not {identity}: pass that extractor as feature_extractor, or recompute the reference."
        )
    if keep_features and real_images.features is None:
        raise ValueError(
            "KID needs the reference features, and these statistics hold only their moments: "
            "compute them with reference_statistics(..., keep_features=True)."
        )
    return real_images


class FeatureMetric:
    """A metric comparing generated images with a reference in a feature space.

    Subclasses implement `update_features(features)`, `reset_state()` and
    `result()`. The metrics are plain Python objects with Keras's metric
    interface (`update_state`, `result`, `reset_state`) rather than
    `keras.metrics.Metric`s: they run a large extractor and keep float64
    state on the host, so they belong in callbacks and scripts, not inside
    a compiled train step.

    Args:
        real_images: The reference: an array `(N, H, W, C)` of real images
            in `[-1, 1]`, a `tf.data.Dataset` of them, a
            `ReferenceStatistics`, or the path of an `.npz` file written by
            `ReferenceStatistics.save` / `reference_statistics`.
        feature_extractor: A Keras model `images -> (batch, D)`, or `None`
            for `inception_features()` (InceptionV3, ImageNet weights).
        batch_size: Integer, images per extractor call. Defaults to `64`.
        verbose: `0` or `1`, progress bars over feature extraction.
            Defaults to `0`.
    """

    needs_reference_features = False

    def __init__(self, real_images, feature_extractor=None, batch_size=64, verbose=0):
        self.batch_size = check_positive_int("batch_size", batch_size)
        self.verbose = verbose
        if feature_extractor is None:
            feature_extractor = inception_features()
        self.feature_extractor = feature_extractor
        self.reference = as_reference(
            real_images, feature_extractor, keep_features=self.needs_reference_features,
            batch_size=self.batch_size, verbose=verbose,
        )
        self.reset_state()

    def update_state(self, images):
        """Adds generated images: an array `(N, H, W, C)` in `[-1, 1]`, or a dataset of batches."""
        self.update_features(
            extract_features(self.feature_extractor, images, batch_size=self.batch_size, verbose=self.verbose)
        )

    def update_features(self, features):
        """Adds features `(n, D)` that this metric's `feature_extractor` computed from generated images."""
        raise NotImplementedError

    def reset_state(self):
        raise NotImplementedError

    def result(self):
        raise NotImplementedError
