"""Class-conditional training on TensorFlow: the label dropout, its seeding, saving and the label errors.

JAX and PyTorch run a conditional step in `test_backends.py`, MirroredStrategy in `test_distribute.py`.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import tiny_images
from conftest import tiny_model
from keras import ops

from ddpm_keras import DiffusionModel
from ddpm_keras import GaussianDiffusion
from ddpm_keras import build_unet
from ddpm_keras.training import steps as train_steps

NUM_CLASSES = 4
NAMES = ["daisy", "rose", "tulip", "iris"]


def to_numpy(x):
    return np.asarray(ops.convert_to_numpy(x))


def conditional_unet(num_classes=NUM_CLASSES):
    return build_unet(
        16, 3, widths=[8, 16], has_attention=[False, True], num_res_blocks=1, first_conv_channels=8,
        num_classes=num_classes,
    )


def conditional_model(cond_drop_prob=0.1, seed=0, perturb=False, **kwargs):
    network = conditional_unet()
    if perturb:
        # Noise on every weight: the zero-initialised branches pass the embedding on, so labels matter.
        rng = np.random.default_rng(0)
        for w in network.weights:
            w.assign(to_numpy(w) + rng.normal(0.0, 0.05, w.shape).astype(np.float32))
    model = DiffusionModel(
        network, GaussianDiffusion(timesteps=10, beta_end=0.2), ema=0.9, seed=seed,
        cond_drop_prob=cond_drop_prob, **kwargs,
    )
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    return model


def tiny_labels(n=8):
    return (np.arange(n) % NUM_CLASSES).astype(np.int32)


def squared_error(model, inputs, noise):
    prediction = to_numpy(model.network(inputs)).astype(np.float64)
    return float(np.mean((prediction - to_numpy(noise)) ** 2))


# ------------------------------------------------------------------ dropout


def test_drop_labels_follows_cond_drop_prob_and_the_seed():
    p, n = 0.3, 20_000
    model = conditional_model(cond_drop_prob=p)
    labels = ops.convert_to_tensor(np.arange(n) % NUM_CLASSES, "int32")
    draws = [to_numpy(model.drop_labels(labels, seed=keras.random.SeedGenerator(s))) for s in range(3)]
    for dropped in draws:
        null = dropped == model.null_label
        # The binomial spread of the null fraction: sqrt(p (1 - p) / n) ~ 0.0032; 4 of them.
        assert abs(null.mean() - p) < 4 * np.sqrt(p * (1 - p) / n)
        # Only dropped labels change.
        np.testing.assert_array_equal(dropped[~null], to_numpy(labels)[~null])
    # Each seed drops other labels; the same seed the same ones.
    assert (draws[0] != draws[1]).mean() > 0.3
    again = to_numpy(model.drop_labels(labels, seed=keras.random.SeedGenerator(0)))
    np.testing.assert_array_equal(again, draws[0])
    # No dropout at p = 0.
    never = conditional_model(cond_drop_prob=0.0)
    np.testing.assert_array_equal(to_numpy(never.drop_labels(labels)), to_numpy(labels))


@pytest.fixture(scope="module")
def trained():
    """A conditional model (perturbed weights) after one step, then fits on arrays and on a dataset of tuples.

    Also the loss of the first step computed by hand, with and without the label dropout.
    """
    keras.utils.set_random_seed(0)
    model = conditional_model(cond_drop_prob=0.5, seed=7, perturb=True, class_names=NAMES)
    images, labels = tiny_images(16), (np.arange(16) % NUM_CLASSES).astype(np.int64)
    # The first step's draws by hand, from a generator seeded as the model's: t, the noise, then the dropout.
    generator = keras.random.SeedGenerator(7)
    x_t, t, noise = model.noisy_batch(ops.convert_to_tensor(images[:8]), generator)
    dropped = model.drop_labels(ops.convert_to_tensor(labels[:8]), seed=generator)
    expected = {
        "num_dropped": int(np.sum(to_numpy(dropped) == model.null_label)),
        "with_dropout": squared_error(model, [x_t, t, dropped], noise),
        "without": squared_error(model, [x_t, t, ops.convert_to_tensor(labels[:8], "int32")], noise),
    }
    losses = model.fit(images[:8], labels[:8], batch_size=8, epochs=1, verbose=0, shuffle=False).history["loss"]
    losses += model.fit(images, labels, batch_size=8, epochs=1, verbose=0, shuffle=False).history["loss"]
    losses += model.fit(tf.data.Dataset.from_tensor_slices((images, labels)).batch(8), epochs=1, verbose=0).history[
        "loss"
    ]
    return model, losses, expected


def test_a_fit_step_trains_on_the_labels_dropped_with_its_seed(trained):
    _, losses, expected = trained
    assert 0 < expected["num_dropped"] < 8
    # Ten times the tolerance below: a step on the labels as given would fail it.
    assert abs(expected["with_dropout"] - expected["without"]) > 1e-4 * expected["with_dropout"]
    assert losses[0] == pytest.approx(expected["with_dropout"], rel=1e-5)


def test_fit_on_arrays_and_on_a_dataset_of_tuples(trained):
    model, losses, _ = trained
    assert len(losses) == 3 and all(np.isfinite(losses)) and all(0.05 < loss < 3.0 for loss in losses)
    assert int(model.optimizer.iterations) == 5


def test_validation_uses_the_labels_as_given(trained):
    model, _, _ = trained
    images, labels = tiny_images(8), tiny_labels(8)
    first = model.evaluate(images, labels, batch_size=8, verbose=0)
    assert model.evaluate(images, labels, batch_size=8, verbose=0) == first
    # The draws by hand, from the evaluation seed (the model's); no dropout.
    x_t, t, noise = model.noisy_batch(ops.convert_to_tensor(images), keras.random.SeedGenerator(model.eval_seed))
    assert first == pytest.approx(squared_error(model, [x_t, t, ops.convert_to_tensor(labels)], noise), rel=1e-5)


def test_call_without_labels_uses_the_null_label(trained):
    model, _, _ = trained
    x = tiny_images(2)
    t = np.array([3, 6], np.int32)
    null = np.full((2,), model.null_label, np.int32)
    np.testing.assert_array_equal(to_numpy(model([x, t])), to_numpy(model.network([x, t, null])))
    labels = np.array([0, 2], np.int32)
    np.testing.assert_array_equal(to_numpy(model([x, t, labels])), to_numpy(model.network([x, t, labels])))


def test_bits_per_dim_is_the_unconditional_bound(trained):
    model, _, _ = trained
    images = tiny_images(4)
    rows = model.ema_network.get_layer("class_embedding").embeddings
    original = to_numpy(rows)

    def bound(row, scale):
        changed = original.copy()
        changed[row] += scale
        rows.assign(changed)
        return model.bits_per_dim(images, num_steps=3, verbose=0)

    try:
        base = bound(0, 0.0)
        assert np.isfinite(base)
        assert bound(0, 3.0) == base  # a class's row is not read
        assert bound(model.null_label, 3.0) != base  # the null label's is
    finally:
        rows.assign(original)


def test_batches_are_images_or_tuples_with_labels():
    images, labels = ops.convert_to_tensor(tiny_images(2)), ops.convert_to_tensor([1, 3])
    unconditional, conditional = tiny_model(timesteps=10), conditional_model()
    for data in (images, (images,), [images]):  # an unconditional model takes images, or 1-tuples as before
        batch_images, batch_labels = train_steps.batch_data(unconditional, data)
        assert batch_images is images and batch_labels is None
    for data in ((images, labels), (images, labels, ops.ones((2,)))):  # (x, y) or (x, y, sample_weight)
        batch_images, batch_labels = train_steps.batch_data(conditional, data)
        assert batch_images is images and str(batch_labels.dtype) in ("int32", "<dtype: 'int32'>")
        np.testing.assert_array_equal(to_numpy(batch_labels), [1, 3])


# -------------------------------------------------------------------- saving


def test_keras_file_keeps_the_classes_and_the_outputs(trained, tmp_path):
    model, _, _ = trained
    path = tmp_path / "conditional.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert (loaded.num_classes, loaded.null_label) == (NUM_CLASSES, NUM_CLASSES)
    assert loaded.class_names == NAMES and loaded.cond_drop_prob == 0.5
    x = tiny_images(2)
    inputs = [x, np.array([1, 8], np.int32), np.array([3, NUM_CLASSES], np.int32)]
    np.testing.assert_array_equal(to_numpy(loaded.ema_network(inputs)), to_numpy(model.ema_network(inputs)))
    np.testing.assert_array_equal(to_numpy(loaded.network(inputs)), to_numpy(model.network(inputs)))


# -------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"cond_drop_prob": 1.0}, "cond_drop_prob=1.0"),
        ({"cond_drop_prob": -0.1}, "cond_drop_prob=-0.1"),
        ({"cond_drop_prob": True}, "cond_drop_prob=True"),
        ({"class_names": ["a", "b"]}, "num_classes=4 strings.*Received: 2 names"),
        ({"class_names": "abcd"}, "list of 4 strings"),
        ({"class_names": [0, 1, 2, 3]}, "num_classes=4 strings"),
    ],
)
def test_bad_options_are_one_line_errors(kwargs, message):
    with pytest.raises(ValueError, match=message) as error:
        DiffusionModel(conditional_unet(), GaussianDiffusion(timesteps=10), **kwargs)
    assert "\n" not in str(error.value)


def test_class_names_need_a_conditional_network():
    with pytest.raises(ValueError, match="class_names needs a class-conditional network"):
        DiffusionModel(tiny_model().network, GaussianDiffusion(timesteps=10), class_names=NAMES)


def dataset(*parts):
    return tf.data.Dataset.from_tensor_slices(parts).batch(8)


IMAGES, LABELS = tiny_images(8), tiny_labels(8)


@pytest.mark.parametrize(
    "conditional, fit_args, message",
    [
        (False, (IMAGES, LABELS), "unconditional, but labels were given: pass images only, or build the network"),
        (False, (dataset(IMAGES, LABELS),), "unconditional, but labels were given"),
        (True, (IMAGES,), "class-conditional \\(num_classes=4\\).*Received: images only"),
        (True, (dataset(IMAGES),), "Received: images only"),
        (True, (IMAGES, LABELS[:, None]), "shape \\(batch,\\).*Received: labels.shape=\\(8, 1\\)"),
        (True, (dataset(IMAGES, LABELS[:, None]),), "Received: labels.shape=\\(None, 1\\)"),
        (True, (IMAGES, LABELS.astype(np.float32)), "integers.*labels.dtype=float32"),
        (True, (IMAGES, LABELS + 1), "labels must be classes in \\[0, num_classes\\) = \\[0, 4\\).*from 1 to 4"),
        (True, (IMAGES, LABELS - 1), "from -1 to 2"),
        (True, (IMAGES, LABELS[:6]), "Received: 6 labels for 8 images"),
    ],
)
def test_bad_labels_are_one_line_errors_before_training(conditional, fit_args, message):
    model = conditional_model() if conditional else tiny_model(timesteps=10)
    with pytest.raises(ValueError, match=message) as error:
        model.fit(*fit_args, batch_size=None if len(fit_args) == 1 and hasattr(fit_args[0], "element_spec") else 8,
                  epochs=1, verbose=0)
    assert "\n" not in str(error.value)
    assert int(model.optimizer.iterations) == 0


def test_bad_validation_labels_are_caught_before_training():
    with pytest.raises(ValueError, match="validation labels must be classes in \\[0, num_classes\\)"):
        conditional_model().fit(IMAGES, LABELS, validation_data=(IMAGES, LABELS + 4), verbose=0)
    with pytest.raises(ValueError, match="unconditional, but labels were given"):
        tiny_model().evaluate(IMAGES, LABELS, verbose=0)


def test_labels_out_of_range_in_a_dataset_stop_the_first_step(trained):
    # Last in this file: the fixture's model, its step traced, fails on a dataset's labels (asserted in the graph).
    model, _, _ = trained
    before = [to_numpy(w) for w in model.network.weights]
    with pytest.raises(tf.errors.InvalidArgumentError, match="labels must be classes in \\[0, num_classes\\)"):
        model.fit(dataset(IMAGES, LABELS.astype(np.int64) + 3), epochs=1, verbose=0)
    for old, w in zip(before, model.network.weights):
        np.testing.assert_array_equal(to_numpy(w), old)
