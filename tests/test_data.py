"""Tests of the input pipelines in `ddpm_keras.data` (tiny images, no network).

Patches of module state target the module that reads it (e.g.
`data.flowers._FLOWERS_URL`), not the package that re-exports it.
"""

import http.server
import os
import socket
import threading
import time

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds
from PIL import Image

from ddpm_keras import data


def _scaled(pixels):
    """What preprocessing maps `[0, 255]` pixel values to."""
    return np.asarray(pixels, dtype=np.float64) / 127.5 - 1.0


def _striped_image(height, width, along):
    """A uint8 RGB image whose rows (or columns) all have distinct values."""
    index = np.arange(height if along == "rows" else width)
    values = 10 + 20 * index
    if along == "rows":
        grid = np.broadcast_to(values[:, None], (height, width))
    else:
        grid = np.broadcast_to(values[None, :], (height, width))
    channels = np.stack([grid, grid + 1, grid + 2], axis=-1)
    return channels.astype(np.uint8)


def _batches(dataset):
    return [batch for batch in dataset.as_numpy_iterator()]


# preprocess_image


@pytest.mark.parametrize(
    "shape, along, kept",
    [
        ((10, 6), "rows", slice(2, 8)),  # Tall: keep the middle 6 rows.
        ((11, 6), "rows", slice(2, 8)),  # Odd excess: offset (11 - 6) // 2.
        ((6, 10), "cols", slice(2, 8)),  # Wide: keep the middle 6 columns.
    ],
)
def test_preprocess_keeps_the_centre_square(shape, along, kept):
    image = _striped_image(*shape, along=along)
    # Resizing to the crop size itself leaves pixels untouched.
    result = data.preprocess_image(image, 6).numpy()
    expected = image[kept] if along == "rows" else image[:, kept]
    assert result.dtype == np.float32
    np.testing.assert_allclose(result, _scaled(expected), atol=1e-5)


def test_preprocess_non_square_target_crops_to_its_aspect_ratio():
    image = _striped_image(12, 12, along="rows")
    result = data.preprocess_image(image, (6, 12)).numpy()
    np.testing.assert_allclose(result, _scaled(image[3:9]), atol=1e-5)

    image = _striped_image(12, 12, along="cols")
    result = data.preprocess_image(image, (12, 6)).numpy()
    np.testing.assert_allclose(result, _scaled(image[:, 3:9]), atol=1e-5)


def test_preprocess_maps_0_and_255_to_minus_1_and_1():
    image = np.zeros((8, 8, 3), dtype=np.uint8)
    image[:, 4:] = 255
    result = data.preprocess_image(image, 8).numpy()
    np.testing.assert_array_equal(result[:, :4], -1.0)
    np.testing.assert_array_equal(result[:, 4:], 1.0)
    over = data.preprocess_image(np.full((4, 4, 3), 300.0), 4).numpy()
    np.testing.assert_array_equal(over, 1.0)  # Clipped.


def test_preprocess_repeats_grayscale_to_rgb():
    image = _striped_image(8, 8, along="rows")[..., :1]
    result = data.preprocess_image(image, 8).numpy()
    assert result.shape == (8, 8, 3)
    for channel in range(3):
        np.testing.assert_allclose(
            result[..., channel], _scaled(image[..., 0]), atol=1e-5
        )


def test_preprocess_downscales_a_constant_image_to_the_same_constant():
    image = np.empty((37, 53, 3), dtype=np.uint8)
    image[...] = (200, 100, 50)
    result = data.preprocess_image(image, 8).numpy()
    assert result.shape == (8, 8, 3)
    np.testing.assert_allclose(
        result, np.broadcast_to(_scaled([200, 100, 50]), (8, 8, 3)), atol=1e-5
    )


def test_preprocess_works_in_tf_data_with_dynamic_shapes():
    sizes = [(20, 30, 3), (30, 20, 1), (9, 9, 3)]
    images = tf.data.Dataset.from_generator(
        lambda: (np.full(size, 255, np.uint8) for size in sizes),
        output_signature=tf.TensorSpec((None, None, None), tf.uint8),
    )
    results = list(images.map(lambda image: data.preprocess_image(image, 8)))
    assert [tuple(result.shape) for result in results] == [(8, 8, 3)] * 3
    np.testing.assert_allclose(np.stack(results), 1.0, atol=1e-5)


@pytest.mark.parametrize("img_size", [0, -8, (8,), (8, 0), 8.5, True, "8"])
def test_preprocess_rejects_bad_sizes(img_size):
    with pytest.raises(ValueError, match="Received: img_size="):
        data.preprocess_image(np.zeros((8, 8, 3), np.uint8), img_size)


