"""EDM's Heun sampler (Karras et al. 2022, Algorithm 2), checked against closed forms.

Gaussian data x_0 ~ N(mu, s^2) per pixel has an exact denoiser at every noise level; in the
variance-exploding variable x / sqrt(ab) = x_0 + sigma eps (sigma^2 = (1 - ab) / ab) it is
D(x, sigma) = mu + s^2 (x - mu) / (s^2 + sigma^2), and the probability-flow ODE keeps
(x - mu) / sqrt(s^2 + sigma^2): the exact end of a deterministic run from x_T is known
(`exact_flow`), and so are the moments of a stochastic one.
"""

import math

import keras
import numpy as np
import pytest
from gaussian_exact import MU
from gaussian_exact import S
from gaussian_exact import ExactPredictor
from gaussian_exact import exact_flow
from gaussian_exact import exact_x0
from gaussian_exact import make_model
from keras import ops
from subprocess_json import run_snippet
from subprocess_json import skip_unless_installed

from ddpm_keras import DiffusionModel
from ddpm_keras import GaussianDiffusion
from ddpm_keras import samplers
from ddpm_keras.cli import build_parser
from ddpm_keras.cli.common import sampling_options
from ddpm_keras.inference.runner import DETERMINISTIC_SAMPLERS
from ddpm_keras.samplers import SamplerOptions
from ddpm_keras.samplers.heun import heun_chain


def exact_model_1000():
    """The exact predictor over the default linear schedule (T = 1,000): a fine grid of training timesteps."""
    diffusion = GaussianDiffusion(timesteps=1000, clip_min=-10.0, clip_max=10.0)
    images, t = keras.Input((4, 4, 1)), keras.Input((), dtype="int32")
    output = ExactPredictor(diffusion.terms_float64["alphas_cumprod"])([images, t])
    return DiffusionModel(keras.Model([images, t], output), diffusion), diffusion


def reference_heun(alphas_cumprod, kept, x_T, noises=None, s_churn=0.0, s_tmin=0.0, s_tmax=math.inf, s_noise=1.0):
    """Algorithm 2 of Karras et al. 2022 in float64 with the exact denoiser, on the kept timesteps.

    The raised level sigma^ = sigma_i (1 + gamma) is the training timestep at or above the
    current one whose sigma is nearest in log sigma (the network only knows those).
    Returns (sample, network calls).
    """
    sigmas = np.sqrt((1.0 - alphas_cumprod) / alphas_cumprod)
    grid = np.append(sigmas[kept][::-1], 0.0)
    n = len(kept)
    calls = 0

    def denoise(x, sigma):
        nonlocal calls
        calls += 1
        return MU + S**2 * (x - MU) / (S**2 + sigma**2)

    x = x_T / np.sqrt(alphas_cumprod[kept[-1]])
    for i in range(n):
        sigma = grid[i]
        gamma = min(s_churn / n, math.sqrt(2.0) - 1.0) if s_tmin <= sigma <= s_tmax else 0.0
        above = sigmas[kept[n - 1 - i]:]
        sigma_hat = above[np.abs(np.log(above) - np.log(sigma * (1.0 + gamma))).argmin()]
        x_hat = x + math.sqrt(sigma_hat**2 - sigma**2) * s_noise * (noises[i] if sigma_hat > sigma else 0.0)
        d = (x_hat - denoise(x_hat, sigma_hat)) / sigma_hat
        x = x_hat + (grid[i + 1] - sigma_hat) * d
        if grid[i + 1] > 0:
            d_next = (x - denoise(x, grid[i + 1])) / grid[i + 1]
            x = x_hat + (grid[i + 1] - sigma_hat) * 0.5 * (d + d_next)
    return x, calls


def run_eagerly(model, diffusion, num_steps, x_T, noises, **options):
    """The heun chain of `model`'s network run eagerly with the given noise per draw; (sample, network calls)."""
    calls = []

    def model_fn(x, t):
        calls.append(1)
        return model.ema_network([x, t])

    table = ops.convert_to_tensor(noises)

    def noise_fn(shape, step):
        return ops.take(table, step, axis=0)

    chain = samplers.build_chain(
        model_fn, noise_fn, diffusion, "heun", num_steps, clip_denoised=False, **options
    )
    return ops.convert_to_numpy(samplers.run_chain(chain, ops.convert_to_tensor(x_T))).astype(np.float64), len(calls)


