"""The samplers' arithmetic, checked without training: an exact noise predictor.

For data x_0 ~ N(mu, s^2) per pixel, the optimal noise prediction is
eps*(x_t, t) = (x_t - sqrt(ab_t) mu) sqrt(1 - ab_t) / (ab_t s^2 + 1 - ab_t).
With it every reverse step is affine in x_t plus Gaussian noise, so the
distribution a sampler must produce follows exactly from a float64 recursion
on (mean, variance); the samples must match it within their standard error:
4.5 standard errors, sqrt(v / n) for the mean and v sqrt(2 / n) for the variance
(n samples; pixels are independent under the per-pixel predictor), a false
alarm rate of about 1e-5 per check.
"""

import math

import keras
import numpy as np
import pytest
from keras import ops

from ddpm_keras import DiffusionModel
from ddpm_keras import GaussianDiffusion
from ddpm_keras import sampling

MU, S = 0.1, 0.2


@keras.saving.register_keras_serializable(package="ddpm_keras_tests")
class ExactNoisePredictor(keras.layers.Layer):
    """eps*(x_t, t) for Gaussian data N(mu, s^2), given the alphas_cumprod."""

    def __init__(self, mu, s, alphas_cumprod, **kwargs):
        super().__init__(**kwargs)
        self.mu, self.s, self.alphas_cumprod = mu, s, list(alphas_cumprod)

    def call(self, inputs):
        x, t = inputs
        a = ops.take(ops.convert_to_tensor(self.alphas_cumprod, "float32"), t)[:, None, None, None]
        return (x - ops.sqrt(a) * self.mu) * ops.sqrt(1.0 - a) / (a * self.s**2 + 1.0 - a)

    def get_config(self):
        return {**super().get_config(), "mu": self.mu, "s": self.s, "alphas_cumprod": self.alphas_cumprod}


def exact_predictor_network(diffusion, img_size=4):
    images = keras.Input((img_size, img_size, 1))
    t = keras.Input((), dtype="int32")
    eps = ExactNoisePredictor(MU, S, diffusion.terms_float64["alphas_cumprod"])([images, t])
    return keras.Model([images, t], eps)


def ddpm_reference_moments(diffusion):
    """Mean and variance of x_0 after the full ancestral chain from N(0, 1), in float64."""
    terms = diffusion.terms_float64
    mean, var = 0.0, 1.0
    for t in reversed(range(diffusion.num_timesteps)):
        a = terms["alphas_cumprod"][t]
        k = math.sqrt(1 - a) / (a * S**2 + 1 - a)
        # x0_hat = alpha * x_t + beta;  x_{t-1} = c1 x0_hat + c2 x_t + sigma z
        alpha = (1 - math.sqrt(1 - a) * k) / math.sqrt(a)
        beta = math.sqrt(1 - a) * k * MU
        c1, c2 = terms["posterior_mean_coef1"][t], terms["posterior_mean_coef2"][t]
        noise_var = terms["posterior_variance"][t] if t > 0 else 0.0
        mean = (c1 * alpha + c2) * mean + c1 * beta
        var = (c1 * alpha + c2) ** 2 * var + noise_var
    return mean, var


def assert_matches_moments(samples, mean, var):
    n = samples.size
    assert samples.mean() == pytest.approx(mean, abs=4.5 * math.sqrt(var / n))
    assert samples.var() == pytest.approx(var, abs=4.5 * var * math.sqrt(2.0 / n))


def test_ddpm_chain_samples_the_exact_distribution():
    diffusion = GaussianDiffusion(timesteps=100, beta_end=0.2)
    model = DiffusionModel(exact_predictor_network(diffusion), diffusion)
    samples = model.generate_images(num_images=512, seed=0)
    mean, var = ddpm_reference_moments(diffusion)
    # The chain lands near the data (its fixed variance, beta tilde, under-disperses a little)...
    assert mean == pytest.approx(MU, abs=0.01) and math.sqrt(var) == pytest.approx(S, rel=0.15)
    # ...and the compiled sampler reproduces the chain's exact moments.
    assert_matches_moments(samples, mean, var)


# ------------------------------------------------------------------ helpers

BETA_END = 0.2


def make_model(timesteps=100, img_size=4, beta_end=BETA_END, clip=1.0):
    diffusion = GaussianDiffusion(timesteps=timesteps, beta_end=beta_end, clip_min=-clip, clip_max=clip)
    return DiffusionModel(exact_predictor_network(diffusion, img_size), diffusion), diffusion


def linear_alphas_cumprod(timesteps, beta_end=BETA_END):
    return np.cumprod(1.0 - np.linspace(1e-4, beta_end, timesteps))


