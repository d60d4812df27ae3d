"""`SamplerOptions`: the options of a sampling chain, one table, checked once.

Each option is one field of `SamplerOptions` with its default, the values
it takes and, where the command line has it, its flag. The checks, the
command line's flags (`ddpm_keras.cli.common.add_sampler_arguments`), the
compile cache's key and an export's metadata all read the fields, so a new
option is one field here plus its use in the sampler that takes it (named
in that sampler's `REGISTRY` entry).

Example:

>>> options = SamplerOptions("ddim", num_steps=50, eta=0.5)
>>> model.generate_images(16, seed=0, sampler=options)
"""

import dataclasses
from typing import Optional

from ddpm_keras.samplers.common import check_thresholding
from ddpm_keras.samplers.registry import REGISTRY
from ddpm_keras.samplers.registry import SAMPLERS
from ddpm_keras.samplers.registry import default_num_steps
from ddpm_keras.samplers.registry import timestep_spacing_of
from ddpm_keras.samplers.timesteps import TIMESTEP_SPACINGS
from ddpm_keras.samplers.timesteps import check_num_steps
from ddpm_keras.utils.checks import check_number
from ddpm_keras.utils.checks import is_int

# The sampler of the pictures users see (SamplePlotter, QualityMonitor, `ddpm-keras sample` and
# `evaluate`, `export_generator`, the notebook; also `presets.DEFAULT_SAMPLING`): the ancestral chain
# respaced to 50 steps. In the shipped flower features it matches or beats the 1,000-step chain and
# every 20- and 50-call solver on both shipped presets, as it does on held-out real images
# (README, "Which sampler is the default").
DEFAULT_SAMPLING = {"sampler": "ddpm", "num_steps": 50}


def default_sampling_for(num_timesteps):
    """`DEFAULT_SAMPLING` for a diffusion of `num_timesteps` steps, its step count capped at them."""
    return {**DEFAULT_SAMPLING, "num_steps": min(DEFAULT_SAMPLING["num_steps"], num_timesteps)}


def _option(default, flag=None, help=None, **values):
    """A field of `SamplerOptions`: its default, its command-line `flag` and `help`, and the values it takes.

    `values`: `choices`, or a numeric range (`low`, `high`, `low_open`,
    `high_open`, `integer`), or `boolean=True`; `optional=True` also takes
    `None`; `resolved=True`: checked by `SamplerOptions.resolved`, against
    the diffusion; `inpainting=False` leaves the option out of inpainting's
    flags; `metavar` names the flag's value in the help.
    """
    return dataclasses.field(default=default, metadata={"flag": flag, "help": help, **values})