# The shared pipeline: examples are shuffled before batching.


def _indexed_images(num_images):
    """Images of shape (1, 2, 1): [index, -index - 0.5] tells index and flip."""
    index = np.arange(num_images, dtype=np.float32)
    pixels = np.stack([index, -index - 0.5], axis=-1)
    return tf.data.Dataset.from_tensor_slices(pixels.reshape(num_images, 1, 2, 1))


def _indices(batch):
    """The index of each image of a batch, whether flipped or not."""
    return np.max(batch.reshape(len(batch), 2), axis=1).astype(int)


def _pipeline(num_images, batch_size=8, shuffle=True, augment=False, seed=1):
    return data.common._training_pipeline(
        _indexed_images(num_images),
        batch_size=batch_size,
        shuffle=shuffle,
        augment=augment,
        seed=seed,
    )


def test_pipeline_shuffles_examples_not_batches():
    batches = _batches(_pipeline(64))
    assert len(batches) == 8
    indices = [_indices(batch) for batch in batches]
    np.testing.assert_array_equal(np.sort(np.concatenate(indices)), np.arange(64))
    # Had whole batches been shuffled, each batch would be 8 consecutive
    # indices (a spread of 7); drawn from all 64, the mean spread is ~50.
    spreads = [index.max() - index.min() for index in indices]
    assert np.mean(spreads) > 32, spreads


def test_pipeline_reshuffles_every_epoch():
    dataset = _pipeline(64)
    first = np.concatenate([_indices(batch) for batch in _batches(dataset)])
    second = np.concatenate([_indices(batch) for batch in _batches(dataset)])
    np.testing.assert_array_equal(np.sort(second), np.arange(64))
    assert not np.array_equal(first, second)


def test_pipeline_without_shuffle_keeps_order_and_drops_remainder():
    batches = _batches(_pipeline(10, batch_size=4, shuffle=False))
    assert [batch.shape for batch in batches] == [(4, 1, 2, 1)] * 2
    np.testing.assert_array_equal(_indices(np.concatenate(batches)), np.arange(8))


@pytest.mark.parametrize("seed", [None, 1])
def test_pipeline_flips_some_images_and_differently_each_epoch(seed):
    dataset = _pipeline(64, shuffle=False, augment=True, seed=seed)

    def flipped(batches):
        images = np.concatenate(batches).reshape(64, 2)
        np.testing.assert_array_equal(_indices(images), np.arange(64))
        return images[:, 0] < images[:, 1]  # Unflipped: [index, -index - 0.5].

    first, second = flipped(_batches(dataset)), flipped(_batches(dataset))
    assert 0 < first.sum() < 64
    assert not np.array_equal(first, second)


def test_pipeline_caches_the_preprocessed_images():
    calls = []

    def count(image):
        calls.append(1)
        return image

    images = _indexed_images(16).map(
        lambda image: tf.py_function(count, [image], tf.float32)
    )
    dataset = data.common._training_pipeline(
        images, batch_size=4, shuffle=True, augment=True, seed=0
    )
    _batches(dataset)
    _batches(dataset)
    assert len(calls) == 16


# load_flowers, with tfds mocked (random images, no download)


def test_load_flowers_batches_mocked_images():
    with tfds.testing.mock_data(num_examples=10):
        dataset = data.load_flowers(img_size=8, batch_size=4, seed=0)
        batches = _batches(dataset)
    assert len(batches) == 2  # floor(10 / 4): the remainder is dropped.
    for batch in batches:
        assert batch.shape == (4, 8, 8, 3)
        assert batch.dtype == np.float32
        assert batch.min() >= -1.0 and batch.max() <= 1.0
        assert batch.std() > 0.1  # Random images, not a constant.


def test_load_flowers_preprocesses_the_tfds_images():
    with tfds.testing.mock_data(num_examples=6):
        examples = tfds.load(data.FLOWERS_NAME, split="train+validation+test")
        expected = [
            data.preprocess_image(example["image"], (8, 6)).numpy()
            for example in examples
        ]
        dataset = data.load_flowers(
            "train+validation+test",
            img_size=(8, 6),
            batch_size=3,
            shuffle=False,
            augment=False,
        )
        result = np.concatenate(_batches(dataset))
    np.testing.assert_allclose(result, np.stack(expected), atol=1e-6)


# load_flowers offline: fails fast with DatasetUnavailableError


