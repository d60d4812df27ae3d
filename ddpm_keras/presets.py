"""Named configurations: the one source of defaults for the CLI, examples and notebook; data only.

Each preset is a plain dict with three parts: `unet` (the arguments of
`build_unet`), `diffusion` (of `GaussianDiffusion`) and `training` (batch
size, Adam learning rate, epochs, the dataset it was tuned for, the epochs
between sample grids, and the options of `DiffusionModel` named in
`MODEL_OPTIONS`: the EMA decay and its warm-up, the prediction type, the
loss weighting and min-SNR's gamma).

Example:

>>> config = get_preset("tiny")
>>> model = DiffusionModel(
...     build_unet(**config["unet"]), GaussianDiffusion(**config["diffusion"]), **model_options(config)
... )
>>> model = DiffusionModel.from_preset("tiny")  # the same, compiled at the preset's learning rate
"""

import copy

from ddpm_keras.options import TRAINING_OPTIONS
from ddpm_keras.samplers.options import DEFAULT_SAMPLING  # noqa: F401 - the sampler of the pictures users see
from ddpm_keras.training.masks import DEFAULT_MASK_RATES

# The keys of a preset's "training" dict that are `DiffusionModel` arguments (`options.OPTIONS`).
MODEL_OPTIONS = TRAINING_OPTIONS

PRESETS = {
    # The keras.io example's hyperparameters (Ho et al. 2020 at 64 px).
    "flowers64": {
        "unet": {
            "img_size": 64,
            "img_channels": 3,
            "widths": [64, 128, 256, 512],
            "has_attention": [False, False, True, True],
            "num_res_blocks": 2,
            "norm_groups": 8,
            "first_conv_channels": 64,
        },
        "diffusion": {
            "timesteps": 1000, "beta_schedule": "linear", "beta_start": 1e-4, "beta_end": 0.02,
            "rescale_zero_terminal_snr": False,
        },
        "training": {
            "batch_size": 32, "learning_rate": 2e-4, "ema": 0.999, "epochs": 800,
            "dataset": "oxford_flowers102", "plot_every": 10,
            # A class-conditional model's grids: one row per class, under this classifier-free guidance.
            "plot_guidance": 1.0,
            # Ho et al. 2020: the noise, every timestep alike, a constant EMA decay.
            "prediction_type": "epsilon", "loss_weighting": None, "snr_gamma": 5.0, "ema_warmup": False,
            # Class-conditional models (unet num_classes): the labels replaced by the null label (Ho & Salimans).
            "cond_drop_prob": 0.1,
            # Inpainting models (unet inpainting): the kinds of training masks and where the loss counts
            # (training.masks).
            "mask_rates": dict(DEFAULT_MASK_RATES), "inpainting_loss": "all",
        },
    },
    # Three minutes on a 2-core CPU (coloured blobs after its 640 steps); what the tests train.
    "tiny": {
        "unet": {
            "img_size": 32,
            "img_channels": 3,
            "widths": [16, 32, 64],
            "has_attention": [False, False, True],
            "num_res_blocks": 1,
            "norm_groups": 8,
            "first_conv_channels": 16,
        },
        "diffusion": {
            "timesteps": 1000, "beta_schedule": "linear", "beta_start": 1e-4, "beta_end": 0.02,
            "rescale_zero_terminal_snr": False,
        },
        "training": {
            "batch_size": 32, "learning_rate": 1e-3, "ema": 0.995, "epochs": 20,
            "dataset": "synthetic", "plot_every": 5, "plot_guidance": 1.0,
            "prediction_type": "epsilon", "loss_weighting": None, "snr_gamma": 5.0, "ema_warmup": False,
            "cond_drop_prob": 0.1, "mask_rates": dict(DEFAULT_MASK_RATES), "inpainting_loss": "all",
        },
    },
}

# Flower shapes of one colour on a 2-core CPU in about 7.5 minutes: the tiny UNet at 16 px,
# 2,560 steps, and the recipe whose samples looked best in bench/objectives.py at that length:
# v-prediction, min-SNR-5 weighting, EMA warm-up.
PRESETS["quick"] = copy.deepcopy(PRESETS["tiny"])
PRESETS["quick"]["unet"]["img_size"] = 16
PRESETS["quick"]["training"].update(
    epochs=80, plot_every=10, prediction_type="v", loss_weighting="min_snr", ema_warmup=True,
)


# Class-conditional presets: the network gets a class embedding (`build_unet(num_classes=...)`) and
# trains on labelled data, with classifier-free guidance at sampling. flowers64_cond is the example's
# network on the 102 species of Oxford Flowers 102; tiny_cond is quick's recipe on the labelled
# synthetic flowers (its 4 classes: ddpm_keras.data.SYNTHETIC_CLASS_NAMES), minutes on a CPU.
PRESETS["flowers64_cond"] = copy.deepcopy(PRESETS["flowers64"])
PRESETS["flowers64_cond"]["unet"]["num_classes"] = 102
PRESETS["tiny_cond"] = copy.deepcopy(PRESETS["quick"])
PRESETS["tiny_cond"]["unet"]["num_classes"] = 4
PRESETS["tiny_cond"]["training"].update(epochs=40, plot_every=5, plot_guidance=3.0)

# The main job (the README's first command): tiny_cond on 4,096 labelled flowers (one epoch = 128
# steps), 2,560 steps, its grids a row per class under guidance 3. About 4.5 minutes on a 2-core CPU
# with AVX-512, 6 to 8.5 without.
PRESETS["quickstart"] = copy.deepcopy(PRESETS["tiny_cond"])
PRESETS["quickstart"]["training"].update(epochs=20, plot_every=5, synthetic_images=4096)

# The recipes of the pretrained models shipped with the package (`ddpm_keras.pretrained`): quick's
# recipe at 32 px, an EMA of 0.999 behind its warm-up, on 16,384 synthetic flowers (one epoch = 512
# steps), unconditional and on the 4 synthetic classes. `ddpm-keras train --preset NAME` retrains
# one; examples/train_pretrained.sh holds the commands that made the shipped weights.
PRESETS["synthetic_flowers32"] = copy.deepcopy(PRESETS["quick"])
PRESETS["synthetic_flowers32"]["unet"]["img_size"] = 32
PRESETS["synthetic_flowers32"]["training"].update(epochs=24, plot_every=2, ema=0.999, synthetic_images=16384)
PRESETS["synthetic_flowers32_cond"] = copy.deepcopy(PRESETS["synthetic_flowers32"])
PRESETS["synthetic_flowers32_cond"]["unet"]["num_classes"] = 4
PRESETS["synthetic_flowers32_cond"]["training"]["plot_guidance"] = 1.5


def get_preset(name):
    """A deep copy of the preset called `name`, safe to modify."""
    if name not in PRESETS:
        raise ValueError(f"Unknown preset: {name!r}. Expected one of {sorted(PRESETS)}.")
    return copy.deepcopy(PRESETS[name])


def model_options(config):
    """The `DiffusionModel` keyword arguments of a preset (the `MODEL_OPTIONS` it names).

    Args:
        config: A preset dict, as `get_preset` returns it.

    Returns:
        A dict from each name of `MODEL_OPTIONS` the preset holds to its
        value (an option it does not hold keeps the constructor's default).

    Example:

    >>> model_options(get_preset("tiny"))["prediction_type"]
    'epsilon'
    """
    return {name: config["training"][name] for name in MODEL_OPTIONS if name in config["training"]}
