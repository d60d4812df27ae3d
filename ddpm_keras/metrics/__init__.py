"""Sample quality: FID, KID and the Inception Score, with their feature extractors and reference statistics.

This package knows nothing of training: it takes images (arrays in
`[-1, 1]` or `tf.data` datasets of them) and Keras models that map images
to features. `ddpm_keras.training.callbacks.QualityMonitor` and
`ddpm-keras evaluate` are built on it. The likelihood in bits per dimension
is `DiffusionModel.bits_per_dim`.

Example:

>>> from ddpm_keras.metrics import FrechetInceptionDistance, reference_statistics
>>> reference = reference_statistics(real_images, dataset_name="flowers", split="train")
>>> fid = FrechetInceptionDistance(reference)
>>> fid.update_state(model.generate_images(1000, seed=0, batch_size=250))
>>> fid.result()
"""

from ddpm_keras.metrics.distances import sample_distances
from ddpm_keras.metrics.features import WeightsUnavailableError
from ddpm_keras.metrics.features import extract_features
from ddpm_keras.metrics.features import extractor_id
from ddpm_keras.metrics.features import inception_classifier
from ddpm_keras.metrics.features import inception_features
from ddpm_keras.metrics.fid import FrechetInceptionDistance
from ddpm_keras.metrics.flowers import flower_features
from ddpm_keras.metrics.fid import frechet_distance
from ddpm_keras.metrics.fid import intra_class_frechet_distance
from ddpm_keras.metrics.inception_score import InceptionScore
from ddpm_keras.metrics.inception_score import inception_score
from ddpm_keras.metrics.kid import KernelInceptionDistance
from ddpm_keras.metrics.kid import kernel_distance
from ddpm_keras.metrics.kid import mmd2_unbiased
from ddpm_keras.metrics.reference import FeatureMoments
from ddpm_keras.metrics.reference import ReferenceStatistics
from ddpm_keras.metrics.reference import fingerprint
from ddpm_keras.metrics.reference import reference_statistics

__all__ = [
    "FeatureMoments",
    "FrechetInceptionDistance",
    "InceptionScore",
    "KernelInceptionDistance",
    "ReferenceStatistics",
    "WeightsUnavailableError",
    "extract_features",
    "extractor_id",
    "flower_features",
    "fingerprint",
    "frechet_distance",
    "inception_classifier",
    "inception_features",
    "inception_score",
    "intra_class_frechet_distance",
    "kernel_distance",
    "mmd2_unbiased",
    "reference_statistics",
    "sample_distances",
]
