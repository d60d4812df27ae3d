"""The Inception Score (Salimans et al. 2016)."""

import numpy as np

from ddpm_keras.metrics.features import extract_features
from ddpm_keras.metrics.features import inception_classifier
from ddpm_keras.utils.checks import check_positive_int


def inception_score(probabilities, splits=10):
    """`exp(E_x KL(p(y|x) || p(y)))` in each of `splits` parts; their mean and standard deviation.

    Args:
        probabilities: Array `(N, K)` of class probabilities, rows summing
            to 1.
        splits: Integer, the number of parts (the protocol's 10). Defaults
            to `10`.

    Returns:
        `(mean, std)`, floats. One class predicted with certainty for every
        image gives 1; `k` classes predicted with certainty, equally often,
        give `k`.
    """
    probabilities = np.asarray(probabilities, dtype=np.float64)
    splits = check_positive_int("splits", splits)
    if probabilities.ndim != 2 or len(probabilities) < splits:
        raise ValueError(
            f"The Inception Score needs at least splits={splits} images of class probabilities (N, K). "
            f"Received: shape={probabilities.shape}"
        )
    if np.any(probabilities < 0.0) or not np.allclose(probabilities.sum(axis=1), 1.0, atol=1e-3):
        raise ValueError(
            "The classifier must output class probabilities (non-negative, rows summing to 1): "
            "end it with a softmax."
        )
    scores = []
    for part in np.array_split(probabilities, splits):
        marginal = part.mean(axis=0, keepdims=True)
        kl = np.sum(part * (np.log(np.maximum(part, 1e-30)) - np.log(np.maximum(marginal, 1e-30))), axis=1)
        scores.append(np.exp(kl.mean()))
    return float(np.mean(scores)), float(np.std(scores))


class InceptionScore:
    """The Inception Score of generated images: confident and diverse class predictions score high.

    It needs no reference images. The score of a generator is only
    comparable at the same number of images and splits, and with the same
    classifier.

    Args:
        classifier: A Keras model `images in [-1, 1] -> (batch, K)` class
            probabilities. Defaults to `None`: `inception_classifier()`
            (InceptionV3, ImageNet's 1,000 classes).
        splits: Integer, the number of parts whose scores are averaged.
            Defaults to `10`.
        batch_size: Integer, images per classifier call. Defaults to `64`.
        verbose: `0` or `1`, progress bars. Defaults to `0`.

    Example:

    >>> score = InceptionScore()
    >>> score.update_state(generated)
    >>> mean, std = score.result(return_std=True)
    """

    def __init__(self, classifier=None, splits=10, batch_size=64, verbose=0):
        if classifier is None:
            classifier = inception_classifier()
        self.classifier = classifier
        self.splits = check_positive_int("splits", splits)
        self.batch_size = check_positive_int("batch_size", batch_size)
        self.verbose = verbose
        self.reset_state()

    def reset_state(self):
        self._probabilities = []

    def update_state(self, images):
        """Adds generated images: an array `(N, H, W, C)` in `[-1, 1]`, or a dataset of batches."""
        self._probabilities.append(
            extract_features(self.classifier, images, batch_size=self.batch_size, verbose=self.verbose)
        )

    def result(self, return_std=False):
        """The mean score over splits; `(mean, std)` with `return_std=True`."""
        if not self._probabilities:
            raise ValueError("No images: call update_state first.")
        mean, std = inception_score(np.concatenate(self._probabilities), self.splits)
        return (mean, std) if return_std else mean
