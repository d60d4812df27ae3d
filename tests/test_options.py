"""The tables of options: `SamplerOptions` (checked once, a compile key) and the model options of `options.OPTIONS`."""

import argparse
import dataclasses
import inspect

import numpy as np
import pytest
from conftest import tiny_model
from keras import ops

from ddpm_keras import DiffusionModel
from ddpm_keras import GaussianDiffusion
from ddpm_keras import samplers
from ddpm_keras.cli import build_parser
from ddpm_keras.cli.common import sampling_options
from ddpm_keras.cli.train import apply_model_flags
from ddpm_keras.options import OPTIONS
from ddpm_keras.presets import PRESETS
from ddpm_keras.presets import get_preset
from ddpm_keras.samplers import SamplerOptions


@pytest.mark.parametrize(
    "options, match",
    [
        ({"eta": 1.5}, r"eta must be a number in \[0, 1\]\. Received: eta=1\.5"),
        ({"eta": True}, r"eta must be a number in \[0, 1\]"),
        ({"corrector_steps": -1}, r"corrector_steps must be an integer >= 0\. Received: corrector_steps=-1"),
        ({"snr": 0.0}, r"snr must be a finite number > 0\. Received: snr=0\.0"),
        ({"timestep_spacing": "leading"}, r"Unknown timestep_spacing: 'leading'"),
        ({"sampler": "euler"}, r"Unknown sampler\. Received: sampler='euler'\. Expected one of \('ddpm'"),
        ({"thresholding": 1.0}, r"thresholding must be None or a quantile in \(0, 1\)"),
    ],
)
def test_sampler_options_are_checked_when_made(options, match):
    with pytest.raises(ValueError, match=match):
        SamplerOptions(**options)


def test_resolved_options_take_each_samplers_default_steps_within_t():
    assert SamplerOptions("ddpm").resolved(1000).num_steps == 1000
    assert SamplerOptions("ddim").resolved(1000).num_steps == samplers.DEFAULT_DDIM_STEPS == 50
    assert SamplerOptions("ddim").resolved(30).num_steps == 30
    assert SamplerOptions("dpmpp_2m_sde").resolved(1000).num_steps == samplers.DEFAULT_SOLVER_STEPS == 20
    assert SamplerOptions("unipc", num_steps=7).resolved(1000).num_steps == 7
    with pytest.raises(ValueError, match=r"num_steps must be an integer in \[1, 10\]"):
        SamplerOptions("ddim", num_steps=11).resolved(10)
    with pytest.raises(ValueError, match=r"order 3: it needs num_steps >= 3"):
        SamplerOptions("dpmpp_3m", num_steps=2).resolved(1000)
    with pytest.raises(ValueError, match=r"Unknown sampler\. Received: sampler='pc'"):
        SamplerOptions("pc").resolved(1000, samplers.INPAINT_SAMPLERS)


def test_the_default_sampling_takes_every_step_of_a_shorter_diffusion():
    assert samplers.default_sampling_for(1000) == samplers.DEFAULT_SAMPLING == {"sampler": "ddpm", "num_steps": 50}
    assert samplers.default_sampling_for(20) == {"sampler": "ddpm", "num_steps": 20}
    assert SamplerOptions(**samplers.default_sampling_for(20)).resolved(20).num_steps == 20
    # What the grids of a short diffusion draw with it: the ancestral chain over all its steps.
    model = tiny_model(timesteps=20)
    np.testing.assert_array_equal(
        model.generate_images(2, seed=3, verbose=0, **samplers.default_sampling_for(20)),
        model.generate_images(2, seed=3, verbose=0, sampler="ddpm"),
    )


def test_sampler_options_are_a_value_hashable_as_a_compile_key():
    options = SamplerOptions("ddim", eta=1, num_steps=4)
    assert options.eta == 1.0 and isinstance(options.eta, float)
    assert options == SamplerOptions(**options.as_dict()) and hash(options) == hash(SamplerOptions(**options.as_dict()))
    assert options != dataclasses.replace(options, eta=0.5)
    with pytest.raises(dataclasses.FrozenInstanceError):
        options.eta = 0.5
    with pytest.raises(ValueError, match=r"Unknown sampler option 'etaa'\. Expected one of \["):
        samplers.sampler_options("ddim", etaa=0.5)
    with pytest.raises(ValueError, match=r"Pass the sampler's options in its SamplerOptions, not beside it"):
        samplers.sampler_options(options, num_steps=4)
    # Another sampler's option is not silently ignored.
    with pytest.raises(ValueError, match=r"^corrector_steps is an option of 'pc', not of sampler='ddim': drop it, "
                       r"or pick that sampler\. Received: corrector_steps=2$"):
        SamplerOptions("ddim", corrector_steps=2)
    with pytest.raises(ValueError, match=r"^eta is an option of 'ddim', not of sampler='ddpm'"):
        samplers.sampler_options("ddpm", eta=0.5)
    assert SamplerOptions("ddpm", eta=0.0).eta == 0.0  # its default: nothing asked of the sampler


def test_generate_images_takes_sampler_options_as_its_keywords_and_compiles_them_once():
    model = tiny_model(timesteps=20)
    by_name = model.generate_images(2, seed=3, sampler="ddim", num_steps=4, eta=0.5, verbose=0)
    compiled = len(model.runner._compiled)
    by_options = model.generate_images(2, seed=3, sampler=SamplerOptions("ddim", num_steps=4, eta=0.5), verbose=0)
    np.testing.assert_array_equal(by_options, by_name)
    assert len(model.runner._compiled) == compiled  # the same key: no new compilation
    other = model.generate_images(2, seed=3, sampler="ddim", num_steps=4, eta=1.0, verbose=0)
    assert len(model.runner._compiled) > compiled and not np.array_equal(other, by_name)