def trailing(timesteps, num_steps):
    """Trailing spacing, written out: s_i = round((i + 1) T / n) - 1."""
    return np.array([round((i + 1) * timesteps / num_steps) - 1 for i in range(num_steps)])


def exact_eps(a):
    """eps*(x) = k x + e0 at alphas_cumprod a."""
    k = math.sqrt(1 - a) / (a * S**2 + 1 - a)
    return k, -k * math.sqrt(a) * MU


def step_gain(a, a_prev, sampler, eta=0.0):
    """A reverse step a -> a_prev with the exact predictor: x' = gain x + offset + sqrt(noise_var) z."""
    k, e0 = exact_eps(a)
    # x0_hat = ax x + bx
    ax, bx = (1 - math.sqrt(1 - a) * k) / math.sqrt(a), -math.sqrt(1 - a) * e0 / math.sqrt(a)
    if sampler == "ddpm":
        beta = 1 - a / a_prev
        c1, c2 = beta * math.sqrt(a_prev) / (1 - a), (1 - a_prev) * math.sqrt(1 - beta) / (1 - a)
        return c1 * ax + c2, c1 * bx, beta * (1 - a_prev) / (1 - a)
    sigma2 = eta**2 * (1 - a_prev) / (1 - a) * (1 - a / a_prev)
    d = math.sqrt(1 - a_prev - sigma2)
    return math.sqrt(a_prev) * ax + d * k, math.sqrt(a_prev) * bx + d * e0, sigma2


def reference_moments(kept, sampler="ddpm", eta=0.0, corrector_steps=0, snr=0.16, resample=1):
    """(mean, var) of x after each reverse step over kept alphas_cumprod, starting at N(0, 1).

    `corrector_steps`: Langevin steps with the exact score -(x - m)/v at the new level and
    step size 2 alpha snr^2 ||z||^2/||s||^2, where ||z||^2/||s||^2 -> v^2 / E(x - m)^2 for
    large images (both norms concentrate). `resample`: RePaint's redo of each step after
    re-noising with q(x_t | x_{t-1}).
    """
    kept = np.asarray(kept, np.float64)
    prev = np.append(1.0, kept[:-1])
    mean, var, history = 0.0, 1.0, [(0.0, 1.0)]
    for i in reversed(range(len(kept))):
        gain, offset, noise_var = step_gain(kept[i], prev[i], sampler, eta)
        beta = 1 - kept[i] / prev[i]
        for r in range(resample):
            if r > 0:
                mean, var = math.sqrt(1 - beta) * mean, (1 - beta) * var + beta
            mean, var = gain * mean + offset, gain**2 * var + noise_var
        if i > 0:
            a = kept[i - 1]
            m, v, alpha = math.sqrt(a) * MU, a * S**2 + 1 - a, a / prev[i - 1]
            for _ in range(corrector_steps):
                step_size = 2 * alpha * snr**2 * v**2 / (var + (mean - m) ** 2)
                g = 1 - step_size / v
                mean, var = m + g * (mean - m), g**2 * var + 2 * step_size
        history.append((mean, var))
    return history


# ------------------------------------------------------------------ schedules


def test_trailing_spacing_starts_at_the_last_timestep():
    np.testing.assert_array_equal(sampling.spaced_timesteps(1000, 4), [249, 499, 749, 999])
    np.testing.assert_array_equal(sampling.spaced_timesteps(1000, 3), [332, 666, 999])
    np.testing.assert_array_equal(sampling.spaced_timesteps(100, 100), np.arange(100))
    np.testing.assert_array_equal(sampling.spaced_timesteps(1000, 50), trailing(1000, 50))


def test_respaced_betas_follow_the_kept_alphas_cumprod():
    diffusion = GaussianDiffusion(timesteps=100, beta_end=BETA_END)
    ab = linear_alphas_cumprod(100)
    spaced, timestep_map = sampling.respaced(diffusion, [9, 49, 99])
    expected = [1 - ab[9], 1 - ab[49] / ab[9], 1 - ab[99] / ab[49]]
    np.testing.assert_allclose(spaced.terms_float64["betas"], expected, rtol=1e-12)
    np.testing.assert_allclose(spaced.terms_float64["alphas_cumprod"], ab[[9, 49, 99]], rtol=1e-12)
    np.testing.assert_array_equal(timestep_map, [9, 49, 99])
    assert GaussianDiffusion.from_config(spaced.get_config()).terms_float64["betas"] == pytest.approx(expected)


