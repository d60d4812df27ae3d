"""Inpainting networks from trained ones: the same graph with the mask as more input channels, zero at first.

`build_unet(..., inpainting=True)` builds an inpainting UNet from its
arguments; `inpainting_network` makes one from a built network (a trained
or loaded one) by adding the two inputs to its functional config, and
`load_unconditional_weights` copies a network's weights into one, so that
it starts from exactly that network's predictions.
"""

import keras
import numpy as np
from keras import layers

from ddpm_keras.nn.unet import INPAINTING_INPUTS
from ddpm_keras.nn.unet import input_names
from ddpm_keras.nn.unet import network_is_inpainting


def inpainting_network(network):
    """The inpainting network of `network`'s configuration, computing exactly `network`'s prediction at first.

    The same functional graph (every layer, name and config) with the
    inputs `masked_image` and `mask` of `build_unet(..., inpainting=True)`
    concatenated to the images before the first conv; every weight is
    copied, and the first conv's kernel takes the old one on the image
    channels and zeros on the new ones (`load_unconditional_weights`), so
    the network ignores the mask until it is trained (as the Stable
    Diffusion inpainting models were started).

    Args:
        network: A functional network `[images, timesteps(, labels)]`,
            such as `build_unet(...)` or a loaded model's `network` or
            `ema_network`, whose images feed one `Conv2D`.

    Returns:
        A new functional `keras.Model` `[images, timesteps, masked_image,
        mask(, labels)]`.

    Example:

    >>> inpainter = inpainting_network(model.network)
    >>> inpainter([x_t, t, masked, mask])  # == model.network([x_t, t]) until trained
    """
    if network_is_inpainting(network):
        raise ValueError(f"network is already an inpainting network. Received: inputs {input_names(network)}")
    config = network.get_config()
    images_name = config["input_layers"][0][0]
    consumers = [layer for layer in config["layers"] if _reads(layer, images_name)]
    if len(consumers) != 1 or consumers[0]["class_name"] != "Conv2D":
        kinds = [layer["class_name"] for layer in consumers]
        raise ValueError(
            "inpainting_network needs a network whose images feed one Conv2D (build_unet's first conv). "
            f"Received: the images feed {kinds}"
        )
    first_conv = consumers[0]
    shape = list(network.inputs[0].shape)
    mask_shape = shape[:-1] + [1]
    concatenated = shape[:-1] + [2 * shape[-1] + 1]
    concat = keras.saving.serialize_keras_object(layers.Concatenate(axis=-1, name="inpainting_inputs"))
    concat.update(name="inpainting_inputs", inbound_nodes=[{
        "args": [[_tensor(images_name, shape), _tensor("masked_image", shape), _tensor("mask", mask_shape)]],
        "kwargs": {},
    }])
    new_inputs = [_input_layer("masked_image", shape), _input_layer("mask", mask_shape)]
    first_conv["inbound_nodes"] = [{"args": [_tensor("inpainting_inputs", concatenated)], "kwargs": {}}]
    if "build_config" in first_conv:
        first_conv["build_config"] = {"input_shape": concatenated}
    config["layers"] = new_inputs + config["layers"]
    config["layers"].insert(config["layers"].index(first_conv), concat)
    config["input_layers"] = (
        config["input_layers"][:2] + [[name, 0, 0] for name in INPAINTING_INPUTS] + config["input_layers"][2:]
    )
    inpainter = keras.Model.from_config(config)
    load_unconditional_weights(inpainter, network)
    return inpainter


def _reads(layer, name):
    """Whether a layer of a functional config takes the output of the layer `name`."""
    def histories(value):
        if isinstance(value, dict):
            if value.get("class_name") == "__keras_tensor__":
                yield value["config"]["keras_history"][0]
            else:
                for item in value.values():
                    yield from histories(item)
        elif isinstance(value, (list, tuple)):
            for item in value:
                yield from histories(item)

    return name in set(histories(layer.get("inbound_nodes", [])))


def _tensor(name, shape):
    return {"class_name": "__keras_tensor__", "config": {"shape": list(shape), "dtype": "float32",
                                                          "keras_history": [name, 0, 0]}}


def _input_layer(name, shape):
    return {
        "module": "keras.layers", "class_name": "InputLayer", "registered_name": None, "name": name,
        "config": {"batch_shape": list(shape), "dtype": "float32", "sparse": False, "ragged": False, "name": name},
        "inbound_nodes": [],
    }


def load_unconditional_weights(inpainter, network):
    """Copies `network`'s weights into the inpainting network `inpainter`, zeroing the new input channels.

    The two networks must have the same weights in the same order
    (`build_unet` with the same arguments but `inpainting`), except the
    first conv's kernel, `(k, k, C, F)` in `network` and `(k, k, 2C + 1,
    F)` in `inpainter`: its first `C` input channels (`x_t`) take the old
    kernel, the `C + 1` channels of the masked image and the mask are
    zeros. `inpainter` then computes exactly `network`'s output, whatever
    the mask.

    Args:
        inpainter: An inpainting network (`network_is_inpainting`).
        network: A network of the same configuration without inpainting.

    Raises:
        ValueError: One line, when the networks differ otherwise (image
            size, channels, widths, blocks, classes).
    """
    if not network_is_inpainting(inpainter) or network_is_inpainting(network):
        raise ValueError(
            "load_unconditional_weights copies a network into an inpainting network of the same configuration. "
            f"Received: inpainting={network_is_inpainting(inpainter)} for the target, "
            f"{network_is_inpainting(network)} for the source"
        )
    target_shape, source_shape = tuple(inpainter.inputs[0].shape[1:]), tuple(network.inputs[0].shape[1:])
    if target_shape != source_shape:
        raise ValueError(
            f"The networks take images of other shapes: {source_shape} to copy into {target_shape}. Start from a "
            f"network of the same image size and channels. Received: images {source_shape}"
        )
    if len(inpainter.weights) != len(network.weights):
        raise ValueError(
            f"The networks differ (other widths, blocks or classes): {len(network.weights)} weights "
            f"({network.count_params():,} parameters) to copy into {len(inpainter.weights)}. Start from a network "
            f"built with the same arguments. Received: {network.count_params():,} parameters"
        )
    channels, values, widened = source_shape[-1], [], 0
    for target, source in zip(inpainter.weights, network.weights):
        value = keras.ops.convert_to_numpy(source.value)
        target_weight_shape = tuple(target.shape)
        if target_weight_shape != value.shape:
            if (
                len(value.shape) != 4 or widened
                or target_weight_shape != value.shape[:2] + (2 * channels + 1,) + value.shape[3:]
            ):
                raise ValueError(
                    f"The networks differ (other widths, blocks or classes): the weight {source.path} has shape "
                    f"{value.shape} where the inpainting network's {target.path} has {target_weight_shape}. Start "
                    f"from a network built with the same arguments. Received: shape {value.shape}"
                )
            widened += 1
            value = np.concatenate([value, np.zeros(value.shape[:2] + (channels + 1,) + value.shape[3:], value.dtype)],
                                   axis=2)
        values.append(value)
    for target, value in zip(inpainter.weights, values):
        target.assign(value)