def test_sampler_flags_come_from_the_table():
    flags = {field.metadata["flag"] for field in samplers.option_fields()}
    assert flags == {"--eta", "--thresholding", "--corrector-steps", "--snr", "--s-churn", "--s-tmin", "--s-tmax",
                     "--s-noise"}
    sample = _subparser(build_parser(), "sample")
    inpaint = _subparser(build_parser(), "inpaint")
    assert flags <= set(sample._option_string_actions)
    assert "--eta" in inpaint._option_string_actions and "--thresholding" not in inpaint._option_string_actions
    args = sample.parse_args(["--checkpoint", "run", "--out", "x.png", "--sampler", "pc", "--corrector-steps", "2",
                              "--snr", "0.1"])
    assert sampling_options(args, 1000) == {"sampler": "pc", "num_steps": None, "timestep_spacing": "trailing",
                                            "eta": 0.0, "corrector_steps": 2, "snr": 0.1, "s_churn": 0.0,
                                            "s_tmin": 0.0, "s_noise": 1.0}
    with pytest.raises(SystemExit):
        sample.parse_args(["--checkpoint", "run", "--out", "x.png", "--corrector-steps", "1.5"])


def test_each_model_option_is_a_constructor_argument_a_preset_key_and_a_config_entry():
    model_arguments = inspect.signature(DiffusionModel.__init__).parameters
    diffusion_arguments = inspect.signature(GaussianDiffusion.__init__).parameters
    config = tiny_model().get_config()
    for option in OPTIONS:
        assert option.argument in (model_arguments if option.part == "training" else diffusion_arguments), option
        assert option.saved(config) is not None or option.none_word, option
        for name, preset in PRESETS.items():
            assert option.argument in preset[option.part], (name, option)


def test_train_flags_override_the_preset_part_the_table_names():
    train = _subparser(build_parser(), "train")
    flagged = [option for option in OPTIONS if option.flag]
    assert {option.flag for option in flagged} <= set(train._option_string_actions)
    args = train.parse_args(["--prediction-type", "v", "--loss-weighting", "none", "--snr-gamma", "2", "--ema", "0.99",
                             "--beta-schedule", "cosine", "--zero-terminal-snr", "--no-ema-warmup",
                             "--cond-drop-prob", "0.2"])
    config = apply_model_flags(get_preset("quick"), args)
    assert config["training"]["prediction_type"] == "v" and config["training"]["loss_weighting"] is None
    assert config["training"]["snr_gamma"] == 2.0 and config["training"]["ema_warmup"] is False
    assert config["diffusion"]["beta_schedule"] == "cosine" and config["diffusion"]["rescale_zero_terminal_snr"]
    assert config["training"]["cond_drop_prob"] == 0.2 and config["training"]["ema"] == 0.99
    with pytest.raises(SystemExit):
        train.parse_args(["--cond-drop-prob", "1"])


def test_p_sample_reads_a_v_or_x0_output_as_the_posterior_of_its_x0():
    diffusion = GaussianDiffusion(timesteps=50)
    rng = np.random.default_rng(0)
    x_0 = rng.uniform(-0.9, 0.9, (3, 4, 4, 1)).astype(np.float32)
    eps = rng.standard_normal((3, 4, 4, 1)).astype(np.float32)
    t = ops.convert_to_tensor([0, 7, 49], "int32")
    x_t = diffusion.q_sample(x_0, t, eps)
    noise = rng.standard_normal((3, 4, 4, 1)).astype(np.float32)
    mean, _, log_variance = (np.asarray(ops.convert_to_numpy(v), np.float64) for v in diffusion.q_posterior(x_0, x_t, t))
    expected = mean + np.array([0.0, 1.0, 1.0]).reshape(-1, 1, 1, 1) * np.exp(0.5 * log_variance) * noise
    for prediction_type in ("epsilon", "v", "x0"):
        output = diffusion.prediction_target(x_0, eps, t, prediction_type)
        x_prev = diffusion.p_sample(output, x_t, t, clip_denoised=False, noise=noise, prediction_type=prediction_type)
        np.testing.assert_allclose(ops.convert_to_numpy(x_prev), expected, atol=2e-4, err_msg=prediction_type)


def _subparser(parser, name):
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return action.choices[name]


def test_a_resumed_run_refuses_a_model_option_that_differs_from_the_saved_config():
    from ddpm_keras.cli.common import CLIError
    from ddpm_keras.cli.runs import _check_model_options
    from ddpm_keras.cli.runs import model_record

    model = tiny_model(ema=0.9)
    args = argparse.Namespace(class_conditional=False, **{option.name: None for option in OPTIONS})
    _check_model_options(args, model, "run/model.keras")  # nothing given: nothing to refuse
    args.ema, args.loss_weighting = 0.9, "none"  # as saved
    _check_model_options(args, model, "run/model.keras")
    args.ema = 0.99
    with pytest.raises(CLIError, match=r"--ema 0\.99 differs from the resumed model's 0\.9 \(run/model\.keras\)"):
        _check_model_options(args, model, "run/model.keras")
    args.ema, args.zero_terminal_snr = None, True
    with pytest.raises(CLIError, match=r"--zero-terminal-snr differs from the resumed model's False"):
        _check_model_options(args, model, "run/model.keras")
    record = model_record(model)
    assert record["ema"] == 0.9 and record["cond_drop_prob"] is None and record["num_classes"] is None
    assert record["diffusion"] == model.diffusion.get_config()
