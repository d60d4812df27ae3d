"""Feature statistics of the real images, computed once and cached as `.npz`.

A Frechet distance needs the mean and covariance of the real images'
features; the Kernel Inception Distance needs the features themselves.
Computing them for a dataset costs a pass of the extractor over every
image, so `reference_statistics` caches them in a file named by the
dataset, split, image size and extractor, holding a fingerprint of the
images: a cache whose images have changed is recomputed, never reused.
"""

import hashlib
import os
import warnings

import numpy as np

from ddpm_keras.metrics.features import extract_features
from ddpm_keras.metrics.features import extractor_id
from ddpm_keras.metrics.features import image_batches
from ddpm_keras.metrics.features import inception_features
from ddpm_keras.utils import files
from ddpm_keras.utils.files import atomic_write

CACHE_ENV = "DDPM_KERAS_CACHE"


class FeatureMoments:
    """Streaming mean and covariance of feature vectors, accumulated in float64 on the host.

    Sums of the features and of their outer products are kept relative to
    a shift (the mean of the first batch), so that the covariance does not
    lose digits to a large mean. Works the same on every Keras backend.

    Example:

    >>> moments = FeatureMoments()
    >>> for batch in batches:
    ...     moments.update(batch)
    >>> mean, covariance = moments.mean_and_covariance()
    """

    def __init__(self):
        self.reset()

    def reset(self):
        self.count = 0
        self._shift = None
        self._sum = None
        self._outer = None

    def update(self, features):
        """Adds a batch `(n, D)` of feature vectors."""
        features = np.asarray(features, dtype=np.float64)
        if self._shift is None:
            self._shift = features.mean(axis=0)
            self._sum = np.zeros_like(self._shift)
            self._outer = np.zeros((len(self._shift),) * 2)
        centred = features - self._shift
        self.count += len(features)
        self._sum += centred.sum(axis=0)
        self._outer += centred.T @ centred

    def mean_and_covariance(self):
        """The mean `(D,)` and the unbiased covariance `(D, D)` of every feature seen."""
        if self.count < 2:
            raise ValueError(f"A covariance needs at least 2 feature vectors. Received: {self.count}")
        centred_mean = self._sum / self.count
        covariance = (self._outer - self.count * np.outer(centred_mean, centred_mean)) / (self.count - 1)
        return self._shift + centred_mean, covariance


class ReferenceStatistics:
    """The real images' feature statistics: mean, covariance and (for KID) the features.

    Args:
        mean: Float array `(D,)`.
        covariance: Float array `(D, D)`.
        num_images: Integer, the number of images they summarise.
        features: Float array `(num_images, D)` or `None`. Needed by the
            Kernel Inception Distance. Defaults to `None`.
        extractor: String, the `extractor_id` of the feature extractor.
            Defaults to `""` (unknown).
        fingerprint: String, the `fingerprint` of the images. Defaults to
            `""`.
    """

    def __init__(self, mean, covariance, num_images, features=None, extractor="", fingerprint=""):
        self.mean = np.asarray(mean, dtype=np.float64)
        self.covariance = np.asarray(covariance, dtype=np.float64)
        self.num_images = int(num_images)
        self.features = None if features is None else np.asarray(features, dtype=np.float32)
        self.extractor = str(extractor)
        self.fingerprint = str(fingerprint)

    @classmethod
    def from_features(cls, features, extractor="", fingerprint="", keep_features=True):
        """Statistics of a feature array `(N, D)`."""
        moments = FeatureMoments()
        moments.update(features)
        mean, covariance = moments.mean_and_covariance()
        return cls(mean, covariance, len(features), features if keep_features else None, extractor, fingerprint)

    def save(self, path):
        """Writes an `.npz` file, through a temporary file and a rename."""
        arrays = {"mean": self.mean, "covariance": self.covariance, "num_images": self.num_images,
                  "extractor": self.extractor, "fingerprint": self.fingerprint}
        if self.features is not None:
            arrays["features"] = self.features
        return atomic_write(path, lambda f: np.savez(f, **arrays))

    @classmethod
    def load(cls, path):
        """Reads a file written by `save`."""
        path = os.fspath(path)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"No reference statistics file at {path}.")
        with np.load(path) as data:
            return cls(
                data["mean"], data["covariance"], int(data["num_images"]),
                data["features"] if "features" in data else None,
                str(data["extractor"]), str(data["fingerprint"]),
            )

    def __repr__(self):
        return (f"ReferenceStatistics(num_images={self.num_images}, dims={len(self.mean)}, "
                f"features={'yes' if self.features is not None else 'no'}, extractor={self.extractor!r})")


