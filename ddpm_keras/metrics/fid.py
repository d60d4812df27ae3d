"""The Frechet Inception Distance (Heusel et al. 2017)."""

import warnings

import numpy as np

from ddpm_keras.metrics.base import FeatureMetric
from ddpm_keras.metrics.reference import FeatureMoments


def frechet_distance(mean1, covariance1, mean2, covariance2):
    """The Frechet distance between `N(mean1, covariance1)` and `N(mean2, covariance2)`, in float64.

    `|mean1 - mean2|^2 + Tr(C1) + Tr(C2) - 2 Tr((C1 C2)^(1/2))`. The trace of
    the matrix square root is computed from symmetric eigen-decompositions:
    `Tr((C1 C2)^(1/2)) = sum sqrt(eig(C1^(1/2) C2 C1^(1/2)))`, exact for
    positive semi-definite matrices and free of the complex round-off of a
    general `sqrtm`.

    Returns:
        A float >= 0.
    """
    mean1, mean2 = np.asarray(mean1, np.float64), np.asarray(mean2, np.float64)
    covariance1, covariance2 = np.asarray(covariance1, np.float64), np.asarray(covariance2, np.float64)
    if mean1.shape != mean2.shape or covariance1.shape != covariance2.shape or covariance1.shape != mean1.shape * 2:
        raise ValueError(
            "The two Gaussians must have the same dimension. Received: means "
            f"{mean1.shape} and {mean2.shape}, covariances {covariance1.shape} and {covariance2.shape}"
        )
    values, vectors = np.linalg.eigh((covariance1 + covariance1.T) / 2.0)
    sqrt1 = (vectors * np.sqrt(np.clip(values, 0.0, None))) @ vectors.T
    product = sqrt1 @ covariance2 @ sqrt1
    trace_sqrt = np.sqrt(np.clip(np.linalg.eigvalsh((product + product.T) / 2.0), 0.0, None)).sum()
    diff = mean1 - mean2
    distance = diff @ diff + np.trace(covariance1) + np.trace(covariance2) - 2.0 * trace_sqrt
    return float(max(distance, 0.0))


def intra_class_frechet_distance(features, labels, reference_features, reference_labels):
    """The mean over classes of the Frechet distance within each class (intra-class FID, Miyato & Koyama 2018).

    For each class of `labels`, the Gaussian of its features against the
    Gaussian of the reference features of the same class. A class-conditional
    model that draws the right mixture of classes but blurs them together
    scores badly here while its plain FD may not; classifier-free guidance,
    which draws each class closer to its own real images, lowers it.

    Args:
        features: Array `(num_images, D)`, the generated images' features.
        labels: Integer array `(num_images,)`, the class each was drawn for.
        reference_features: Array `(num_real, D)`, real images' features.
        reference_labels: Integer array `(num_real,)`, their classes.

    Returns:
        A float >= 0: the mean of the per-class distances.

    Example:

    >>> intra_class_frechet_distance(extract_features(extractor, images), labels,
    ...                              extract_features(extractor, real), real_labels)
    """
    features, reference_features = np.asarray(features, np.float64), np.asarray(reference_features, np.float64)
    labels, reference_labels = np.asarray(labels), np.asarray(reference_labels)
    if len(features) != len(labels) or len(reference_features) != len(reference_labels):
        raise ValueError(
            f"One label per image is needed. Received: {len(features)} features with {len(labels)} labels, "
            f"{len(reference_features)} reference features with {len(reference_labels)} labels"
        )
    distances = []
    for label in np.unique(labels):
        ours, real = features[labels == label], reference_features[reference_labels == label]
        if len(ours) < 2 or len(real) < 2:
            raise ValueError(
                f"Class {label} has {len(ours)} generated and {len(real)} reference images; each class needs at "
                "least 2 of each. Draw more images per class."
            )
        distances.append(frechet_distance(ours.mean(0), np.cov(ours, rowvar=False),
                                          real.mean(0), np.cov(real, rowvar=False)))
    return float(np.mean(distances))


class FrechetInceptionDistance(FeatureMetric):
    """The Frechet distance between the feature Gaussians of generated and real images.

    The generated images' features are summed, with their outer products,
    in float64 as they arrive (`FeatureMoments`), so any number of images
    can be streamed through `update_state`; `result()` computes the
    distance to the reference's mean and covariance.

    FID from Keras's InceptionV3 weights compares models and checkpoints
    within this project; it is not the number papers report (they use the
    2015 TensorFlow Inception graph), and like every FID it depends on the
    number of samples: compare figures computed with the same count.

    Args:
        real_images: The reference, see `FeatureMetric`: real images, a
            dataset of them, a `ReferenceStatistics` or its `.npz` path.
        feature_extractor: A Keras model `images -> (batch, D)`. Defaults
            to `None`: `inception_features()`.
        batch_size: Integer, images per extractor call. Defaults to `64`.
        verbose: `0` or `1`, progress bars. Defaults to `0`.

    Example:

    >>> fid = FrechetInceptionDistance(real_images)
    >>> fid.update_state(model.generate_images(1000, seed=0, batch_size=250))
    >>> fid.result()
    31.4
    """

    def reset_state(self):
        self.moments = FeatureMoments()

    def update_features(self, features):
        self.moments.update(features)

    def result(self):
        """The Frechet distance, a float."""
        dims = len(self.reference.mean)
        count = self.moments.count
        if count < 2:
            raise ValueError(f"FID needs at least 2 generated images. Received: {count}")
        if min(count, self.reference.num_images) <= dims:
            warnings.warn(
                f"FID from {count} generated and {self.reference.num_images} real images in {dims} "
                "feature dimensions: a covariance from no more samples than dimensions is singular, "
                "and the distance is biased upwards. Use more images than dimensions.",
                stacklevel=2,
            )
        mean, covariance = self.moments.mean_and_covariance()
        return frechet_distance(mean, covariance, self.reference.mean, self.reference.covariance)
