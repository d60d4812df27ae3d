"""The Kernel Inception Distance (Binkowski et al. 2018)."""

import numpy as np

from ddpm_keras.metrics.base import FeatureMetric
from ddpm_keras.utils.checks import check_positive_int


def polynomial_kernel(x, y):
    """`(x . y / d + 1)^3` for every pair of rows, in float64: `(len(x), len(y))`."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    return (x @ y.T / x.shape[1] + 1.0) ** 3


def mmd2_unbiased(x, y):
    """The unbiased estimate of MMD^2 between the samples `x` and `y` with `polynomial_kernel`.

    `sum_{i != j} k(x_i, x_j) / (m (m - 1)) + sum_{i != j} k(y_i, y_j) / (n (n - 1))
    - 2 sum_{i, j} k(x_i, y_j) / (m n)`: its expectation is 0 when both
    samples come from one distribution.
    """
    m, n = len(x), len(y)
    if min(m, n) < 2:
        raise ValueError(f"MMD needs at least 2 samples on each side. Received: {m} and {n}")
    k_xx, k_yy, k_xy = polynomial_kernel(x, x), polynomial_kernel(y, y), polynomial_kernel(x, y)
    return float(
        (k_xx.sum() - np.trace(k_xx)) / (m * (m - 1))
        + (k_yy.sum() - np.trace(k_yy)) / (n * (n - 1))
        - 2.0 * k_xy.mean()
    )


def kernel_distance(features, reference_features, subset_size=1000, num_subsets=100, seed=0):
    """KID: the mean and standard deviation of `mmd2_unbiased` over random subsets.

    Each subset draws `min(subset_size, len(features), len(reference_features))`
    rows of each side without replacement.

    Returns:
        `(mean, std)`, floats.
    """
    rng = np.random.default_rng(seed)
    size = min(subset_size, len(features), len(reference_features))
    values = [
        mmd2_unbiased(
            features[rng.choice(len(features), size, replace=False)],
            reference_features[rng.choice(len(reference_features), size, replace=False)],
        )
        for _ in range(num_subsets)
    ]
    return float(np.mean(values)), float(np.std(values))


class KernelInceptionDistance(FeatureMetric):
    """The unbiased squared MMD between generated and real features, cubic polynomial kernel.

    Unlike FID, KID is unbiased: its expectation does not depend on the
    number of samples, and it is about 0 for two samples of one
    distribution. It is averaged over `num_subsets` random subsets of
    `subset_size` images (fewer when fewer are available); `result()`
    returns the mean, `result(return_std=True)` the mean and the standard
    deviation over the subsets.

    Args:
        real_images: The reference, see `FeatureMetric`; statistics must
            hold the features (`keep_features=True`).
        feature_extractor: A Keras model `images -> (batch, D)`. Defaults
            to `None`: `inception_features()`.
        subset_size: Integer, images per subset. Defaults to `1000`.
        num_subsets: Integer, the number of subsets. Defaults to `100`.
        seed: Integer, the seed of the subset draws. Defaults to `0`.
        batch_size: Integer, images per extractor call. Defaults to `64`.
        verbose: `0` or `1`, progress bars. Defaults to `0`.

    Example:

    >>> kid = KernelInceptionDistance(real_images, subset_size=500)
    >>> kid.update_state(generated)
    >>> mean, std = kid.result(return_std=True)
    """

    needs_reference_features = True

    def __init__(self, real_images, feature_extractor=None, subset_size=1000, num_subsets=100, seed=0,
                 batch_size=64, verbose=0):
        self.subset_size = check_positive_int("subset_size", subset_size)
        self.num_subsets = check_positive_int("num_subsets", num_subsets)
        self.seed = seed
        super().__init__(real_images, feature_extractor, batch_size=batch_size, verbose=verbose)

    def reset_state(self):
        self._features = []

    def update_features(self, features):
        self._features.append(features)

    def result(self, return_std=False):
        """The mean KID over subsets; `(mean, std)` with `return_std=True`."""
        count = sum(len(f) for f in self._features)
        if count < 2:
            raise ValueError(f"KID needs at least 2 generated images. Received: {count}")
        mean, std = kernel_distance(
            np.concatenate(self._features), self.reference.features, self.subset_size, self.num_subsets, self.seed
        )
        return (mean, std) if return_std else mean
