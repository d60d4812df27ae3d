"""FID and KID of one set of generated images in one pass of the feature extractor."""

from ddpm_keras.metrics.base import as_reference
from ddpm_keras.metrics.features import extract_features
from ddpm_keras.metrics.fid import FrechetInceptionDistance
from ddpm_keras.metrics.kid import KernelInceptionDistance

DISTANCES = ("fid", "kid")


def sample_distances(images, reference, feature_extractor, metrics=DISTANCES, kid_subset_size=1000,
                     batch_size=64, verbose=0):
    """FID and/or KID of `images` against `reference`, extracting the images' features once.

    Args:
        images: Generated images `(N, H, W, C)` in `[-1, 1]`, or a dataset.
        reference: A `ReferenceStatistics` (with features for KID), its
            `.npz` path, or real images.
        feature_extractor: The Keras model the reference was computed with.
        metrics: Sequence of `"fid"` and `"kid"`. Defaults to both.
        kid_subset_size: Integer, KID's subset size. Defaults to `1000`.
        batch_size: Integer, images per extractor call. Defaults to `64`.
        verbose: `0` or `1`, a progress bar over the images. Defaults to
            `0`.

    Returns:
        A dict with `"fid"`, or `"kid"` and `"kid_std"`, or all three.
    """
    unknown = [name for name in metrics if name not in DISTANCES]
    if unknown or not metrics:
        raise ValueError(f"metrics must be a non-empty subset of {DISTANCES}. Received: metrics={metrics!r}")
    reference = as_reference(reference, feature_extractor, keep_features="kid" in metrics, batch_size=batch_size)
    features = extract_features(feature_extractor, images, batch_size=batch_size, verbose=verbose)
    results = {}
    if "fid" in metrics:
        fid = FrechetInceptionDistance(reference, feature_extractor, batch_size=batch_size)
        fid.update_features(features)
        results["fid"] = fid.result()
    if "kid" in metrics:
        kid = KernelInceptionDistance(reference, feature_extractor, subset_size=kid_subset_size, batch_size=batch_size)
        kid.update_features(features)
        results["kid"], results["kid_std"] = kid.result(return_std=True)
    return results