def test_respacing_all_timesteps_gives_the_original_terms():
    diffusion = GaussianDiffusion(timesteps=100, beta_end=BETA_END)
    spaced, timestep_map = sampling.respaced(diffusion, sampling.spaced_timesteps(100, 100))
    for name, value in diffusion.terms_float64.items():
        np.testing.assert_allclose(spaced.terms_float64[name], value, rtol=1e-9, atol=1e-12, err_msg=name)
    np.testing.assert_array_equal(timestep_map, np.arange(100))


# ------------------------------------------------------------------ distributions


@pytest.mark.parametrize(
    "sampler, num_steps, eta",
    [("ddpm", 10, 0.0), ("ddim", 20, 0.0), ("ddim", 20, 1.0)],
    ids=["ddpm-respaced-10", "ddim-eta0-20", "ddim-eta1-20"],
)
def test_fast_samplers_sample_their_exact_distribution(sampler, num_steps, eta):
    model, _ = make_model()
    samples = model.generate_images(512, seed=0, sampler=sampler, num_steps=num_steps, eta=eta)
    kept = linear_alphas_cumprod(100)[trailing(100, num_steps)]
    mean, var = reference_moments(kept, sampler, eta)[-1]
    assert_matches_moments(samples, mean, var)


@pytest.mark.parametrize("sampler, eta", [("ddpm", 0.0), ("ddim", 1.0), ("ddim", 0.5)])
def test_every_stochastic_step_is_its_exact_affine_map_plus_its_noise(sampler, eta):
    # Each step is x' = gain x + offset + sqrt(noise_var) z: with every frame kept, the
    # standardised residuals of all steps (2048 x 16 pixels x 9 steps) must be N(0, 1) to
    # within 4.5 standard errors (~1.5% in the variance): a 10% error in sigma fails.
    model, _ = make_model(clip=10.0)
    _, frames = model.generate_images(
        2048, seed=1, sampler=sampler, num_steps=10, eta=eta, return_trajectory=True, trajectory_every=1
    )
    frames = frames.astype(np.float64)
    kept = linear_alphas_cumprod(100)[trailing(100, 10)]
    prev = np.append(1.0, kept[:-1])
    residuals = []
    for step, i in enumerate(reversed(range(1, 10))):  # the last step (to the data) adds no noise
        gain, offset, noise_var = step_gain(kept[i], prev[i], sampler, eta)
        residuals.append((frames[step + 1] - gain * frames[step] - offset) / math.sqrt(noise_var))
    z = np.stack(residuals)
    assert abs(z.mean()) < 4.5 / math.sqrt(z.size)
    assert z.var() == pytest.approx(1.0, abs=4.5 * math.sqrt(2.0 / z.size))
    gain, offset, _ = step_gain(kept[0], prev[0], sampler, eta)
    np.testing.assert_allclose(frames[-1], gain * frames[-2] + offset, atol=1e-5)


def test_pc_corrector_moves_samples_to_its_exact_distribution():
    # 32x32 images: ||z|| / ||s|| concentrates (relative spread ~ 1/sqrt(1024)), so the
    # reference's deterministic step size is off by O(1/D) ~ 1e-3 relative, far below the SE.
    model, _ = make_model(img_size=32)
    samples = model.generate_images(64, seed=0, sampler="pc", num_steps=20, corrector_steps=2, snr=0.16)
    kept = linear_alphas_cumprod(100)[trailing(100, 20)]
    mean, var = reference_moments(kept, "ddpm", corrector_steps=2, snr=0.16)[-1]
    _, ddpm_var = reference_moments(kept, "ddpm")[-1]
    # The corrector matters: without it the variance would be far outside the tolerance.
    assert abs(ddpm_var - var) > 20 * var * math.sqrt(2.0 / samples.size)
    assert_matches_moments(samples, mean, var)


def test_ddim_eta0_is_the_exact_affine_map_of_its_noise():
    model, _ = make_model(clip=10.0)
    noises = np.random.default_rng(0).standard_normal((4, 4, 4, 1)).astype("float32")
    gain, offset = 1.0, 0.0
    kept = linear_alphas_cumprod(100)[trailing(100, 20)]
    prev = np.append(1.0, kept[:-1])
    for i in reversed(range(20)):
        g, o, _ = step_gain(kept[i], prev[i], "ddim")
        gain, offset = g * gain, g * offset + o
    decoded = model.decode(noises, num_steps=20)
    np.testing.assert_allclose(decoded, gain * noises + offset, atol=2e-5)
    np.testing.assert_array_equal(decoded, model.decode(noises, num_steps=20))
    a = model.generate_images(4, seed=3, sampler="ddim")
    np.testing.assert_array_equal(a, model.generate_images(4, seed=3, sampler="ddim"))
    assert not np.allclose(a, model.generate_images(4, seed=4, sampler="ddim"))