@dataclasses.dataclass(frozen=True)
class SamplerOptions:
    """The options of a sampling chain, checked when made; frozen and hashable.

    Args:
        sampler: One of `SAMPLERS`. Defaults to `"ddpm"`.
        num_steps: Integer >= 1, or `None`: the sampler's default (`T` for
            `"ddpm"` and `"pc"`, `50` for `"ddim"`, `20` for the solvers,
            `1` for `"consistency"`).
            `resolved(T)` checks it against the diffusion's `T`. Defaults
            to `None`.
        timestep_spacing: One of `TIMESTEP_SPACINGS`, or `None`: the
            sampler's own (`"karras"` for `"heun"`, `"trailing"` for the
            others), set when made. Defaults to `None`.
        clip_denoised: Boolean, clip the predicted `x_0` to the data range.
            Defaults to `True`.
        thresholding: `None` or a quantile in `(0, 1)`: dynamic
            thresholding of the predicted `x_0` (Saharia et al. 2022)
            instead of clipping. Defaults to `None`.
        eta: Float in `[0, 1]`, DDIM's noise scale. Defaults to `0.0`.
        corrector_steps: Integer >= 0, Langevin steps after each `"pc"`
            predictor step. Defaults to `1`.
        snr: Float > 0, the `"pc"` corrector's signal-to-noise ratio.
            Defaults to `0.16`.
        s_churn: Float >= 0, `"heun"`'s total churn (Karras et al. 2022,
            Algorithm 2): each step in `[s_tmin, s_tmax]` raises the noise
            level by `gamma = min(s_churn / num_steps, sqrt(2) - 1)` before
            it. `0` is deterministic. Defaults to `0.0`.
        s_tmin: Float >= 0, the smallest `sigma = sqrt((1 - ab) / ab)` that
            `"heun"` churns at. Defaults to `0.0`.
        s_tmax: Float >= `s_tmin`, the largest, or `None`: no upper
            bound. Defaults to `None`.
        s_noise: Float > 0, the scale of `"heun"`'s churn noise. Defaults
            to `1.0`.
    """

    sampler: str = _option("ddpm", choices=SAMPLERS)
    num_steps: Optional[int] = _option(None, resolved=True)  # checked against T by `resolved`
    timestep_spacing: Optional[str] = _option(None, choices=TIMESTEP_SPACINGS, optional=True)  # None: the sampler's own
    clip_denoised: bool = _option(True, boolean=True)
    thresholding: Optional[float] = _option(
        None, "--thresholding", "dynamic thresholding of the predicted x_0 at quantile Q, e.g. 0.995 (Imagen), "
        "instead of clipping", low=0.0, high=1.0, low_open=True, high_open=True, optional=True, inpainting=False,
        metavar="Q",
    )
    eta: float = _option(0.0, "--eta", "DDIM noise in [0, 1]: 0 deterministic, 1 DDPM-like", low=0.0, high=1.0)
    corrector_steps: int = _option(1, "--corrector-steps", "pc: Langevin steps after each predictor step", low=0,
                                   integer=True, inpainting=False)
    snr: float = _option(0.16, "--snr", "pc: the corrector's signal-to-noise ratio (its step size)", low=0.0,
                         low_open=True, inpainting=False)
    s_churn: float = _option(0.0, "--s-churn", "heun: the total churn, noise re-added at each step in "
                             "[s_tmin, s_tmax] (0: deterministic)", low=0.0, inpainting=False)
    s_tmin: float = _option(0.0, "--s-tmin", "heun: churn only where sigma = sqrt((1 - ab) / ab) >= this", low=0.0,
                            inpainting=False)
    s_tmax: Optional[float] = _option(None, "--s-tmax", "heun: churn only where sigma <= this (default: no bound)",
                                      low=0.0, optional=True, inpainting=False)
    s_noise: float = _option(1.0, "--s-noise", "heun: the scale of the churn's noise", low=0.0, low_open=True,
                             inpainting=False)

    def __post_init__(self):
        for field in dataclasses.fields(self):
            object.__setattr__(self, field.name, _checked(field, getattr(self, field.name)))
        object.__setattr__(self, "timestep_spacing", timestep_spacing_of(self.sampler, self.timestep_spacing))
        for field in dataclasses.fields(self):
            owners = [name for name, spec in REGISTRY.items() if field.name in spec.options]
            value = getattr(self, field.name)
            if owners and self.sampler not in owners and value != field.default:
                raise ValueError(
                    f"{field.name} is an option of {' and '.join(map(repr, owners))}, not of sampler="
                    f"{self.sampler!r}: drop it, or pick that sampler. Received: {field.name}={value!r}"
                )
        if self.s_tmax is not None and self.s_tmin > self.s_tmax:
            raise ValueError(
                f"s_tmin must be <= s_tmax (churn applies where s_tmin <= sigma <= s_tmax). Received: "
                f"s_tmin={self.s_tmin!r}, s_tmax={self.s_tmax!r}; swap them, or raise s_tmax"
            )

    def resolved(self, num_timesteps, samplers=None):
        """These options with `num_steps` set for a diffusion of `num_timesteps` steps, or a `ValueError`.

        Args:
            num_timesteps: Integer, the diffusion's `T`.
            samplers: `None` (every sampler) or the names allowed here
                (inpainting's `INPAINT_SAMPLERS`). Defaults to `None`.
        """
        if samplers is not None and self.sampler not in samplers:
            raise _unknown_sampler(self.sampler, samplers)
        if self.num_steps is not None:
            check_num_steps(self.num_steps, num_timesteps)
        num_steps = default_num_steps(self.sampler, self.num_steps, num_timesteps)
        min_steps = min(REGISTRY[self.sampler].min_steps, num_timesteps)
        if num_steps < min_steps:
            raise ValueError(
                f"sampler={self.sampler!r} is a multistep solver of order {min_steps}: it needs num_steps >= "
                f"{min_steps}. Received: num_steps={num_steps} (use 'ddim' for fewer steps)"
            )
        return dataclasses.replace(self, num_steps=num_steps)

    def as_dict(self):
        """The options as a plain dict (what an export's metadata records)."""
        return dataclasses.asdict(self)


