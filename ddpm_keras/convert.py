"""Imports the keras.io DDPM example's TensorFlow checkpoints into a `DiffusionModel`.

The example (keras.io/examples/generative/ddpm, tf.keras 2) saves weights with
`save_weights` in TensorFlow's checkpoint format, `PREFIX.index` and
`PREFIX.data-*`, which Keras 3 does not read; its author published the
flowers weights as `KERAS_IO_CHECKPOINT_URL`. This module reads them with
TensorFlow's checkpoint reader (no Keras 2 needed) into
`build_unet(..., attention_residual="normalized")`, the example's network.

How the names map: tf.keras 2 names a functional model's weighted layers
`layer_with_weights-K` in the order of `model.layers` (by depth from the
inputs, as Keras 3 orders them too: checked against tf.keras 2 on the tests'
configurations and flowers64), with nested names for the attention block's
sublayers (`layer_with_weights-K/query/kernel`). A whole example model saved
at once has the same names under `network/` and `ema_network/`.

Example:

>>> model = load_keras_io_checkpoint(KERAS_IO_CHECKPOINT_URL)  # flowers64
>>> images = model.generate_images(num_images=16, seed=0)
>>> convert_keras_io_checkpoint("checkpoints/", "flowers64.keras")  # ddpm-keras import-keras-io
"""

import contextlib
import hashlib
import os
import re
import tempfile
import urllib.parse
import zipfile

import keras
import numpy as np

from ddpm_keras import hub
from ddpm_keras.model import DiffusionModel
from ddpm_keras.presets import DEFAULT_SAMPLING
from ddpm_keras.presets import get_preset
from ddpm_keras.utils import files
from ddpm_keras.utils.download import keras_home
from ddpm_keras.utils.download import one_line
from ddpm_keras.utils.download import probe_host

KERAS_IO_CHECKPOINT_URL = "https://github.com/AakashKumarNain/ddpms/releases/download/v3.0.0/checkpoints.zip"
NETWORKS = ("network", "ema_network")  # The example's DiffusionModel attributes.
_VALUE = "/.ATTRIBUTES/VARIABLE_VALUE"
_SHOWN = 4  # Names shown per kind of mismatch in the error.


# The keras.io example's published weights as a preset (`DiffusionModel.from_preset("keras_io_flowers64")`).
KERAS_IO_PRESET = "keras_io_flowers64"
KERAS_IO_PRESET_METADATA = {
    "description": "The keras.io DDPM example's published EMA network: Oxford Flowers 102 at 64 px, 63.2 M parameters",
    "trained_on": "oxford_flowers102 (train split), by the example's author",
    "img_size": [64, 64],
    "num_classes": None,
    "parameter_count": 63200387,
    "training": {"preset": "flowers64", "source": KERAS_IO_CHECKPOINT_URL,
                 "download": "on first use, converted once into <KERAS_HOME>/ddpm_keras/presets/"},
    "sampling": dict(DEFAULT_SAMPLING),
}


class CheckpointMismatchError(ValueError):
    """A checkpoint's variables do not fit the network of the configuration tried."""


class CheckpointUnavailableError(FileNotFoundError):
    """A checkpoint URL could not be downloaded."""


def load_keras_io_checkpoint(source, preset="flowers64", unet=None):
    """Loads a checkpoint of the keras.io DDPM example into a compiled `DiffusionModel`.

    The network is `build_unet(**preset["unet"], attention_residual="normalized")`
    (the example's attention). A checkpoint of one network (the example's
    `ema_network.save_weights(...)`, as published) fills both `network` and
    `ema_network`; one of the example's whole model fills each from its own.

    Args:
        source: The checkpoint: its prefix (`.../diffusion_model_checkpoint`,
            beside `.index` and `.data-*` files), a directory holding exactly
            one `.index` file, a `.zip` of one, or an http(s) URL of such a zip
            (downloaded once to `~/.keras/models`).
        preset: String, the preset (`ddpm_keras.presets`) the network was
            trained with; it also gives the diffusion, the model options and
            Adam's learning rate. Defaults to `"flowers64"`, the example's.
        unet: `None` or a dict of `build_unet` arguments that replace the
            preset's (e.g. `{"widths": [32, 64, 128, 256]}`). Defaults to `None`.

    Returns:
        A `DiffusionModel`, compiled with Adam.

    Raises:
        CheckpointMismatchError: The checkpoint's variables are missing,
            extra or of other shapes than the network's; the message lists them.

    Example:

    >>> model = load_keras_io_checkpoint("checkpoints/diffusion_model_checkpoint")
    >>> model.ema_network.count_params()
    63200387
    """
    config = get_preset(preset)
    config["unet"].update(unet or {})
    model = _import(source, preset, config)
    model.compile(optimizer=keras.optimizers.Adam(config["training"]["learning_rate"]))
    return model


