"""Named configurations: the one source of defaults for the CLI, examples and notebook.

Each preset is a plain dict with three parts: `unet` (the arguments of
`build_unet`), `diffusion` (of `GaussianDiffusion`) and `training` (batch
size, Adam learning rate, EMA decay, epochs, the dataset it was tuned for,
and the epochs between sample grids).
"""

import copy

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
        "diffusion": {"timesteps": 1000, "beta_schedule": "linear", "beta_start": 1e-4, "beta_end": 0.02},
        "training": {
            "batch_size": 32, "learning_rate": 2e-4, "ema": 0.999, "epochs": 800,
            "dataset": "oxford_flowers102", "plot_every": 10,
        },
    },
    # Learns visible flower shapes on a 2-core CPU within minutes.
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
        "diffusion": {"timesteps": 1000, "beta_schedule": "linear", "beta_start": 1e-4, "beta_end": 0.02},
        "training": {
            "batch_size": 32, "learning_rate": 1e-3, "ema": 0.995, "epochs": 20,
            "dataset": "synthetic", "plot_every": 5,
        },
    },
}


def get_preset(name):
    """A deep copy of the preset called `name`, safe to modify."""
    if name not in PRESETS:
        raise ValueError(f"Unknown preset: {name!r}. Expected one of {sorted(PRESETS)}.")
    return copy.deepcopy(PRESETS[name])
