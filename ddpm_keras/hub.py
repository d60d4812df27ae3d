"""Pretrained presets, keras-hub's way: shipped in the package, in a local folder, or on a model hub.

A preset is a folder in keras-hub's layout, so the hubs' own tools upload
it (`keras_hub.upload_preset`, `huggingface-cli upload`, `kagglehub`):

- `config.json`: the model, as `keras.saving.serialize_keras_object` writes
  it (its networks' configurations, diffusion and options);
- `model.weights.h5`: the EMA network's weights (the ones that sample
  well); loading gives them to the trained network too, so fine-tuning
  starts from them;
- `metadata.json`: Keras's and this package's versions, the parameter
  count, the date, and what `DiffusionModel.presets` shows: a description,
  image size, classes, what it was trained on and for how long, and the
  sampler it is best sampled with.

`DiffusionModel.from_preset(handle)` takes the name of a preset shipped in
`ddpm_keras/pretrained/`, a converted one (`keras_io_flowers64`: the keras.io
example's published weights, downloaded and converted once into the Keras
cache), the path of a preset folder, a hub handle (`hf://owner/name`,
`kaggle://owner/model/keras/variant`, downloaded once through the hub's
client library, the optional extra `pip install "ddpm-keras[hub]"`), or the
name of a configuration (`ddpm_keras.presets`: an untrained model).
`DiffusionModel.save_to_preset(folder)` writes the layout.
"""

import datetime
import json
import os

import keras

from ddpm_keras.preset_builder import build_model
from ddpm_keras.presets import PRESETS
from ddpm_keras.samplers.options import option_names
from ddpm_keras.utils import files
from ddpm_keras.utils.download import keras_home
from ddpm_keras.utils.download import one_line

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.weights.h5"
METADATA_FILE = "metadata.json"
PRESET_FILES = (CONFIG_FILE, WEIGHTS_FILE, METADATA_FILE)
PRETRAINED_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "pretrained")
HUB_SCHEMES = ("hf://", "kaggle://")
# The metadata fields a preset describes itself with (`DiffusionModel.presets`), besides the versions.
DESCRIPTION_FIELDS = ("description", "trained_on", "training", "sampling")

# Presets made on first use by a converter (`register_converted_preset`): name -> (metadata, build).
_CONVERTED = {}


class PresetUnavailableError(FileNotFoundError):
    """A hub preset is neither in the cache nor downloadable now."""


class PresetsProperty:
    """`DiffusionModel.presets`: `available_presets()`, read when asked."""

    def __get__(self, instance, owner):
        return available_presets()


def from_preset(model_class, preset, compile=True, **overrides):
    """`DiffusionModel.from_preset`: weights presets through `load_preset`, configurations through `build_model`."""
    if is_weights_handle(preset):
        return load_preset(model_class, preset, compile=compile, **overrides)
    if preset in PRESETS:
        return build_model(model_class, preset, compile=compile, **overrides)
    raise ValueError(
        f"Unknown preset: {preset!r}. Pretrained: {sorted(available_presets())}; configurations (untrained): "
        f"{sorted(PRESETS)}; or a preset folder, hf://owner/name or kaggle://owner/model/keras/variant."
    )


def register_converted_preset(name, metadata, build):
    """Makes `name` a preset built once by `build()` (a `DiffusionModel`), then read from the Keras cache."""
    _CONVERTED[name] = (dict(metadata), build)


def shipped_presets():
    """`name -> metadata` of the presets in the package's `pretrained/` folder."""
    presets = {}
    if os.path.isdir(PRETRAINED_DIR):
        for name in sorted(os.listdir(PRETRAINED_DIR)):
            path = os.path.join(PRETRAINED_DIR, name, METADATA_FILE)
            if os.path.isfile(path):
                presets[name] = _read_json(path)
    return presets


def available_presets():
    """`name -> metadata` of every named weights preset: the shipped ones and the converted ones."""
    return {**shipped_presets(), **{name: dict(meta) for name, (meta, _) in _CONVERTED.items()}}


def cache_dir():
    """Where hub and converted presets are kept: `<KERAS_HOME>/ddpm_keras/presets/` (`~/.keras` by default)."""
    return os.path.join(keras_home(), "ddpm_keras", "presets")