# ------------------------------------------------------------------ the ODE


def test_heun_converges_to_the_probability_flow_ode_at_second_order():
    # The n-step run integrates the ODE from T - 1 to the smallest kept timestep s_0 and returns
    # the predicted x_0 there. Measured on the Karras grid: max errors 0.177, 0.0357, 0.0078 at
    # 10, 20, 40 steps (ratios 4.9, 4.6: order 2.2); without the corrector (Euler, i.e. DDIM)
    # 0.174, 0.090, 0.046 (ratios 1.94, 1.97: order 1).
    model, diffusion = exact_model_1000()
    ab = diffusion.terms_float64["alphas_cumprod"]
    noise = np.random.default_rng(1).standard_normal((4, 4, 4, 1)).astype("float32")
    errors = []
    for num_steps in (10, 20, 40):
        s_0 = samplers.sampling_timesteps(diffusion, num_steps, "karras")[0]
        exact = exact_x0(exact_flow(noise.astype(np.float64), ab[-1], ab[s_0]), ab[s_0])
        images = model.generate_images(sampler="heun", num_steps=num_steps, initial_noise=noise, verbose=0)
        errors.append(np.abs(images - exact).max())
    ratios = np.array(errors[:-1]) / np.array(errors[1:])
    assert np.all(ratios > 3.0), (errors, ratios)
    assert errors[-1] < 0.012, errors


def latents_and_noises(num_steps, batch, seed):
    """`x_T` `(batch, 4, 4, 1)` and one churn noise a step `(num_steps, batch, 4, 4, 1)`, float32."""
    rng = np.random.default_rng(seed)
    x_T = rng.standard_normal((batch, 4, 4, 1)).astype("float32")
    return x_T, rng.standard_normal((num_steps, batch, 4, 4, 1)).astype("float32")


def test_heun_is_algorithm_2_with_its_churn_on_training_timesteps():
    # With churn in a window of sigma and s_noise != 1: the same noise gives the reference's
    # sample, and n steps call the network 2n - 1 times (no corrector on the step to sigma = 0).
    model, diffusion = make_model()
    ab = diffusion.terms_float64["alphas_cumprod"]
    num_steps = 8
    x_T, noises = latents_and_noises(num_steps, batch=3, seed=0)
    kept = samplers.sampling_timesteps(diffusion, num_steps, "karras")
    samples = []
    for options in ({}, {"s_churn": 2.0, "s_tmin": 0.05, "s_tmax": 20.0, "s_noise": 1.5}):
        sample, calls = run_eagerly(model, diffusion, num_steps, x_T, noises, **options)
        expected, expected_calls = reference_heun(
            ab, kept, x_T.astype(np.float64), noises.astype(np.float64), **options
        )
        assert calls == expected_calls == 2 * num_steps - 1
        np.testing.assert_allclose(sample, expected, atol=2e-5, err_msg=str(options))
        samples.append(sample)
    assert np.abs(samples[1] - samples[0]).max() > 0.05  # the churn moved it


def test_a_context_without_its_training_diffusion_rounds_the_churn_to_the_kept_timesteps():
    model, diffusion = make_model()
    ab = diffusion.terms_float64["alphas_cumprod"]
    num_steps = 8
    x_T, noises = latents_and_noises(num_steps, batch=2, seed=4)
    table = ops.convert_to_tensor(noises)
    context = samplers.make_context(
        lambda x, t: model.ema_network([x, t]), lambda shape, step: ops.take(table, step, axis=0), diffusion,
        num_steps, clip_denoised=False, timestep_spacing="karras",
    )._replace(training_diffusion=None)
    sample = ops.convert_to_numpy(samplers.run_chain(heun_chain(context, s_churn=4.0), ops.convert_to_tensor(x_T)))
    kept = samplers.sampling_timesteps(diffusion, num_steps, "karras")
    expected, _ = reference_heun(ab[kept], np.arange(num_steps), x_T.astype(np.float64), noises.astype(np.float64),
                                 s_churn=4.0)
    np.testing.assert_allclose(sample, expected, atol=2e-5)
    on_training_timesteps, _ = run_eagerly(model, diffusion, num_steps, x_T, noises, s_churn=4.0)
    assert np.abs(sample - on_training_timesteps).max() > 0.01