def test_trajectory_frames_follow_the_chain():
    model, _ = make_model(clip=10.0)
    images, frames = model.generate_images(
        512, seed=0, sampler="ddim", num_steps=20, eta=1.0, return_trajectory=True, trajectory_every=7
    )
    assert frames.shape == (4, 512, 4, 4, 1)  # x_T, after steps 7, 14 and 20
    np.testing.assert_array_equal(frames[-1], images)
    history = reference_moments(linear_alphas_cumprod(100)[trailing(100, 20)], "ddim", 1.0)
    for frame, step in zip(frames, [0, 7, 14, 20]):
        assert_matches_moments(frame, *history[step])
    _, default_frames = model.generate_images(2, seed=0, sampler="ddim", num_steps=50, return_trajectory=True)
    assert len(default_frames) == 1 + 50 // 2  # every max(1, 50 // 20) = 2 steps


def test_batch_size_chunks_give_the_count_deterministically(capsys):
    model, _ = make_model()
    images = model.generate_images(96, seed=5, sampler="ddpm", num_steps=10, batch_size=32)
    assert images.shape == (96, 4, 4, 1)
    assert "30/30" in capsys.readouterr().out  # progress over the 3 chunks x 10 steps
    np.testing.assert_array_equal(images, model.generate_images(96, seed=5, num_steps=10, batch_size=32, verbose=0))
    assert not np.allclose(images[:32], images[32:64])  # chunks draw different noise
    assert_matches_moments(images, *reference_moments(linear_alphas_cumprod(100)[trailing(100, 10)])[-1])


# ------------------------------------------------------------------ manipulation


@pytest.mark.parametrize("resample", [1, 3])
def test_inpaint_keeps_known_pixels_and_samples_the_rest(resample):
    model, _ = make_model()
    images = np.random.default_rng(0).uniform(-1, 1, (512, 4, 4, 1)).astype("float32")
    mask = np.zeros((4, 4), "float32")
    mask[:, :2] = 1.0
    filled = model.inpaint(images, mask, seed=0, num_steps=10, resample=resample)
    np.testing.assert_array_equal(filled[:, :, :2], images[:, :, :2])
    # The exact predictor acts per pixel, so the unknown pixels follow the unconditional
    # chain (with RePaint's re-noise-and-redo steps).
    kept = linear_alphas_cumprod(100)[trailing(100, 10)]
    assert_matches_moments(filled[:, :, 2:], *reference_moments(kept, "ddpm", resample=resample)[-1])


def test_inpaint_with_ddim_keeps_known_pixels_exactly():
    model, _ = make_model()
    images = np.random.default_rng(1).uniform(-1, 1, (8, 4, 4, 1)).astype("float32")
    mask = (np.random.default_rng(2).uniform(size=(8, 4, 4, 1)) < 0.5).astype("float32")
    filled = model.inpaint(images, mask, seed=0, sampler="ddim", num_steps=10)
    np.testing.assert_array_equal(filled[mask == 1], images[mask == 1])
    assert not np.allclose(filled[mask == 0], images[mask == 0], atol=0.05)


def test_encode_then_decode_returns_the_images():
    # T = 1000 steps of the linear schedule: the float64 affine recursion of this exact
    # predictor gives the DDIM round trip x -> g x + o with g = 0.990, o = 0.0012
    # (discretisation error, first order in the step), and the encoder within 0.3% of the
    # exact probability-flow map z = sqrt(ab_T) mu + sqrt(v_T) (x - mu) / s.
    diffusion = GaussianDiffusion(timesteps=1000)
    model = DiffusionModel(exact_predictor_network(diffusion), diffusion)
    ab = np.cumprod(1.0 - np.linspace(1e-4, 0.02, 1000))
    images = (MU + S * np.random.default_rng(0).standard_normal((8, 4, 4, 1))).astype("float32")
    latents = model.encode(images, num_steps=1000)
    v_T = ab[-1] * S**2 + 1 - ab[-1]
    exact = math.sqrt(ab[-1]) * MU + math.sqrt(v_T) * (images - MU) / S
    np.testing.assert_allclose(latents, exact, atol=0.003, rtol=0.005)
    decoded = model.decode(latents, num_steps=1000, clip_denoised=False)
    gain, offset = 1.0, 0.0
    prev = np.append(1.0, ab[:-1])
    for i in range(1000):  # encode: level i - 1 -> i; decode: back
        k, e0 = exact_eps(ab[i])
        up = math.sqrt(ab[i] / prev[i]) * (1 - math.sqrt(1 - prev[i]) * k) + math.sqrt(1 - ab[i]) * k
        up_offset = (math.sqrt(1 - ab[i]) - math.sqrt(ab[i] / prev[i] * (1 - prev[i]))) * e0
        gain, offset = up * gain, up * offset + up_offset
    for i in reversed(range(1000)):
        g, o, _ = step_gain(ab[i], prev[i], "ddim")
        gain, offset = g * gain, g * offset + o
    assert abs(gain - 1) < 0.011 and abs(offset) < 0.002
    np.testing.assert_allclose(decoded, gain * images + offset, atol=2e-4)
    np.testing.assert_allclose(decoded, images, atol=0.011 * 1.0 + 0.002)