def _forbid_download(monkeypatch):
    def download_and_prepare(self, *args, **kwargs):
        raise AssertionError("download_and_prepare must not be called")

    monkeypatch.setattr(
        tfds.core.DatasetBuilder, "download_and_prepare", download_and_prepare
    )


def _closed_port_url():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/"


def test_load_flowers_offline_fails_fast_and_says_what_to_do(monkeypatch, tmp_path):
    _forbid_download(monkeypatch)
    monkeypatch.setattr(data.flowers, "_FLOWERS_URL", _closed_port_url())
    start = time.monotonic()
    with pytest.raises(data.DatasetUnavailableError) as raised:
        data.load_flowers(data_dir=str(tmp_path), img_size=8, batch_size=4)
    assert time.monotonic() - start < 10.0
    message = str(raised.value)
    assert "could not be downloaded (127.0.0.1:" in message
    assert "--dataset PATH" in message and "--dataset synthetic" in message
    assert os.path.join(str(tmp_path), "downloads", "manual") in message
    assert "\n" not in message
    assert raised.value.__cause__ is None and raised.value.__suppress_context__
    assert isinstance(raised.value, RuntimeError)


def test_load_flowers_wraps_download_errors(monkeypatch, tmp_path):
    def download_and_prepare(self, *args, **kwargs):
        raise ConnectionError("Max retries exceeded with url: x\nmore detail")

    monkeypatch.setattr(
        tfds.core.DatasetBuilder, "download_and_prepare", download_and_prepare
    )
    monkeypatch.setattr(
        data.flowers, "_probe_download_host", lambda url, timeout: None
    )
    with pytest.raises(
        data.DatasetUnavailableError, match="Max retries exceeded"
    ) as raised:
        data.load_flowers(data_dir=str(tmp_path))
    assert "more detail" not in str(raised.value)
    assert raised.value.__cause__ is None and raised.value.__suppress_context__


def test_load_flowers_skips_the_probe_when_files_are_in_the_manual_dir(
    monkeypatch, tmp_path
):
    manual_dir = tmp_path / "downloads" / "manual"
    manual_dir.mkdir(parents=True)
    for name in data.flowers._FLOWERS_FILES:
        (manual_dir / name).write_bytes(b"")

    def probe(url, timeout):
        raise AssertionError("the download host must not be probed")

    class Prepared(Exception):
        pass

    def download_and_prepare(self, *args, **kwargs):
        raise Prepared

    monkeypatch.setattr(data.flowers, "_probe_download_host", probe)
    monkeypatch.setattr(
        tfds.core.DatasetBuilder, "download_and_prepare", download_and_prepare
    )
    with pytest.raises(Prepared):
        data.load_flowers(data_dir=str(tmp_path))


def test_probe_tells_an_answering_server_from_a_closed_port():
    class NotFound(http.server.BaseHTTPRequestHandler):
        def do_HEAD(self):
            self.send_error(404)

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), NotFound)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/"
        assert data.flowers._probe_download_host(url, timeout=5.0) is None
    finally:
        server.shutdown()
        server.server_close()
    reason = data.flowers._probe_download_host(_closed_port_url(), timeout=5.0)
    assert reason.startswith("127.0.0.1: ")


# load_image_folder


def _save(path, pixels, mode="RGB"):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(pixels, dtype=np.uint8), mode).save(path)


def _noise(rng, height, width):
    return rng.integers(0, 256, (height, width, 3))


def _mixed_folder(root):
    """6 images: nested folders, mixed sizes and formats, plus a text file."""
    rng = np.random.default_rng(0)
    _save(root / "a.png", _noise(rng, 20, 30))
    _save(root / "sub" / "b.JPG", _noise(rng, 40, 24))
    _save(root / "sub" / "deeper" / "c.jpeg", _noise(rng, 16, 16))
    _save(root / "d.bmp", _noise(rng, 12, 18))
    _save(root / "e.gif", _noise(rng, 10, 10))
    _save(root / "gray.png", rng.integers(0, 256, (14, 9)), mode="L")
    (root / "notes.txt").write_text("not an image")
    return root


@pytest.mark.parametrize("batch_size, num_batches", [(2, 3), (4, 1), (6, 1)])
def test_load_image_folder_reads_nested_mixed_images(tmp_path, batch_size, num_batches):
    dataset = data.load_image_folder(
        _mixed_folder(tmp_path), img_size=8, batch_size=batch_size, seed=0
    )
    batches = _batches(dataset)
    assert len(batches) == num_batches
    for batch in batches:
        assert batch.shape == (batch_size, 8, 8, 3)
        assert batch.dtype == np.float32
        assert batch.min() >= -1.0 and batch.max() <= 1.0