def test_zero_terminal_snr_heun_starts_from_pure_noise():
    # From sigma = inf the first step is Euler's (DDIM's), with no corrector: 2n - 2 calls. The
    # Karras grid then starts at sigma = 1,823 (T - 2): measured max errors 0.10, 0.015, 0.003
    # at 20, 40, 80 steps (DDIM's 0.13, 0.057, 0.034).
    model, diffusion = make_model("v", zero_terminal_snr=True)
    ab = diffusion.terms_float64["alphas_cumprod"]
    assert ab[-1] == 0.0
    noise = np.random.default_rng(2).standard_normal((4, 4, 4, 1))
    num_steps = 40
    s_0 = samplers.sampling_timesteps(diffusion, num_steps, "karras")[0]
    v_0 = ab[s_0] * S**2 + 1 - ab[s_0]
    exact = exact_x0(math.sqrt(ab[s_0]) * MU + math.sqrt(v_0) * noise, ab[s_0])
    images = model.generate_images(sampler="heun", num_steps=num_steps, initial_noise=noise.astype("float32"))
    assert np.all(np.isfinite(images))
    np.testing.assert_allclose(images, exact, atol=0.03)
    _, calls = run_eagerly(model, diffusion, 4, noise[:1].astype("float32"), np.zeros((4, 1, 4, 4, 1), "float32"))
    assert calls == 2 * 4 - 2


@pytest.mark.parametrize("prediction_type", ["v", "x0"])
def test_heun_reads_every_prediction_type_with_churn(prediction_type):
    reference, _ = make_model("epsilon")
    model, _ = make_model(prediction_type)
    options = {"seed": 3, "sampler": "heun", "num_steps": 10, "s_churn": 5.0, "verbose": 0}
    np.testing.assert_allclose(
        model.generate_images(64, **options), reference.generate_images(64, **options), atol=2e-4
    )


# ------------------------------------------------------------------ churn


def test_churned_samples_have_the_moments_of_the_data():
    # The output is D at s_0 (t = 0: no churn below s_tmin = 0.05), whose exact law is
    # N(mu, s^4 / (s^2 + sigma_0^2)). Measured with 160 steps: mean +0.13, variance +0.76
    # standard errors (40 steps: variance +9% from the discretisation, hence 160). With the
    # churn's noise added in x instead of x / sqrt(ab), +7.3; with the network called at the
    # unraised level, the mean is off by 11. (Churn at small sigma, where the two variables
    # nearly agree, pulls a chain back towards the right marginals: EDM's reason for it.)
    model, diffusion = exact_model_1000()
    ab = diffusion.terms_float64["alphas_cumprod"]
    options = {"sampler": "heun", "num_steps": 160, "seed": 0, "verbose": 0}
    churned = model.generate_images(4096, s_churn=40.0, s_tmin=0.05, s_tmax=50.0, **options).astype(np.float64)
    sigma_0 = math.sqrt((1 - ab[0]) / ab[0])
    variance = S**4 / (S**2 + sigma_0**2)
    size = churned.size
    assert abs(churned.mean() - MU) < 4.0 * S / math.sqrt(size)
    assert abs(churned.var() - variance) < 4.0 * variance * math.sqrt(2.0 / size)
    # From the same x_T (the same seed) the deterministic run ends elsewhere: the churn is noise.
    deterministic = model.generate_images(4096, **options).astype(np.float64)
    assert np.std(churned - deterministic) > 0.3 * S


# ------------------------------------------------------------------ options


@pytest.mark.parametrize(
    "options, match",
    [
        ({"s_churn": -1.0}, r"^s_churn must be a finite number >= 0\. Received: s_churn=-1\.0$"),
        ({"s_churn": math.inf}, r"^s_churn must be a finite number >= 0\. Received: s_churn=inf$"),
        ({"s_tmin": -0.5}, r"^s_tmin must be a finite number >= 0\. Received: s_tmin=-0\.5$"),
        ({"s_tmax": -1}, r"^s_tmax must be a finite number >= 0\. Received: s_tmax=-1$"),
        ({"s_tmax": "many"}, r"^s_tmax must be a finite number >= 0\. Received: s_tmax='many'$"),
        ({"s_noise": 0.0}, r"^s_noise must be a finite number > 0\. Received: s_noise=0\.0$"),
        ({"s_tmin": 5.0, "s_tmax": 1.0},
         r"^s_tmin must be <= s_tmax \(churn applies where s_tmin <= sigma <= s_tmax\)\. "
         r"Received: s_tmin=5\.0, s_tmax=1\.0; swap them, or raise s_tmax$"),
    ],
)
def test_bad_churn_options_are_one_line_errors(options, match):
    with pytest.raises(ValueError, match=match) as error:
        SamplerOptions("heun", **options)
    assert "\n" not in str(error.value)


