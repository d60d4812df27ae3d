"""A `DiffusionModel` of a named configuration: what `DiffusionModel.from_preset` builds.

A preset (`ddpm_keras.presets`) has three parts: the arguments of
`build_unet`, of `GaussianDiffusion`, and the training options, some of
which are `DiffusionModel` arguments (`presets.MODEL_OPTIONS`). An
override names any argument of the three constructors, or
`learning_rate`, and goes to the part that takes it.
"""

import inspect

import keras

from ddpm_keras.diffusion import GaussianDiffusion
from ddpm_keras.nn.inpainting import inpainting_network
from ddpm_keras.nn.unet import build_unet
from ddpm_keras.presets import MODEL_OPTIONS
from ddpm_keras.presets import get_preset
from ddpm_keras.utils.checks import check_number

# DiffusionModel's own arguments beside the preset's MODEL_OPTIONS (its networks and diffusion are built here).
MODEL_ARGUMENTS = MODEL_OPTIONS + ("seed", "class_names", "name")


def _parameters(function):
    return tuple(name for name in inspect.signature(function).parameters if name not in ("self", "kwargs"))


def route_overrides(config, overrides):
    """Writes each override into the part of the preset dict `config` that takes it (in place)."""
    parts = {"unet": _parameters(build_unet), "diffusion": _parameters(GaussianDiffusion.__init__)}
    model = {}
    for key, value in overrides.items():
        if key in parts["unet"]:
            config["unet"][key] = value
        elif key in parts["diffusion"]:
            config["diffusion"][key] = value
        elif key in MODEL_ARGUMENTS or key == "learning_rate":
            model[key] = value
        else:
            known = sorted(parts["unet"] + parts["diffusion"] + MODEL_ARGUMENTS + ("learning_rate",))
            raise ValueError(f"Unknown option {key!r} for a preset's model. Expected one of {known}. "
                             f"Received: {key}={value!r}")
    if "learning_rate" in model:
        check_number("learning_rate", model["learning_rate"], low=0.0, low_open=True)
    config["training"].update({k: v for k, v in model.items() if k in MODEL_OPTIONS or k == "learning_rate"})
    return {k: v for k, v in model.items() if k not in MODEL_OPTIONS and k != "learning_rate"}


def build_model(model_class, preset, compile=True, **overrides):
    """`model_class(build_unet(...), GaussianDiffusion(...), ...)` of the preset named `preset`.

    Args:
        model_class: `DiffusionModel` or a subclass.
        preset: String, a name of `ddpm_keras.presets.PRESETS`.
        compile: Boolean, compile with Adam at the preset's learning rate.
            Defaults to `True`.
        **overrides: Arguments of `build_unet` (`img_size`, `widths`,
            `num_classes`, ...), of `GaussianDiffusion` (`timesteps`,
            `beta_schedule`, ...), of `DiffusionModel` (`ema`,
            `prediction_type`, `seed`, `class_names`, ...) or
            `learning_rate`, replacing the preset's.

    Returns:
        A new `model_class` instance.
    """
    config = get_preset(preset)
    return model_from_config(model_class, config, compile=compile, **route_overrides(config, overrides))


def model_from_config(model_class, config, compile=True, **model_arguments):
    """`model_class` built from a preset dict `config` (as `get_preset` returns it, possibly modified).

    `model_arguments` are the `DiffusionModel` arguments a preset does not
    hold (`seed`, `class_names`, `name`).
    """
    model = model_class(
        build_unet(**config["unet"]), GaussianDiffusion(**config["diffusion"]),
        **{name: config["training"][name] for name in MODEL_OPTIONS}, **model_arguments,
    )
    if compile:
        model.compile(optimizer=keras.optimizers.Adam(config["training"]["learning_rate"]))
    return model


def inpainting_model(model, mask_rates=None, **options):
    """A new inpainting model started from `model`: the same outputs until it trains on masks.

    `DiffusionModel.to_inpainting`. Its network and EMA network are
    `nn.inpainting.inpainting_network` of `model`'s: the same configuration
    and weights, with the masked image and the mask as more input channels
    of the first conv, whose kernel is zero on them, so that its first
    training step computes exactly `model`'s prediction (as the Stable
    Diffusion inpainting models were started). The diffusion, seed, class
    names and options are `model`'s unless given; not compiled. What
    `ddpm-keras train --inpainting --init-from RUN` starts from.

    Args:
        model: A `DiffusionModel` whose network is not an inpainting one.
        mask_rates: `None` (`model`'s) or a dict, as `DiffusionModel`
            takes it. Defaults to `None`.
        **options: Other options of `MODEL_OPTIONS` to change for the
            fine-tuning (`loss_weighting=None`, `ema=0.999`, ...).

    Returns:
        A new `DiffusionModel` (of `model`'s class) with `inpainting` true.

    Example:

    >>> inpainter = model.to_inpainting()
    >>> inpainter.compile(optimizer=keras.optimizers.Adam(1e-4))
    >>> inpainter.fit(images, epochs=10)
    >>> filled = inpainter.inpaint(images, mask, sampler="dpmpp_2m", num_steps=20)
    """
    config = model.get_config()
    for name in ("name", "network", "ema_network"):
        config.pop(name)
    diffusion = GaussianDiffusion.from_config(config.pop("diffusion"))
    if mask_rates is not None:
        config["mask_rates"] = mask_rates
    unknown = sorted(set(options) - set(MODEL_OPTIONS))
    if unknown:
        raise ValueError(f"Unknown option {unknown[0]!r}: expected one of {sorted(MODEL_OPTIONS)}. Received: {options}")
    config.update(options)
    return type(model)(
        inpainting_network(model.network), diffusion, ema_network=inpainting_network(model.ema_network), **config
    )