def test_load_image_folder_round_trips_solid_colours(tmp_path):
    colours = [(200, 100, 50), (0, 255, 30), (30, 30, 30), (255, 255, 255)]
    for number, colour in enumerate(colours):
        _save(tmp_path / f"{number}.png", np.broadcast_to(colour, (13, 21, 3)))
    _save(tmp_path / "2.png", np.full((13, 21), 30), mode="L")  # Grayscale.
    dataset = data.load_image_folder(
        tmp_path, img_size=4, batch_size=4, shuffle=False, augment=False
    )
    (batch,) = _batches(dataset)
    expected = _scaled(colours)[:, None, None, :]
    np.testing.assert_allclose(
        batch, np.broadcast_to(expected, (4, 4, 4, 3)), atol=1e-5
    )


def test_load_image_folder_skips_corrupt_files_with_a_warning(tmp_path):
    _save(tmp_path / "good1.png", np.zeros((8, 8, 3)))
    _save(tmp_path / "good2.jpg", np.zeros((8, 8, 3)))
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    (tmp_path / "empty.jpg").write_bytes(b"")
    with pytest.warns(UserWarning) as warned:
        dataset = data.load_image_folder(tmp_path, img_size=4, batch_size=1)
    messages = " ".join(str(warning.message) for warning in warned)
    assert "broken.png" in messages and "empty.jpg" in messages
    assert "good" not in messages
    assert len(_batches(dataset)) == 2


def test_load_image_folder_with_only_corrupt_files_names_the_folder(tmp_path):
    (tmp_path / "broken.png").write_bytes(b"garbage")
    with pytest.warns(UserWarning, match="broken.png"):
        with pytest.raises(ValueError, match="No readable image") as raised:
            data.load_image_folder(tmp_path, batch_size=1)
    assert str(tmp_path) in str(raised.value)


def test_load_image_folder_missing_or_empty_folder(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError, match="nowhere") as raised:
        data.load_image_folder(missing)
    assert ".jpeg" in str(raised.value)

    (tmp_path / "notes.txt").write_text("not an image")
    with pytest.raises(ValueError, match="No image files") as raised:
        data.load_image_folder(tmp_path)
    assert str(tmp_path) in str(raised.value) and ".gif" in str(raised.value)

    with pytest.raises(FileNotFoundError):
        data.load_image_folder(tmp_path / "notes.txt")


def test_load_image_folder_with_fewer_images_than_a_batch(tmp_path):
    for number in range(3):
        _save(tmp_path / f"{number}.png", np.zeros((8, 8, 3)))
    with pytest.raises(ValueError, match="has 3 images, fewer than one batch"):
        data.load_image_folder(tmp_path, batch_size=4)


# Synthetic flowers


def _background_mask(image):
    """Pixels equal to the top-left corner's colour."""
    return np.all(image == image[0, 0], axis=-1)


def test_synthetic_flowers_shape_range_and_determinism():
    images = data.synthetic_flowers(12, img_size=(16, 24), seed=3)
    assert images.shape == (12, 16, 24, 3)
    assert images.dtype == np.float32
    assert images.min() >= -1.0 and images.max() <= 1.0
    np.testing.assert_array_equal(images, data.synthetic_flowers(12, (16, 24), seed=3))
    other = data.synthetic_flowers(12, (16, 24), seed=4)
    assert np.abs(images - other).mean() > 0.1


def test_synthetic_flowers_return_the_parameters_they_were_drawn_with():
    images, params = data.synthetic_flowers(64, img_size=16, seed=3, return_params=True)
    np.testing.assert_array_equal(images, data.synthetic_flowers(64, img_size=16, seed=3))
    assert params["num_petals"].shape == (64,) and set(params["num_petals"]) <= set(range(4, 10))
    # The background parameter is the colour of the image's corner pixel.
    np.testing.assert_allclose((images[:, 0, 0] + 1.0) / 2.0, params["background"], atol=1e-5)


def test_synthetic_flowers_are_a_flower_on_a_plain_background():
    images = data.synthetic_flowers(64, img_size=32, seed=0)
    centroids = []
    for image in images:
        corners = image[[0, 0, -1, -1], [0, -1, 0, -1]]
        np.testing.assert_array_equal(corners, np.broadcast_to(corners[0], (4, 3)))
        colours, counts = np.unique(image.reshape(-1, 3), axis=0, return_counts=True)
        np.testing.assert_array_equal(colours[np.argmax(counts)], image[0, 0])
        flower = ~_background_mask(image)
        assert 0.03 < flower.mean() < 0.6
        assert image.std() > 0.05
        centroids.append(np.argwhere(flower).mean(axis=0))
    # The flowers are not all in the same place, nor all the same image.
    assert np.std(centroids, axis=0).min() > 0.5
    assert np.abs(images[1:] - images[:-1]).mean() > 0.1