def test_heun_takes_the_karras_grid_and_its_options_from_the_table_and_the_command_line():
    assert SamplerOptions("heun").timestep_spacing == "karras"
    assert SamplerOptions("heun", timestep_spacing="trailing").timestep_spacing == "trailing"
    assert SamplerOptions("ddim").timestep_spacing == "trailing"
    assert SamplerOptions("heun").s_tmax is None  # no upper bound, and records stay strict JSON
    assert samplers.SAMPLERS[-1] == "heun" and "heun" in DETERMINISTIC_SAMPLERS
    action = next(a for a in build_parser()._actions if a.dest == "command")
    sample = action.choices["sample"]
    args = sample.parse_args(["--checkpoint", "run", "--out", "x.png", "--sampler", "heun", "--steps", "18",
                              "--s-churn", "40", "--s-tmin", "0.05", "--s-tmax", "50", "--s-noise", "1.003"])
    options = sampling_options(args, 1000)
    assert options["timestep_spacing"] == "karras" and options["num_steps"] == 18
    churn = (options["s_churn"], options["s_tmin"], options["s_tmax"], options["s_noise"])
    assert churn == (40.0, 0.05, 50.0, 1.003)
    assert SamplerOptions(**options).s_tmax == 50.0
    for flag, value in (("--s-tmax", "-1"), ("--s-noise", "0"), ("--s-churn", "lots")):
        with pytest.raises(SystemExit):
            sample.parse_args(["--checkpoint", "run", "--out", "x.png", flag, value])
    assert "--s-churn" not in action.choices["inpaint"]._option_string_actions


@pytest.mark.parametrize("num_steps, calls", [(1, 1), (2, 3), (20, 39)])
def test_n_steps_cost_2n_minus_1_network_calls(num_steps, calls):
    model, diffusion = make_model()
    x_T = np.zeros((1, 4, 4, 1), "float32")
    _, counted = run_eagerly(model, diffusion, num_steps, x_T, np.zeros((num_steps, 1, 4, 4, 1), "float32"))
    assert counted == calls


# ------------------------------------------------------------------ backends

BACKEND_RUN = """
from gaussian_exact import make_model
model, diffusion = make_model()
start = np.random.default_rng(0).standard_normal((2, 4, 4, 1)).astype("float32")
solved = model.generate_images(sampler="heun", num_steps=8, initial_noise=start, verbose=0)
options = dict(seed=3, sampler="heun", num_steps=8, verbose=0)
whole = model.generate_images(2, s_churn=4.0, segment_steps=None, **options)
parts = model.generate_images(2, s_churn=4.0, segment_steps=3, **options)
deterministic = model.generate_images(2, **options)
emit(solved=solved.tolist(), segment_error=float(np.abs(whole - parts).max()),
     churn_moved=float(np.abs(whole - deterministic).max()), finite=bool(np.isfinite(whole).all()))
"""


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["tensorflow", "jax", "torch"])
def test_heun_compiles_into_one_loop_on_every_backend(backend):
    # The chain (its corrector skipped by ops.cond on the last step) runs compiled on each backend:
    # Algorithm 2 from one x_T, and churn noise that is the same in segments as in one piece.
    skip_unless_installed(backend)
    result = run_snippet(BACKEND_RUN, backend)
    _, diffusion = make_model()
    start = np.random.default_rng(0).standard_normal((2, 4, 4, 1))
    kept = samplers.sampling_timesteps(diffusion, 8, "karras")
    expected, _ = reference_heun(diffusion.terms_float64["alphas_cumprod"], kept, start)
    np.testing.assert_allclose(np.array(result["solved"]), expected, atol=2e-5)
    assert result["segment_error"] < 1e-6 and result["finite"] and result["churn_moved"] > 0.01