def convert_keras_io_checkpoint(source, out_path, preset="flowers64", unet=None, overwrite=False):
    """Writes a keras.io example checkpoint as a `.keras` file of a `DiffusionModel`.

    The model in the file is not compiled: Keras warns at every load of a
    file whose optimizer was never built, and a built Adam would double the
    file with zeros. Compile it after loading to train it further.

    Args:
        source: The checkpoint, as `load_keras_io_checkpoint` takes it.
        out_path: Path of the `.keras` file to write (atomically).
        preset: String, the preset the network was trained with. Defaults
            to `"flowers64"`.
        unet: `None` or a dict of `build_unet` arguments replacing the
            preset's. Defaults to `None`.
        overwrite: Boolean, replace an existing `out_path` that is not a
            `DiffusionModel` file of ddpm_keras (one that is is replaced
            anyway). Defaults to `False`.

    Returns:
        `out_path`, which `keras.saving.load_model` (and
        `ddpm-keras sample --checkpoint`) reads.

    Example:

    >>> convert_keras_io_checkpoint(KERAS_IO_CHECKPOINT_URL, "flowers64.keras")
    'flowers64.keras'
    """
    out_path = os.fspath(out_path)
    if not out_path.endswith(".keras"):
        raise ValueError(f"out_path must name a .keras file. Received: out_path={out_path!r}")
    files.check_output(out_path, "out_path", overwrite=overwrite)
    config = get_preset(preset)
    config["unet"].update(unet or {})
    model = _import(source, preset, config)
    return files.atomic_write(out_path, model.save, mode=None)


def _import(source, preset, config):
    """The uncompiled `DiffusionModel` of a checkpoint, for a preset dict `config`."""
    _check_example_layout(config["unet"])
    with _checkpoint_prefix(source) as prefix:  # the download first: offline fails before the network is built
        # The example's network: its attention, no dropout.
        model = DiffusionModel.from_preset(
            preset, compile=False, **{**config["unet"], "dropout": 0.0}, attention_residual="normalized"
        )
        reader = _reader(prefix)
        shapes = reader.get_variable_to_shape_map()
        names = _network_prefixes(shapes)
        networks = {name: model.ema_network if name == "ema_network" else model.network for name in names}
        expected = {name: _expected_variables(network, name) for name, network in networks.items()}
        _check_fit(shapes, expected, source, preset, config["unet"])
        for variables in expected.values():
            for key, variable in variables.items():
                variable.assign(np.asarray(reader.get_tensor(key), dtype=variable.dtype))
    # One network in the checkpoint (bare, or one of the two): the other starts as a copy of it.
    if "ema_network" not in names:
        model.ema_network.set_weights(model.network.get_weights())
    elif not {"", "network"} & set(names):
        model.network.set_weights(model.ema_network.get_weights())
    return model


def _check_example_layout(unet):
    """Rejects configurations whose `build_unet` differs from the example's `build_model`."""
    widths = list(unet["widths"])
    repeated = [i for i, width in enumerate(widths[:-1]) if width == widths[-1]]
    if repeated:
        raise ValueError(
            "The keras.io example downsamples only where widths[i] != widths[-1], build_unet at every level "
            f"but the last: the two networks differ for widths that repeat the last one. Received: widths={widths}"
        )
    if unet["img_channels"] != 3:
        raise ValueError(
            "The keras.io example's network always outputs 3 channels (RGB). "
            f"Received: img_channels={unet['img_channels']}; use a preset of RGB images."
        )


def _expected_variables(network, prefix):
    """`{checkpoint key: variable}` of `network` as tf.keras 2 names the example's."""
    expected = {}
    weighted = [layer for layer in network.layers if layer.weights]
    for index, layer in enumerate(weighted):
        sublayers = {name: value for name, value in vars(layer).items()
                     if isinstance(value, keras.layers.Layer) and not name.startswith("_")}
        paths = ({f"{name}/{v.name}": v for name, sub in sublayers.items() for v in sub.weights}
                 if sublayers else {v.name: v for v in layer.weights})
        if len(paths) != len(layer.weights):
            raise RuntimeError(f"Cannot name the weights of {layer.name} as tf.keras 2 does: {sorted(paths)}")
        for path, variable in paths.items():
            expected[f"{prefix}{'/' if prefix else ''}layer_with_weights-{index}/{path}{_VALUE}"] = variable
    return expected


def _network_prefixes(shapes):
    """The network prefixes of a checkpoint: `[""]` for one UNet, else those of `NETWORKS` present."""
    present = [name for name in NETWORKS if any(key.startswith(name + "/") for key in shapes)]
    return present or [""]


def _is_state(key):
    """Whether a checkpoint key is training state (optimizer, its slots, counters) rather than weights."""
    return (key == "_CHECKPOINTABLE_OBJECT_GRAPH" or "/.OPTIMIZER_SLOT/" in key
            or key.startswith(("optimizer/", "save_counter/")))