def fingerprint(data, batch_size=256):
    """An identity of a set of images, independent of their order.

    The images are quantised to 8 bits and hashed one by one; the sorted
    hashes are hashed together with the count and the image shape. A
    shuffled copy of the same images has the same fingerprint; one changed
    pixel, image or count gives another. (Random augmentation changes it:
    fingerprint unaugmented data.)

    Returns:
        A string `"<count>x<H>x<W>x<C>-<hash>"`.
    """
    digests, shape = [], None
    for batch in image_batches(data, batch_size):
        shape = batch.shape[1:]
        quantised = np.round((np.clip(batch, -1.0, 1.0) + 1.0) * 127.5).astype(np.uint8)
        digests.extend(hashlib.blake2b(image.tobytes(), digest_size=8).digest() for image in quantised)
    if not digests:
        raise ValueError("No images to fingerprint: the data is empty.")
    combined = hashlib.blake2b(b"".join(sorted(digests)), digest_size=10).hexdigest()
    return f"{len(digests)}x{'x'.join(str(s) for s in shape)}-{combined}"


def default_cache_dir():
    """`$DDPM_KERAS_CACHE/reference`, by default `~/.cache/ddpm_keras/reference`."""
    root = os.environ.get(CACHE_ENV) or os.path.join(os.path.expanduser("~"), ".cache", "ddpm_keras")
    return os.path.join(root, "reference")


def reference_statistics(
    data,
    feature_extractor=None,
    dataset_name="data",
    split="all",
    cache_dir=None,
    keep_features=True,
    batch_size=64,
    verbose=1,
):
    """The real images' feature statistics, from the cache when the images are unchanged.

    The cache file is `<cache_dir>/<dataset_name>-<split>-<H>x<W>-<extractor id>.npz`.
    It is reused only when it holds the same images (`fingerprint`: count
    and a hash of every image) and, if `keep_features`, the features;
    otherwise the statistics are recomputed and the file rewritten, with a
    warning when a stale file is replaced.

    Args:
        data: The real images in `[-1, 1]`: an array `(N, H, W, C)` or a
            `tf.data.Dataset` of batches (or of `(images, labels)`),
            unaugmented (random flips change the fingerprint).
        feature_extractor: A Keras model `images -> (batch, D)`. Defaults
            to `None`: `inception_features()`.
        dataset_name: String, names the data in the cache file. Defaults to
            `"data"`.
        split: String, names the split in the cache file. Defaults to
            `"all"`.
        cache_dir: String, `None` (`default_cache_dir()`) or `False` (no
            cache). Defaults to `None`.
        keep_features: Boolean, also keep the features (KID needs them).
            Defaults to `True`.
        batch_size: Integer, images per extractor call. Defaults to `64`.
        verbose: `0` or `1`, progress bars. Defaults to `1`.

    Returns:
        A `ReferenceStatistics`.

    Example:

    >>> real = load_flowers("train", shuffle=False, augment=False)
    >>> reference = reference_statistics(real, dataset_name="oxford_flowers102", split="train")
    >>> fid = FrechetInceptionDistance(reference)
    """
    if feature_extractor is None:
        feature_extractor = inception_features()
    identity = extractor_id(feature_extractor)
    print_ = print if verbose else (lambda *args, **kwargs: None)
    images_id = fingerprint(data) if cache_dir is not False else ""  # a pass over the data only to cache
    path = None
    if cache_dir is not False:
        size = "x".join(images_id.split("-")[0].split("x")[1:3])
        name = "-".join(files.slug(part).strip("_") or "data" for part in (dataset_name, split, size, identity))
        path = os.path.join(cache_dir or default_cache_dir(), f"{name}.npz")
        cached = _load_if_current(path, images_id, identity, keep_features)
        if cached is _NOT_OURS:
            path = None
        elif cached is not None:
            print_(f"Reference statistics of {cached.num_images} images from {path}")
            return cached
    print_(f"Computing reference statistics of {dataset_name} ({split}) with {feature_extractor.name}")
    features = extract_features(feature_extractor, data, batch_size=batch_size, verbose=verbose)
    statistics = ReferenceStatistics.from_features(features, identity, images_id, keep_features)
    if path is not None:
        statistics.save(path)
        print_(f"Saved them to {path}")
    return statistics


_NOT_OURS = object()


def _load_if_current(path, images_id, identity, keep_features):
    """The cached statistics when current; `None` to compute (and cache) them; `_NOT_OURS` to compute only.

    A file at the cache's path that is not reference statistics (unreadable,
    or of other arrays) is not ours to replace: it is left as it is.
    """
    if not os.path.lexists(path):
        return None
    try:
        cached = ReferenceStatistics.load(path)
    except (OSError, ValueError, KeyError) as error:
        warnings.warn(f"{path} is not readable reference statistics ({error}): computing them without caching, "
                      "and leaving that file as it is.", stacklevel=3)
        return _NOT_OURS
    if cached.fingerprint == images_id and cached.extractor == identity and (
        cached.features is not None or not keep_features
    ):
        return cached
    if cached.fingerprint != images_id:
        warnings.warn(
            f"The images differ from those of the cached reference statistics {path} "
            f"({cached.fingerprint} != {images_id}): recomputing them.", stacklevel=3,
        )
    return None
