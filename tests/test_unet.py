import math

import keras
import numpy as np
import pytest
from keras import ops

from ddpm_keras import AttentionBlock
from ddpm_keras import TimeEmbedding
from ddpm_keras import build_unet
from ddpm_keras.nn.unet import network_num_classes
from ddpm_keras.presets import get_preset

TINY = dict(img_size=16, img_channels=3, widths=[8, 16], has_attention=[False, True], first_conv_channels=8)


def test_flowers_config_has_the_examples_parameter_count():
    assert build_unet(**get_preset("flowers64")["unet"]).count_params() == 63_200_387


@pytest.mark.parametrize("img_size, channels", [(16, 1), (16, 3), ((16, 24), 3)])
def test_output_shape_and_near_zero_output_at_init(img_size, channels):
    net = build_unet(img_size, channels, [8, 16], [False, True], num_res_blocks=1, first_conv_channels=8)
    h, w = (img_size, img_size) if isinstance(img_size, int) else img_size
    x = np.random.default_rng(0).standard_normal((2, h, w, channels)).astype(np.float32)
    y = ops.convert_to_numpy(net([x, np.array([0, 9], np.int32)]))
    assert y.shape == (2, h, w, channels)
    # The head's kernel starts at VarianceScaling(1e-10): the output is ~0.
    assert np.abs(y).max() < 1e-3
    assert net.inputs[1].dtype == "int32"


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"widths": [8, 12]}, "widths=\\[8, 12\\]"),
        ({"first_conv_channels": 10}, "first_conv_channels=10"),
        ({"img_size": 17}, "img_size=17"),
        ({"img_size": (16, 21)}, "divisible by 2 \\*\\* \\(len\\(widths\\) - 1\\) = 2"),
        ({"img_size": 0}, "img_size=0"),
        ({"has_attention": [False]}, "has_attention"),
        ({"dropout": 1.0}, "dropout=1.0"),
        ({"img_channels": 0}, "img_channels=0"),
        ({"attention_residual": "normalised"}, "attention_residual='normalised'"),
        ({"num_classes": 0}, "num_classes=0"),
        ({"num_classes": 2.0}, "num_classes=2.0"),
        ({"num_classes": True}, "num_classes=True"),
    ],
)
def test_bad_configuration_is_a_value_error_naming_it(kwargs, message):
    args = dict(img_size=16, img_channels=3, widths=[8, 16], has_attention=[False, True], first_conv_channels=8)
    args.update(kwargs)
    with pytest.raises(ValueError, match=message):
        build_unet(**args)


def test_time_embedding_matches_the_sinusoid_formula():
    dim = 8
    t = np.array([0, 1, 17, 999], np.int32)
    got = ops.convert_to_numpy(TimeEmbedding(dim)(t))
    half = dim // 2
    freqs = np.array([10000 ** (-i / (half - 1)) for i in range(half)])
    angles = t[:, None] * freqs[None, :]
    np.testing.assert_allclose(got, np.concatenate([np.sin(angles), np.cos(angles)], -1), atol=2e-4)


@pytest.mark.parametrize("residual", ["input", "normalized"])
def test_attention_block_matches_numpy_attention(residual):
    layer = AttentionBlock(8, groups=2, residual=residual)
    x = np.random.default_rng(1).standard_normal((2, 3, 4, 8)).astype(np.float32)
    layer.build(x.shape)
    # Give the projection real weights so the attention path is visible.
    layer.proj.kernel.assign(np.random.default_rng(2).standard_normal((8, 8)).astype(np.float32))
    got = ops.convert_to_numpy(layer(x))

    g = x.reshape(2, 3, 4, 2, 4)
    mean = g.mean(axis=(1, 2, 4), keepdims=True)
    var = g.var(axis=(1, 2, 4), keepdims=True)
    normed = ((g - mean) / np.sqrt(var + layer.norm.epsilon)).reshape(2, 12, 8)

    def dense(d, v):
        return v @ ops.convert_to_numpy(d.kernel) + ops.convert_to_numpy(d.bias)

    q, k, v = dense(layer.query, normed), dense(layer.key, normed), dense(layer.value, normed)
    scores = q @ k.transpose(0, 2, 1) / math.sqrt(8)
    weights = np.exp(scores - scores.max(-1, keepdims=True))
    weights /= weights.sum(-1, keepdims=True)
    # The paper adds the block's input back, the keras.io example the normalised input.
    base = x if residual == "input" else normed.reshape(2, 3, 4, 8)
    expected = base + dense(layer.proj, weights @ v).reshape(2, 3, 4, 8)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)