def test_synthetic_flowers_are_fast():
    start = time.perf_counter()
    data.synthetic_flowers(1000, img_size=32, seed=0)
    # ~0.4 s on one core; the bound leaves room for a busy machine.
    assert time.perf_counter() - start < 5.0


def test_load_synthetic_batches_a_permutation_of_the_images():
    dataset = data.load_synthetic(20, img_size=8, batch_size=4, augment=False, seed=5)
    batches = _batches(dataset)
    assert len(batches) == 5 and len(dataset) == 5
    result = np.concatenate(batches)
    expected = data.synthetic_flowers(20, img_size=8, seed=5)

    def by_content(images):
        return images[np.lexsort(images.reshape(len(images), -1).T)]

    np.testing.assert_array_equal(by_content(result), by_content(expected))
    assert not np.array_equal(result, expected)  # Shuffled.


# load_dataset and argument checks


def test_load_dataset_dispatches_by_name_or_path(tmp_path):
    kwargs = dict(img_size=8, batch_size=4, shuffle=False, augment=False)
    synthetic = _batches(data.load_dataset("synthetic", num_synthetic=8, **kwargs))
    np.testing.assert_array_equal(
        np.concatenate(synthetic), data.synthetic_flowers(8, img_size=8, seed=0)
    )
    folder = _batches(data.load_dataset(str(_mixed_folder(tmp_path)), **kwargs))
    assert len(folder) == 1 and folder[0].shape == (4, 8, 8, 3)
    with tfds.testing.mock_data(num_examples=5):
        flowers = _batches(data.load_dataset("oxford_flowers102", **kwargs))
    assert len(flowers) == 1 and flowers[0].shape == (4, 8, 8, 3)


def test_load_dataset_unknown_name_lists_the_valid_names():
    with pytest.raises(FileNotFoundError, match="oxford_flowers10") as raised:
        data.load_dataset("oxford_flowers10")
    assert "synthetic" in str(raised.value)


@pytest.mark.parametrize(
    "kwargs, received",
    [
        (dict(batch_size=0), "batch_size=0"),
        (dict(batch_size=2.0), "batch_size=2.0"),
        (dict(img_size=-1), "img_size=-1"),
        (dict(seed=-1), "seed=-1"),
        (dict(shuffle="yes"), "shuffle='yes'"),
        (dict(num_images=0), "num_images=0"),
    ],
)
def test_load_synthetic_rejects_bad_arguments(kwargs, received):
    with pytest.raises(ValueError, match=f"Received: {received}"):
        data.load_synthetic(**kwargs)


def test_load_flowers_checks_arguments_before_touching_tfds(monkeypatch):
    monkeypatch.setattr(tfds, "builder", None)
    with pytest.raises(ValueError, match="Received: batch_size=0"):
        data.load_flowers(batch_size=0)


def test_pipeline_is_reproducible_with_a_seed():
    def two_epochs():
        dataset = data.load_synthetic(16, img_size=8, batch_size=4, seed=7)
        return np.concatenate(_batches(dataset) + _batches(dataset))

    first = two_epochs()
    assert len(first) == 32
    np.testing.assert_array_equal(first, two_epochs())


# Labels: the shared pipeline keeps each label with its image


def _indexed_examples(num_images):
    """`(image, label)` pairs whose label is the image's index."""
    images = _indexed_images(num_images)
    labels = tf.data.Dataset.range(num_images).map(lambda i: tf.cast(i, tf.int32))
    return tf.data.Dataset.zip((images, labels))


def test_pipeline_keeps_each_label_with_its_image_through_shuffle_and_flip():
    dataset = data.common._training_pipeline(
        _indexed_examples(64),
        batch_size=8,
        shuffle=True,
        augment=True,
        seed=3,
        class_names=["a", "b"],
    )
    assert dataset.class_names == ["a", "b"]
    flips = []
    for _ in range(2):  # Reshuffled and reflipped each epoch.
        pairs = _batches(dataset)
        for images, labels in pairs:
            assert labels.shape == (8,) and labels.dtype == np.int32
            np.testing.assert_array_equal(_indices(images), labels)
        images = np.concatenate([images for images, _ in pairs]).reshape(64, 2)
        labels = np.concatenate([labels for _, labels in pairs])
        np.testing.assert_array_equal(np.sort(labels), np.arange(64))
        assert not np.array_equal(labels, np.arange(64))  # Shuffled.
        flips.append(images[:, 0] < images[:, 1])
    assert 0 < flips[0].sum() < 64 and not np.array_equal(*flips)