def _check_fit(shapes, expected, source, preset, unet):
    """Raises one `CheckpointMismatchError` listing every missing, extra and misshapen variable."""
    wanted = {key: variable for variables in expected.values() for key, variable in variables.items()}
    missing = [f"{_short(k)} {list(v.shape)}" for k, v in wanted.items() if k not in shapes]
    differ = [f"{_short(k)} (checkpoint {list(shapes[k])}, network {list(v.shape)})"
              for k, v in wanted.items() if k in shapes and tuple(shapes[k]) != tuple(v.shape)]
    extra = [f"{_short(k)} {list(shapes[k])}" for k in sorted(shapes, key=_in_number_order)
             if k not in wanted and not _is_state(k)]
    if not (missing or differ or extra):
        return
    problems = "; ".join(
        f"{len(items)} {what}: {', '.join(items[:_SHOWN])}"
        + (f" and {len(items) - _SHOWN} more" if items[_SHOWN:] else "")
        for what, items in [("shapes differ", differ), ("variables missing", missing), ("extra variables", extra)]
        if items
    )
    layout = ", ".join(f"{name}={unet[name]}" for name in
                       ("img_size", "widths", "has_attention", "num_res_blocks", "norm_groups", "first_conv_channels")
                       if name in unet)
    raise CheckpointMismatchError(
        f"The checkpoint {source} does not fit the keras.io example's UNet of preset {preset!r} ({layout}): "
        f"{problems}. Pass the preset it was trained with (--preset NAME; unet=... in Python), or it is a "
        "checkpoint of another network."
    )


def _in_number_order(key):
    """A sort key putting `layer_with_weights-9` before `layer_with_weights-10`."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", key)]


def _short(key):
    return key[: -len(_VALUE)] if key.endswith(_VALUE) else key


def _reader(prefix):
    import tensorflow as tf

    try:
        return tf.train.load_checkpoint(prefix)
    except (tf.errors.OpError, ValueError) as error:
        raise ValueError(f"Cannot read the TensorFlow checkpoint {prefix}: {one_line(error)}") from None


@contextlib.contextmanager
def _checkpoint_prefix(source):
    """The checkpoint prefix of `source`, a URL or zip being downloaded and extracted to a temporary directory."""
    source = os.fspath(source)
    if re.match(r"https?://", source, flags=re.IGNORECASE):
        source = _download(source)
    if source.lower().endswith(".zip"):
        if not os.path.isfile(source):
            raise FileNotFoundError(f"No zip file at {source}.")
        with tempfile.TemporaryDirectory(prefix="ddpm-keras-import-") as folder:
            try:
                with zipfile.ZipFile(source) as archive:
                    _check_members(archive, source)
                    archive.extractall(folder)
            except zipfile.BadZipFile as error:
                raise ValueError(f"Cannot read the zip file {source}: {one_line(error)}") from None
            yield _find_prefix(folder, source)
        return
    if os.path.isdir(source):
        yield _find_prefix(source, source)
        return
    prefix = source[: -len(".index")] if source.endswith(".index") else source
    if not os.path.isfile(prefix + ".index"):
        raise FileNotFoundError(
            f"No TensorFlow checkpoint at {source}: expected a prefix with {os.path.basename(prefix)}.index beside "
            "it, a directory holding one .index file, a .zip of one, or an http(s) URL of such a zip."
        )
    yield prefix


def _check_members(archive, source):
    """Refuses a zip holding links: a checkpoint is plain files (Python would write a link as a file of its target)."""
    import stat

    links = [info.filename for info in archive.infolist() if stat.S_ISLNK(info.external_attr >> 16)]
    if links:
        raise ValueError(f"{source} holds a symbolic link ({links[0]}): a checkpoint zip holds plain files only.")


def _find_prefix(folder, source):
    indexes = sorted(os.path.join(root, name) for root, _, names in os.walk(folder)
                     for name in names if name.endswith(".index"))
    if len(indexes) != 1:
        found = ", ".join(os.path.relpath(path, folder) for path in indexes) or "none"
        raise ValueError(f"{source} must hold exactly one TensorFlow checkpoint (.index file). Found: {found}")
    return indexes[0][: -len(".index")]


def _download(url):
    """The cached local copy of `url`, downloaded once; a one-line error at once when offline."""
    name = os.path.basename(urllib.parse.urlsplit(url).path)
    if not name.lower().endswith(".zip"):
        raise ValueError(f"A checkpoint URL must name a .zip file of the checkpoint. Received: {url}")
    filename = f"keras-io-{hashlib.sha256(url.encode()).hexdigest()[:10]}-{name}"
    cached = os.path.join(keras_home(), "models", filename)
    if os.path.isfile(cached):
        return cached
    reason = probe_host(url)
    if reason is None:
        try:
            return keras.utils.get_file(filename, url, cache_dir=keras_home(), cache_subdir="models")
        except Exception as error:  # noqa: BLE001 - any download failure becomes the one-line error
            reason = one_line(error)
    raise CheckpointUnavailableError(
        f"Could not download {url} ({reason}). Download it on a machine with internet access and pass the "
        "zip's path (or the unzipped checkpoint's) instead."
    )


hub.register_converted_preset(KERAS_IO_PRESET, KERAS_IO_PRESET_METADATA,
                              lambda: load_keras_io_checkpoint(KERAS_IO_CHECKPOINT_URL))