def test_interpolation_endpoints_are_the_decoded_noises():
    model, _ = make_model(clip=10.0)
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((2, 4, 4, 1)).astype("float32")
    path = model.interpolate(5, noises=(a, b), num_steps=20)
    assert path.shape == (5, 4, 4, 1)
    ends = model.decode(np.stack([a, b]), num_steps=20)
    np.testing.assert_allclose(path[[0, -1]], ends, atol=1e-6)
    # The middle is the decode of the slerp midpoint: (a + b) / (2 cos(theta / 2)).
    theta = math.acos(np.sum(a * b) / (np.linalg.norm(a) * np.linalg.norm(b)))
    np.testing.assert_allclose(path[2], model.decode((a + b) / (2 * math.cos(theta / 2)), num_steps=20)[0], atol=1e-5)
    seeded = model.interpolate(4, seed=1, num_steps=20)
    np.testing.assert_array_equal(seeded, model.interpolate(4, seed=1, num_steps=20))
    images = model.generate_images(2, seed=0, sampler="ddim", num_steps=20)
    morph = model.interpolate(3, images=(images[0], images[1]), num_steps=20)
    # Real images enter through their DDIM inversions (round trip tested above).
    np.testing.assert_allclose(morph[[0, -1]], model.decode(model.encode(images, num_steps=20), num_steps=20), atol=1e-5)


# ------------------------------------------------------------------ arguments


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"sampler": "foo"}, r"Received: sampler='foo'. Expected one of \('ddpm', 'ddim', 'pc', 'dpmpp_2m'"),
        ({"num_steps": 101}, r"num_steps must be an integer in \[1, 100\].*Received: num_steps=101"),
        ({"num_steps": 0}, "Received: num_steps=0"),
        ({"sampler": "ddim", "eta": 1.5}, "Received: eta=1.5"),
        ({"sampler": "pc", "corrector_steps": -1}, "Received: corrector_steps=-1"),
        ({"sampler": "pc", "snr": 0.0}, "Received: snr=0.0"),
        ({"batch_size": 0}, "Received: batch_size=0"),
        ({"return_trajectory": True, "trajectory_every": 0}, "Received: trajectory_every=0"),
    ],
)
def test_generate_images_rejects_bad_arguments(kwargs, match):
    model, _ = make_model()
    with pytest.raises(ValueError, match=match):
        model.generate_images(2, **kwargs)


def test_manipulation_rejects_bad_arguments():
    model, _ = make_model()
    images = np.zeros((2, 4, 4, 1), "float32")
    with pytest.raises(ValueError, match=r"mask must hold only 0.*1"):
        model.inpaint(images, np.full((4, 4), 0.5))
    with pytest.raises(ValueError, match=r"mask must broadcast.*mask.shape=\(3, 3\)"):
        model.inpaint(images, np.ones((3, 3)))
    with pytest.raises(ValueError, match=r"images must have shape.*Received: images.shape=\(2, 5, 5, 1\)"):
        model.inpaint(np.zeros((2, 5, 5, 1)), np.ones((5, 5)))
    with pytest.raises(ValueError, match=r"Received: sampler='pc'. Expected one of \('ddpm', 'ddim'\)"):
        model.inpaint(images, np.ones((4, 4)), sampler="pc")
    with pytest.raises(ValueError, match="Received: resample=0"):
        model.inpaint(images, np.ones((4, 4)), resample=0)
    with pytest.raises(ValueError, match="Received: num_images=1"):
        model.interpolate(1)
    with pytest.raises(ValueError, match="not both"):
        model.interpolate(3, images=(images[0], images[1]), noises=(images[0], images[1]))
    with pytest.raises(ValueError, match="Received: num_steps=200"):
        model.encode(images, num_steps=200)
