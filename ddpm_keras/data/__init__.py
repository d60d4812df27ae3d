"""Input pipelines: Oxford Flowers 102, a folder of images, synthetic flowers.

Every loader returns a `tf.data.Dataset` of float32 image batches of shape
`(batch_size, height, width, 3)` scaled to `[-1, 1]`, or with
`with_labels=True` of `(images, labels)` batches with int32 labels of shape
`(batch_size,)` and the class names as `dataset.class_names` (the
convention of `keras.utils.image_dataset_from_directory`). They share one
pipeline (`common`):

    decode -> centre crop + resize + scale -> cache -> shuffle examples
    -> random left-right flip -> batch (drop remainder) -> prefetch

Modules, one source each:

- `common`: `preprocess_image`, the shared pipeline, argument checks.
- `flowers`: Oxford Flowers 102 through TensorFlow Datasets.
- `folder`: a folder of image files, labelled by class sub-folders.
- `synthetic`: procedurally drawn flowers, in colour classes when labelled.
- `by_name`: `load_dataset`, the CLI's entry point, by name or path.

This package sits above the math and network layers: it imports only
TensorFlow, TensorFlow Datasets, NumPy, Pillow and the standard library.
"""

from ddpm_keras.data.by_name import DATASET_NAMES
from ddpm_keras.data.by_name import SYNTHETIC_NAME
from ddpm_keras.data.by_name import dataset_class_names
from ddpm_keras.data.by_name import load_dataset
from ddpm_keras.data.common import preprocess_image
from ddpm_keras.data.flowers import FLOWERS_NAME
from ddpm_keras.data.flowers import DatasetUnavailableError
from ddpm_keras.data.flowers import flowers_class_names
from ddpm_keras.data.flowers import load_flowers
from ddpm_keras.data.folder import IMAGE_EXTENSIONS
from ddpm_keras.data.folder import folder_class_names
from ddpm_keras.data.folder import load_image_folder
from ddpm_keras.data.synthetic import SYNTHETIC_CLASS_NAMES
from ddpm_keras.data.synthetic import load_synthetic
from ddpm_keras.data.synthetic import synthetic_class_of
from ddpm_keras.data.synthetic import synthetic_flowers
from ddpm_keras.data.synthetic import synthetic_labels

__all__ = [
    "DATASET_NAMES",
    "DatasetUnavailableError",
    "FLOWERS_NAME",
    "IMAGE_EXTENSIONS",
    "SYNTHETIC_CLASS_NAMES",
    "SYNTHETIC_NAME",
    "dataset_class_names",
    "flowers_class_names",
    "folder_class_names",
    "load_dataset",
    "load_flowers",
    "load_image_folder",
    "load_synthetic",
    "preprocess_image",
    "synthetic_class_of",
    "synthetic_flowers",
    "synthetic_labels",
]