# Labels: Oxford Flowers 102 (tfds mocked: random images, random labels)


def test_load_flowers_with_labels_yields_int32_labels_and_the_flower_names():
    with tfds.testing.mock_data(num_examples=12):
        dataset = data.load_flowers(img_size=8, batch_size=4, seed=0, with_labels=True)
        batches = _batches(dataset)
    assert len(batches) == 3
    for images, labels in batches:
        assert images.shape == (4, 8, 8, 3) and images.dtype == np.float32
        assert labels.shape == (4,) and labels.dtype == np.int32
        assert labels.min() >= 0 and labels.max() < 102
    names = dataset.class_names
    assert len(names) == 102 and all(isinstance(name, str) for name in names)
    assert names[0] == "pink primrose" and names == data.flowers_class_names()
    assert len(set(np.concatenate([labels for _, labels in batches]))) > 1


def test_load_flowers_labels_follow_their_images():
    with tfds.testing.mock_data(num_examples=12):
        examples = tfds.load(data.FLOWERS_NAME, split="train")
        expected = {
            data.preprocess_image(example["image"], 8).numpy().tobytes(): int(
                example["label"]
            )
            for example in examples
        }
        dataset = data.load_flowers(
            img_size=8, batch_size=4, augment=False, seed=1, with_labels=True
        )
        batches = _batches(dataset)
    for images, labels in batches:
        found = [expected[image.tobytes()] for image in images]
        np.testing.assert_array_equal(found, labels)


def test_flowers_class_names_needs_no_download(monkeypatch, tmp_path):
    _forbid_download(monkeypatch)
    names = data.flowers_class_names(data_dir=str(tmp_path))
    assert len(names) == 102 and names[-1] == "blackberry lily"


# Labels: a folder with one sub-folder per class


_CLASS_COLOURS = {"daisy": (250, 250, 250), "rose": (220, 20, 40), "iris": (60, 40, 200)}


def _class_folder(root, counts=(3, 2, 4)):
    """Solid-colour images in `daisy/`, `rose/` (one nested), `iris/`."""
    for (name, colour), count in zip(_CLASS_COLOURS.items(), counts):
        for number in range(count):
            nested = "deeper" if name == "rose" and number == 0 else ""
            _save(root / name / nested / f"{number}.png", np.broadcast_to(colour, (9, 7, 3)))
    return root


def test_load_image_folder_labels_follow_sorted_sub_folder_names(tmp_path):
    root = _class_folder(tmp_path)
    dataset = data.load_image_folder(
        root, img_size=4, batch_size=3, seed=0, with_labels=True
    )
    names = ["daisy", "iris", "rose"]  # Sorted, not in creation order.
    assert dataset.class_names == names == data.folder_class_names(root)
    batches = _batches(dataset)
    labels = np.concatenate([labels for _, labels in batches])
    assert labels.dtype == np.int32 and len(batches) == 3
    np.testing.assert_array_equal(np.bincount(labels), [3, 4, 2])
    for images, labels in batches:
        assert labels.shape == (3,)
        colours = [_scaled(_CLASS_COLOURS[names[label]]) for label in labels]
        np.testing.assert_allclose(images[:, 0, 0], colours, atol=1e-5)


def test_load_image_folder_with_labels_skips_hidden_sub_folders(tmp_path):
    root = _class_folder(tmp_path)
    _save(root / ".ipynb_checkpoints" / "x.png", np.zeros((4, 4, 3)))
    assert data.folder_class_names(root) == ["daisy", "iris", "rose"]


def _one_line_error(error_type, call):
    with pytest.raises(error_type) as raised:
        call()
    message = str(raised.value)
    assert "\n" not in message
    return message


def test_load_image_folder_with_labels_rejects_images_in_the_root(tmp_path):
    root = _class_folder(tmp_path)
    _save(root / "loose.png", np.zeros((4, 4, 3)))
    for call in (
        lambda: data.load_image_folder(root, batch_size=1, with_labels=True),
        lambda: data.folder_class_names(root),
    ):
        message = _one_line_error(ValueError, call)
        assert str(root) in message and "'loose.png'" in message
        assert os.path.join(str(root), "<class_name>", "<image>") in message
        assert "with_labels=False" in message
    # Without labels the same folder is read as before: all 10 images.
    dataset = data.load_image_folder(root, img_size=4, batch_size=10)
    assert len(_batches(dataset)) == 1


