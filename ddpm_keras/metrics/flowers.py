"""The synthetic flowers' own feature extractor: FID and KID that see what the eye sees, offline.

InceptionV3 needs a download and was trained on photos; for the synthetic
flowers (`ddpm_keras.data.synthetic_flowers`) the package ships a small CNN
trained on them (`examples/train_flower_extractor.py` is its recipe). It was
trained on clean flowers and on flowers with the faults generated images
have: white and blotchy noise, blur, colour casts (`data.degrade`) and petal
counts the data never has. Three heads read its 128 features: the petal
count, the drawing parameters (size, position, colours) and which fault, if
any, the image has. So the features encode both what a flower is and how it
is drawn wrong, and Frechet distances in them separate each fault from the
real data (tests/test_flower_features.py).

Images of any size in `[-1, 1]` are resized to 32x32 (bilinear) inside the
model, so one extractor serves 16, 32 and 64-px models.
"""

import os

import keras

from ddpm_keras.utils.download import one_line

FLOWER_FEATURES_SIZE = 32
FLOWER_FEATURES_PATH = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "pretrained", "flower_features.keras"
)


def flower_features(path=None):
    """The shipped feature extractor of the synthetic flowers: `(N, H, W, 3)` in `[-1, 1]` -> `(N, 128)`.

    Args:
        path: `None` (the file shipped in the package), or the path of a
            `.keras` file of the same kind (one the recipe wrote).

    Returns:
        A Keras model `images -> features`, named `"flower_features"`.

    Raises:
        FileNotFoundError: the file is missing, naming it.

    Example:

    >>> from ddpm_keras.metrics import flower_features, reference_statistics
    >>> extractor = flower_features()
    """
    path = FLOWER_FEATURES_PATH if path is None else os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"No flower feature extractor at {path}: reinstall the package (it ships the file), or pass the "
            "path of one that examples/train_flower_extractor.py wrote."
        )
    try:
        model = keras.saving.load_model(path, compile=False)
    except Exception as error:  # noqa: BLE001 - a corrupt file is one line naming it
        raise ValueError(f"Cannot load the flower feature extractor {path}: {type(error).__name__}: "
                         f"{one_line(error)}") from None
    return model
