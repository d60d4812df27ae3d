"""The options of a model, one table: where a preset holds each, the flag of `ddpm-keras train`, how it is saved.

Each row of `OPTIONS` is one option of `DiffusionModel` (part
`"training"`, the key of a preset's `"training"` dict) or of its
`GaussianDiffusion` (part `"diffusion"`). The presets
(`presets.MODEL_OPTIONS`, `presets.model_options`), the command line's
flags, `run.json`'s record of a run's model and the check that a resumed
run keeps its model's options all read this table, so a new option is one
row here plus the constructor argument that takes it.

Example:

>>> [option.flag for option in OPTIONS if option.flag]
['--prediction-type', '--loss-weighting', '--snr-gamma', ...]
"""

from typing import NamedTuple
from typing import Optional

from ddpm_keras.diffusion.gaussian import PREDICTION_TYPES
from ddpm_keras.diffusion.objectives import LOSS_WEIGHTINGS
from ddpm_keras.diffusion.schedules import BETA_SCHEDULES
from ddpm_keras.training.masks import INPAINTING_LOSSES
from ddpm_keras.training.masks import MASK_KINDS


class ModelOption(NamedTuple):
    """One option of a model.

    Attributes:
        name: The flag's name (`--name` with dashes) and the key in
            `run.json`'s record of the model.
        part: `"training"` (a `DiffusionModel` argument) or `"diffusion"`
            (a `GaussianDiffusion` argument): the part of a preset, and of
            the model's config, that holds it.
        argument: The constructor's argument, and the key in the preset
            part and in the config.
        help: The flag's help, or `None`: no flag.
        choices: The values the flag takes, or `None`.
        range: `number()` keyword arguments for a numeric flag (`low`,
            `high`, `low_open`, `high_open`), or `None`.
        boolean: Whether the flag is `--name` / `--no-name`.
        none_word: The flag's word for `None` (`--loss-weighting none`).
        metavar: The flag's value in the help, or `None` (argparse's).
        conditional: Whether the option applies to class-conditional models
            only (it is recorded as `None` for the others).
        inpainting: Whether the option applies to inpainting models only
            (recorded as `None` for the others).
        keys: `None`, or the keys of an option whose value is a dict: its
            flag takes `KEY=VALUE` pairs (`range` checks each value), the
            keys not named get 0.
    """

    name: str
    part: str
    argument: str
    help: Optional[str] = None
    choices: Optional[tuple] = None
    range: Optional[dict] = None
    boolean: bool = False
    none_word: Optional[str] = None
    metavar: Optional[str] = None
    conditional: bool = False
    inpainting: bool = False
    keys: Optional[tuple] = None

    @property
    def flag(self):
        """`--name-with-dashes`, or `None` for an option without a flag."""
        return None if self.help is None else "--" + self.name.replace("_", "-")

    def from_flag(self, value):
        """A flag's value as the option's: `none_word` is `None`; `KEY=VALUE` pairs a dict over `keys`."""
        if self.keys is not None and value is not None:
            pairs = dict(value)
            return {key: float(pairs.get(key, 0.0)) for key in self.keys}
        return None if self.none_word is not None and value == self.none_word else value

    def saved(self, config):
        """The option's value in a `DiffusionModel.get_config()` dict."""
        return config[self.argument] if self.part == "training" else config["diffusion"][self.argument]


OPTIONS = (
    ModelOption(
        "prediction_type", "training", "prediction_type", choices=PREDICTION_TYPES,
        help="what the network predicts: epsilon (the noise), v (Salimans & Ho 2022) or x0. Default: the preset's",
    ),
    ModelOption(
        "loss_weighting", "training", "loss_weighting", none_word="none",
        choices=tuple("none" if name is None else name for name in LOSS_WEIGHTINGS),
        help="per-timestep loss weights: none, or min_snr (min-SNR-gamma, Hang et al. 2023). Default: the preset's",
    ),
    ModelOption(
        "snr_gamma", "training", "snr_gamma", range={"low": 0.0, "low_open": True},
        help="min_snr's gamma, the clamp of the SNR. Default: the preset's",
    ),
    ModelOption("ema", "training", "ema", range={"low": 0.0, "high": 1.0}, help="the EMA decay. Default: the preset's"),
    ModelOption(
        "beta_schedule", "diffusion", "beta_schedule", choices=BETA_SCHEDULES,
        help="the forward process's betas: linear (Ho et al. 2020), cosine (Nichol & Dhariwal 2021) or sigmoid. "
        "Default: the preset's",
    ),
    ModelOption(
        "zero_terminal_snr", "diffusion", "rescale_zero_terminal_snr", boolean=True,
        help="rescale the betas so that the last step is pure noise (Lin et al. 2023); needs --prediction-type v "
        "or x0. Default: the preset's",
    ),
    ModelOption(
        "ema_warmup", "training", "ema_warmup", boolean=True,
        help="raise the EMA decay from 2/11 to the preset's ema as min(ema, (1 + n) / (10 + n)) after n steps. "
        "Default: the preset's",
    ),
    ModelOption(
        "cond_drop_prob", "training", "cond_drop_prob", range={"low": 0.0, "high": 1.0, "high_open": True},
        metavar="P", conditional=True,
        help="probability that a label is replaced by the null label in training (Ho & Salimans). "
        "Default: the preset's",
    ),
    ModelOption(
        "mask_rates", "training", "mask_rates", keys=MASK_KINDS, range={"low": 0.0, "high": 1.0},
        metavar="KIND=P", inpainting=True,
        help="an inpainting model's training masks: the probability of each kind, box, half, stroke (free-form) "
        "and all (the whole image: free generation), summing to 1; kinds not named get 0, "
        "e.g. --mask-rates box=0.5 stroke=0.4 all=0.1. Default: the preset's",
    ),
    ModelOption(
        "inpainting_loss", "training", "inpainting_loss", choices=INPAINTING_LOSSES, inpainting=True,
        help="where an inpainting model's loss counts: all (every pixel, as Stable Diffusion's inpainting models) "
        "or hole (the pixels to fill, as Palette). Default: the preset's",
    ),
)

# The options that are `DiffusionModel` arguments, held in a preset's "training" dict.
TRAINING_OPTIONS = tuple(option.argument for option in OPTIONS if option.part == "training")