def test_load_image_folder_with_labels_rejects_an_empty_class_folder(tmp_path):
    root = _class_folder(tmp_path)
    (root / "tulip").mkdir()
    (root / "tulip" / "notes.txt").write_text("no images")
    message = _one_line_error(
        ValueError, lambda: data.load_image_folder(root, batch_size=1, with_labels=True)
    )
    assert repr(os.path.join(str(root), "tulip")) in message and "no image" in message


def test_load_image_folder_with_labels_rejects_a_class_of_unreadable_files(tmp_path):
    root = _class_folder(tmp_path)
    (root / "tulip").mkdir()
    (root / "tulip" / "broken.png").write_bytes(b"garbage")
    with pytest.warns(UserWarning, match="broken.png"):
        message = _one_line_error(
            ValueError,
            lambda: data.load_image_folder(root, batch_size=1, with_labels=True),
        )
    assert "tulip" in message and "no readable image" in message


def test_load_image_folder_with_labels_needs_class_sub_folders(tmp_path):
    (tmp_path / "notes.txt").write_text("not an image")
    message = _one_line_error(ValueError, lambda: data.folder_class_names(tmp_path))
    assert "no class sub-folders" in message and str(tmp_path) in message
    message = _one_line_error(
        FileNotFoundError, lambda: data.folder_class_names(tmp_path / "nowhere")
    )
    assert "Received: path=" in message


# Labels: synthetic flowers in colour classes


def test_unlabelled_synthetic_flowers_are_unchanged():
    """Pinned before labels existed: the same seed still gives the same images."""
    images, params = data.synthetic_flowers(16, img_size=16, seed=0, return_params=True)
    means = [
        0.473343, -0.652531, -0.714416, -0.586633, 0.544618, 0.765633,
        0.769451, 0.515291, 0.609868, 0.556966, 0.695357, -0.441967,
        0.588976, -0.569151, 0.454718, -0.576421,
    ]  # fmt: skip
    np.testing.assert_allclose(images.mean(axis=(1, 2, 3)), means, atol=1e-5)
    np.testing.assert_array_equal(
        params["num_petals"], [5, 9, 8, 7, 9, 6, 4, 4, 5, 8, 6, 5, 4, 8, 4, 6]
    )
    centre_pixels = [
        [0.132126, 0.020761, -0.904636],
        [0.07442, -0.536928, -0.698882],
        [0.328, -0.903568, -0.090257],
        [0.303003, -0.798207, 0.380512],
    ]
    np.testing.assert_allclose(images[:4, 8, 8], centre_pixels, atol=1e-5)
    corners = [
        [0.470842, 0.620567, 0.611458],
        [-0.735542, -0.608119, -0.771702],
        [-0.812892, -0.850059, -0.790047],
        [-0.67166, -0.784797, -0.820521],
    ]
    np.testing.assert_allclose(images[:4, 0, 0], corners, atol=1e-5)
    assert "label" not in params


def _flower_colours(images):
    """Chromaticity `rgb / (r + g + b)` of each image's mean flower colour.

    The mean is over the saturated pixels (the petals, mostly); dividing by
    the sum leaves out the brightness, which varies within a class.
    """
    rgb = (images + 1.0) / 2.0
    saturated = (rgb.max(axis=-1) - rgb.min(axis=-1) > 0.2)[..., None]
    colours = (rgb * saturated).sum(axis=(1, 2)) / saturated.sum(axis=(1, 2))
    return colours / colours.sum(axis=-1, keepdims=True)


def _far_apart(values, labels, distance):
    """The closest pair of class means, over the largest within-class spread."""
    means = np.stack([values[labels == c].mean(axis=0) for c in range(4)])
    spread = max(distance(values[labels == c], means[c]).mean() for c in range(4))
    closest = min(
        distance(means[a], means[b]) for a in range(4) for b in range(a + 1, 4)
    )
    return closest / spread


def test_synthetic_classes_are_far_apart_in_colour():
    labels = data.synthetic_labels(400, seed=1)
    images, params = data.synthetic_flowers(
        400, img_size=16, seed=1, labels=labels, return_params=True
    )
    np.testing.assert_array_equal(params["label"], labels)

    def euclidean(a, b):
        return np.linalg.norm(a - b, axis=-1)

    # Measured (seeded, so fixed): 3.5 for the mean colour, 9.1 for the hue.
    assert _far_apart(_flower_colours(images), labels, euclidean) > 3.0
    hues = data.synthetic._flower_hue(images)[0]
    hues = np.where(hues > 0.9, hues - 1.0, hues)  # Red wraps around 0.
    assert _far_apart(hues, labels, lambda a, b: np.abs(a - b)) > 5.0
    # Each class has its petal count, its name's.
    for c, name in enumerate(data.SYNTHETIC_CLASS_NAMES):
        assert set(params["num_petals"][labels == c]) == {int(name.split("-")[1])}