def option_names():
    """The names of every field of `SamplerOptions`: what a sampling dict may hold."""
    return tuple(field.name for field in dataclasses.fields(SamplerOptions))


def sampler_options(sampler="ddpm", **options):
    """`sampler` as `SamplerOptions`: a name with `options`, or `SamplerOptions` itself (then no `options`)."""
    if isinstance(sampler, SamplerOptions):
        if options:
            raise ValueError(
                "Pass the sampler's options in its SamplerOptions, not beside it. "
                f"Received: {', '.join(sorted(options))} beside sampler={sampler!r}"
            )
        return sampler
    known = set(option_names())
    unknown = sorted(set(options) - known)
    if unknown:
        raise ValueError(f"Unknown sampler option {unknown[0]!r}. Expected one of {sorted(known)}.")
    return SamplerOptions(sampler, **options)


def check_default_sampling(sampling):
    """`sampling` (a model's `default_sampling`) checked: `None`, or a dict naming a sampler and its options.

    Returns a new dict, or `None`; raises a one-line `ValueError` for an
    unknown sampler or option, or a value out of its range.

    Example:

    >>> check_default_sampling({"sampler": "ddim", "num_steps": 4})
    {'sampler': 'ddim', 'num_steps': 4}
    """
    if sampling is None:
        return None
    if not isinstance(sampling, dict) or "sampler" not in sampling:
        raise ValueError(
            "default_sampling must be None or a dict naming a sampler and its options, e.g. "
            f'{{"sampler": "ddim", "num_steps": 4}}. Received: default_sampling={sampling!r}'
        )
    sampling = dict(sampling)
    sampler_options(**sampling)
    return sampling


def option_fields(inpainting=False):
    """The fields of `SamplerOptions` that have a command-line flag (inpainting's only, with `inpainting`)."""
    return tuple(
        field for field in dataclasses.fields(SamplerOptions)
        if field.metadata["flag"] and not (inpainting and field.metadata.get("inpainting") is False)
    )


def _checked(field, value):
    """`value` of `field`, checked against the field's values and converted to its type."""
    spec, name = field.metadata, field.name
    if (value is None and spec.get("optional")) or spec.get("resolved"):
        return value
    if "choices" in spec:
        if value not in spec["choices"]:
            if name == "sampler":
                raise _unknown_sampler(value, spec["choices"])
            raise ValueError(f"Unknown {name}: {value!r}. Expected one of {spec['choices']}.")
        return value
    if spec.get("boolean"):
        return bool(value)
    if name == "thresholding":
        check_thresholding(value)
    if spec.get("integer"):
        low = spec.get("low")
        if not is_int(value) or (low is not None and value < low):
            raise ValueError(f"{name} must be an integer >= {low}. Received: {name}={value!r}")
        return int(value)
    return check_number(name, value, spec.get("low"), spec.get("high"), spec.get("low_open", False),
                        spec.get("high_open", False))


def _unknown_sampler(sampler, expected):
    return ValueError(f"Unknown sampler. Received: sampler={sampler!r}. Expected one of {expected}.")