def test_attention_residual_is_saved_and_a_config_without_it_means_input():
    config = AttentionBlock(8, groups=2, residual="normalized").get_config()
    assert AttentionBlock.from_config(config).residual == "normalized"
    del config["residual"]  # as in the .keras files written before the option
    assert AttentionBlock.from_config(config).residual == "input"
    with pytest.raises(ValueError, match="residual='norm'"):
        AttentionBlock(8, groups=2, residual="norm")


def test_attention_residual_keeps_the_weights():
    args = dict(img_size=16, img_channels=3, widths=[8, 16], has_attention=[False, True], first_conv_channels=8)
    paper, example = build_unet(**args), build_unet(**args, attention_residual="normalized")
    assert [w.shape for w in paper.weights] == [w.shape for w in example.weights]
    assert {layer.residual for layer in paper.layers if isinstance(layer, AttentionBlock)} == {"input"}


def test_unet_serializes_with_its_custom_layers(tmp_path):
    net = build_unet((8, 16), 1, [8, 16], [False, True], num_res_blocks=1, first_conv_channels=8)
    path = tmp_path / "unet.keras"
    net.save(path)
    loaded = keras.saving.load_model(path)
    x = np.random.default_rng(0).standard_normal((2, 8, 16, 1)).astype(np.float32)
    t = np.array([3, 4], np.int32)
    np.testing.assert_array_equal(ops.convert_to_numpy(loaded([x, t])), ops.convert_to_numpy(net([x, t])))
    assert {type(layer).__name__ for layer in loaded.layers} >= {"TimeEmbedding", "AttentionBlock"}


def test_num_classes_none_is_the_unconditional_network():
    assert build_unet(**get_preset("flowers64")["unet"], num_classes=None).count_params() == 63_200_387
    today, unconditional = build_unet(**TINY), build_unet(**TINY, num_classes=None)
    assert [w.shape for w in unconditional.weights] == [w.shape for w in today.weights]
    assert [i.name for i in unconditional.inputs] == ["images", "timesteps"]
    assert network_num_classes(unconditional) is None
    conditional = build_unet(**TINY, num_classes=5)
    assert [i.name for i in conditional.inputs] == ["images", "timesteps", "labels"]
    assert conditional.inputs[2].dtype == "int32" and tuple(conditional.inputs[2].shape) == (None,)
    # One more weight: 5 classes and the null label, each a vector of the time embedding's size (4 x 8).
    assert conditional.count_params() == today.count_params() + 6 * 32
    assert network_num_classes(conditional) == 5


def perturbed(network, scale=0.05, seed=0):
    """`network` with noise added to every weight, so that the zero-initialised branches pass the embedding on."""
    rng = np.random.default_rng(seed)
    for w in network.weights:
        w.assign(ops.convert_to_numpy(w) + rng.normal(0.0, scale, w.shape).astype(np.float32))
    return network


def test_class_embedding_is_added_to_the_time_embedding_after_its_mlp():
    net = perturbed(build_unet(**TINY, num_classes=3))
    x = np.random.default_rng(1).standard_normal((4, 16, 16, 3)).astype(np.float32)
    t = np.full((4,), 5, np.int32)
    outputs = [ops.convert_to_numpy(net([x, t, np.full((4,), y, np.int32)])) for y in range(4)]
    for y in range(1, 4):  # classes 1, 2 and the null label 3 each differ from class 0
        assert np.abs(outputs[y] - outputs[0]).mean() > 1e-3
    # emb = time_mlp(t) + E[y]: moving class 1's row by time_mlp(5) - time_mlp(7) makes
    # (t = 7, y = 1) the input of (t = 5, y = 0) for every block, whatever the rest of the network.
    add = net.get_layer("add_class_embedding")
    time_mlp = keras.Model(net.inputs[1], add.input[0])
    embedding = net.get_layer("class_embedding").embeddings
    rows = ops.convert_to_numpy(embedding).copy()
    shift = ops.convert_to_numpy(time_mlp(np.array([5], np.int32)) - time_mlp(np.array([7], np.int32)))[0]
    rows[1] = rows[0] + shift
    embedding.assign(rows)
    moved = ops.convert_to_numpy(net([x, np.full((4,), 7, np.int32), np.ones((4,), np.int32)]))
    np.testing.assert_allclose(moved, outputs[0], atol=1e-5)


def test_three_inputs_without_a_class_embedding_is_a_clear_error():
    images = keras.Input((16, 16, 3))
    t, labels = keras.Input((), dtype="int32"), keras.Input((), dtype="int32")
    network = keras.Model([images, t, labels], images)
    with pytest.raises(ValueError, match="no 'class_embedding' Embedding layer"):
        network_num_classes(network)