@pytest.mark.parametrize("img_size", [8, 16, 32])
def test_synthetic_class_of_recovers_the_labels(img_size):
    labels = data.synthetic_labels(400, seed=2)
    images = data.synthetic_flowers(400, img_size=img_size, seed=2, labels=labels)
    predicted = data.synthetic_class_of(images)
    assert predicted.shape == (400,) and predicted.dtype == np.int32
    assert np.mean(predicted == labels) >= 0.95


def test_synthetic_class_of_finds_no_flower_in_grey_images():
    grey = np.full((2, 8, 8, 3), 0.3, dtype=np.float32)
    np.testing.assert_array_equal(data.synthetic_class_of(grey), [-1, -1])


def test_synthetic_labels_are_balanced_and_seeded():
    labels = data.synthetic_labels(10, seed=4)
    assert labels.dtype == np.int32
    np.testing.assert_array_equal(np.bincount(labels), [3, 3, 2, 2])
    np.testing.assert_array_equal(labels, data.synthetic_labels(10, seed=4))
    assert not np.array_equal(data.synthetic_labels(40, 4), data.synthetic_labels(40, 5))


def test_load_synthetic_with_labels_keeps_labels_with_images():
    dataset = data.load_synthetic(
        64, img_size=16, batch_size=8, seed=3, with_labels=True
    )
    assert dataset.class_names == list(data.SYNTHETIC_CLASS_NAMES)
    batches = _batches(dataset)
    for images, labels in batches:
        assert labels.shape == (8,) and labels.dtype == np.int32
        # A flip leaves the colour, and so the class, unchanged.
        np.testing.assert_array_equal(data.synthetic_class_of(images), labels)
    labels = np.concatenate([labels for _, labels in batches])
    np.testing.assert_array_equal(np.bincount(labels), [16, 16, 16, 16])


# Labels: load_dataset, class names by name, bad arguments


def test_load_dataset_with_labels_and_dataset_class_names(tmp_path):
    kwargs = dict(img_size=8, batch_size=2, with_labels=True)
    synthetic = data.load_dataset("synthetic", num_synthetic=8, **kwargs)
    assert synthetic.class_names == data.dataset_class_names("synthetic")
    root = str(_class_folder(tmp_path))
    folder = data.load_dataset(root, **kwargs)
    assert folder.class_names == data.dataset_class_names(root) == ["daisy", "iris", "rose"]
    with tfds.testing.mock_data(num_examples=4):
        flowers = data.load_dataset("oxford_flowers102", **kwargs)
    assert flowers.class_names == data.dataset_class_names("oxford_flowers102")
    for dataset in (synthetic, folder, flowers):
        images, labels = dataset.element_spec
        assert labels.shape == (2,) and labels.dtype == tf.int32
    with pytest.raises(FileNotFoundError, match="oxford_flowers10"):
        data.dataset_class_names("oxford_flowers10")


@pytest.mark.parametrize("loader", ["synthetic", "folder", "flowers"])
def test_loaders_reject_a_non_boolean_with_labels(loader, tmp_path):
    load = {
        "synthetic": lambda: data.load_synthetic(8, batch_size=4, with_labels="yes"),
        "folder": lambda: data.load_image_folder(tmp_path, with_labels="yes"),
        "flowers": lambda: data.load_flowers(with_labels="yes"),
    }[loader]
    message = _one_line_error(ValueError, load)
    assert "Received: with_labels='yes'" in message


@pytest.mark.parametrize(
    "labels",
    [[0, 1, 4], [0, -1, 2], [0, 1], [0.5, 1.0, 2.0], [[0, 1, 2]]],
)
def test_synthetic_flowers_reject_bad_labels(labels):
    message = _one_line_error(
        ValueError, lambda: data.synthetic_flowers(3, img_size=8, labels=labels)
    )
    assert f"Received: labels={labels!r}" in message and "[0, 4)" in message


def test_synthetic_class_of_rejects_a_bad_shape():
    message = _one_line_error(
        ValueError, lambda: data.synthetic_class_of(np.zeros((8, 8, 3)))
    )
    assert "Received: images.shape=(8, 8, 3)" in message