def is_weights_handle(handle):
    """Whether `handle` names a weights preset (not one of `ddpm_keras.presets`' configurations)."""
    handle = os.fspath(handle)
    return (_is_shipped(handle) or handle in _CONVERTED or handle.startswith(HUB_SCHEMES) or os.path.isdir(handle)
            or os.sep in handle)


def preset_folder(handle):
    """The local folder of the preset `handle`, downloading or converting it first if needed."""
    handle = os.fspath(handle)
    if handle.startswith(HUB_SCHEMES):
        return _download(handle)
    if _is_shipped(handle):
        return os.path.join(PRETRAINED_DIR, handle)
    if handle in _CONVERTED:
        folder = os.path.join(cache_dir(), handle)
        if not os.path.isfile(os.path.join(folder, WEIGHTS_FILE)):
            metadata, build = _CONVERTED[handle]
            try:
                model = build()
            except Exception as error:  # noqa: BLE001 - offline or a bad download: one line naming the preset
                raise PresetUnavailableError(f"The preset {handle} is not in the cache {folder} yet, and making it "
                                             f"failed: {one_line(error)}") from None
            save_to_preset(model, folder, **{k: metadata[k] for k in DESCRIPTION_FIELDS if k in metadata})
        return folder
    if os.path.isdir(handle):
        return handle
    raise FileNotFoundError(f"No preset folder at {handle}: pass a folder that save_to_preset wrote, a hub handle "
                            f"({' or '.join(h + '...' for h in HUB_SCHEMES)}) or a preset name.")


def read_metadata(handle):
    """The `metadata.json` of the preset `handle` (as `preset_folder` finds it)."""
    return _read_json(os.path.join(preset_folder(handle), METADATA_FILE))


def load_preset(model_class, handle, compile=True, **overrides):
    """A `model_class` with the configuration and EMA weights of the preset `handle` (see the module).

    `overrides` may change the model's options (`ema`, `loss_weighting`,
    `seed`, `name`, ...) and `learning_rate` (of the Adam it is compiled
    with; the one it was trained with by default), not its network or
    diffusion, which the weights fix.
    """
    folder = preset_folder(handle)
    for name in PRESET_FILES:
        if not os.path.isfile(os.path.join(folder, name)):
            raise FileNotFoundError(f"The preset {handle} has no {name} (in {folder}): it is not a preset folder "
                                    "that save_to_preset wrote.")
    metadata = _read_json(os.path.join(folder, METADATA_FILE))
    serialized = _read_json(os.path.join(folder, CONFIG_FILE))
    learning_rate = overrides.pop("learning_rate", metadata.get("training", {}).get("learning_rate", 1e-4))
    config = serialized.get("config")
    if not isinstance(config, dict) or "network" not in config:
        raise ValueError(f"{os.path.join(folder, CONFIG_FILE)} is not a DiffusionModel's config.json.")
    # A preset written before models kept their sampling samples, as its metadata says, with no arguments.
    config.setdefault("default_sampling", metadata_sampling(metadata))
    unknown = sorted(set(overrides) - set(config) - {"name"})
    fixed = sorted(set(overrides) & {"network", "ema_network", "diffusion"})
    if unknown or fixed:
        raise ValueError(f"The preset {handle} fixes its network and diffusion; an override may change the model's "
                         f"options ({', '.join(sorted(set(config) - {'network', 'ema_network', 'diffusion'}))}) or "
                         f"learning_rate. Received: {(unknown + fixed)[0]}={overrides[(unknown + fixed)[0]]!r}")
    config.update(overrides)
    try:
        model = model_class.from_config(config)
    except Exception as error:  # noqa: BLE001 - a config that does not build is one line naming the file
        raise ValueError(f"Cannot build the model of {os.path.join(folder, CONFIG_FILE)}: "
                         f"{type(error).__name__}: {one_line(error)}") from None
    weights = os.path.join(folder, WEIGHTS_FILE)
    try:
        model.ema_network.load_weights(weights)
    except Exception as error:  # noqa: BLE001 - a corrupt weights file is one line naming it
        raise ValueError(f"Cannot read the weights {weights}: {type(error).__name__}: {one_line(error)}") from None
    model.network.set_weights(model.ema_network.get_weights())
    if compile:
        model.compile(optimizer=keras.optimizers.Adam(learning_rate))
    return model


def metadata_sampling(metadata):
    """The sampler and its options in a preset's `metadata.json` (`sampling` less `generate_images`' other arguments), or `None`."""
    sampling = {k: v for k, v in metadata.get("sampling", {}).items() if k in option_names()}
    return sampling if "sampler" in sampling else None


def save_to_preset(model, folder, description=None, trained_on=None, training=None, sampling=None):
    """Writes `model` as a preset folder (keras-hub's layout; see the module); returns `folder`.

    The folder may be new, empty or a preset written before (its three
    files are replaced, each atomically); a folder holding anything else
    is refused, never emptied.

    Args:
        model: A `DiffusionModel`.
        folder: String, the preset folder.
        description: String, one line on what the model draws.
        trained_on: String, the data it was trained on.
        training: Dict, how it was trained (steps, batch size, learning
            rate, the command that did it, ...).
        sampling: Dict of `generate_images` arguments it samples best with
            (`sampler`, `num_steps`, `guidance_scale`, ...).
    """
    folder = os.fspath(folder)
    if os.path.exists(folder):
        if not os.path.isdir(folder):
            raise files.OutputExistsError(f"{folder} is a file: save_to_preset writes a folder. Pass another path.")
        foreign = sorted(set(os.listdir(folder)) - set(PRESET_FILES))
        if foreign or (os.listdir(folder) and not _written_here(folder)):
            raise files.OutputExistsError(
                f"{folder} holds files that are not a preset written by ddpm_keras ({(foreign or os.listdir(folder))[0]}, "
                "...): it is left alone. Pass a new or empty folder.")
    metadata = {
        files.JSON_MARK_KEY: files.WRITER,
        "keras_version": keras.__version__,
        "ddpm_keras_version": _version(),
        "parameter_count": int(model.network.count_params()),
        "date_saved": datetime.datetime.now().strftime("%Y-%m-%d@%H:%M:%S"),
        "img_size": list(model.image_shape[:2]),
        "num_classes": model.num_classes,
        "class_names": model.class_names,
        "prediction_type": model.prediction_type,
        "description": description or "",
        "trained_on": trained_on or "",
        "training": dict(training or {}),
        "sampling": dict(sampling or {}),
    }
    config = keras.saving.serialize_keras_object(model)
    files.atomic_write(os.path.join(folder, CONFIG_FILE), lambda f: json.dump(config, f), mode="w")
    files.atomic_write(os.path.join(folder, WEIGHTS_FILE), model.ema_network.save_weights, mode=None)
    files.atomic_write(os.path.join(folder, METADATA_FILE), lambda f: json.dump(metadata, f, indent=2), mode="w")
    return folder


def _is_shipped(name):
    """Whether `name` is a preset of the package's `pretrained/` folder (as `shipped_presets` lists them)."""
    return os.sep not in name and os.path.isfile(os.path.join(PRETRAINED_DIR, name, METADATA_FILE))


def _written_here(folder):
    path = os.path.join(folder, METADATA_FILE)
    try:
        return _read_json(path).get(files.JSON_MARK_KEY) == files.WRITER
    except ValueError:
        return False


def _read_json(path):
    try:
        with open(path) as handle:
            return json.load(handle)
    except (OSError, ValueError) as error:
        raise ValueError(f"Cannot read the preset file {path}: {type(error).__name__}: {one_line(error)}") from None


def _version():
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version

    try:
        return version("ddpm-keras")
    except PackageNotFoundError:
        return "unknown"


def _download(handle):
    """The local folder of a hub handle, through the hub's client library, cached after the first time."""
    scheme, _, name = handle.partition("://")
    library = {"hf": "huggingface_hub", "kaggle": "kagglehub"}[scheme]
    where = os.path.join(cache_dir(), scheme)
    try:
        client = __import__(library)
    except ImportError:
        raise PresetUnavailableError(
            f"Loading {handle} needs the {library} package: pip install \"ddpm-keras[hub]\" (or pip install {library})."
        ) from None
    try:
        if scheme == "hf":
            return client.snapshot_download(repo_id=name, cache_dir=where)
        return client.model_download(name)
    except Exception as error:  # noqa: BLE001 - offline, unknown or private: one line naming the handle and cache
        cache = where if scheme == "hf" else os.environ.get("KAGGLEHUB_CACHE", "~/.cache/kagglehub")
        raise PresetUnavailableError(
            f"Cannot download the preset {handle} ({type(error).__name__}: {one_line(error)[:160]}), and it is not "
            f"in the cache {cache}. Connect once to download it, or pass the path of a preset folder."
        ) from None
