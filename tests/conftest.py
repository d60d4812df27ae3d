import os
import tempfile

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("MPLBACKEND", "Agg")
# The tests run in two worker processes (pyproject.toml): on a GPU each takes memory as it needs it,
# not all of it at start.
os.environ.setdefault("TF_FORCE_GPU_ALLOW_GROWTH", "true")
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from ddpm_keras import DiffusionModel  # noqa: E402
from ddpm_keras import GaussianDiffusion  # noqa: E402
from ddpm_keras import build_unet  # noqa: E402

SEED = 1234

# Seconds each test file takes in the default run and in the slow one (two worker processes on a 2-core
# CPU). pytest-xdist hands the files out in the order collected (`--no-loadscope-reorder` in pyproject.toml;
# by default it orders them by their number of tests, which put the one-test main job and notebook last):
# the longest first, so that no long file starts last while the other worker idles. Files not named here
# follow, in their usual order.
FILE_SECONDS = {
    "test_faults": (214, 142), "test_cli": (162, 201), "test_pretrained": (246, 0), "test_export": (95, 0),
    "test_model": (77, 0), "test_cli_conditional": (80, 26), "test_inpainting_model": (74, 149),
    "test_conditional": (68, 0), "test_callbacks": (59, 0), "test_solvers": (44, 0),
    "test_classifier_guidance": (42, 117), "test_likelihood_ode": (37, 112), "test_multiworker": (31, 496),
    "test_backends": (0, 429), "test_main_job": (0, 367), "test_distribute": (0, 142), "test_notebook": (0, 201),
    "test_guidance": (25, 53), "test_tensorboard": (10, 55), "test_metrics_backends": (0, 53),
    "test_posthoc_ema": (24, 52), "test_precision": (31, 45),
}


@pytest.fixture(autouse=True, scope="session")
def temporary_files_under_basetemp(tmp_path_factory):
    """`tempfile`'s files, of the tests, of the libraries they call and of their subprocesses, go under pytest's
    base temporary directory (the last three runs' are kept), not into the system's: a killed worker's directory
    and the empty ones TFDS leaves when it cannot reach its bucket would otherwise pile up in /tmp run after run.
    """
    path = str(tmp_path_factory.mktemp("tempfile"))
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(tempfile, "tempdir", path)
        patch.setenv("TMPDIR", path)
        yield


@pytest.fixture(autouse=True)
def fresh_keras():
    """Each test starts from a clear Keras session with fixed seeds.

    Without the full garbage collection of `clear_session()`: with the
    compiled functions a session accumulates it took ~6 s per test late in a
    full run, most of the suite's time.
    """
    keras.backend.clear_session(free_memory=False)
    keras.utils.set_random_seed(SEED)
    yield


def tiny_unet(img_size=16, img_channels=3):
    return build_unet(
        img_size, img_channels, widths=[8, 16], has_attention=[False, True],
        num_res_blocks=1, first_conv_channels=8,
    )


def tiny_model(timesteps=20, ema=0.9, seed=0, img_size=16):
    model = DiffusionModel(
        tiny_unet(img_size), GaussianDiffusion(timesteps=timesteps, beta_end=0.2), ema=ema, seed=seed
    )
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    return model


def tiny_images(n=32, img_size=16, seed=0):
    """A fixed tiny dataset: smooth colour gradients in [-1, 1]."""
    rng = np.random.default_rng(seed)
    ramp = np.linspace(-1.0, 1.0, img_size, dtype=np.float32)
    slope_y, slope_x = rng.uniform(-0.6, 0.6, size=(2, n, 1, 1, 3)).astype(np.float32)
    offsets = rng.uniform(-0.2, 0.2, size=(n, 1, 1, 3)).astype(np.float32)
    images = slope_y * ramp[None, :, None, None] + slope_x * ramp[None, None, :, None] + offsets
    return np.clip(images, -1.0, 1.0)


@pytest.hookimpl(trylast=True)  # after `-m` has deselected: `items` are the tests that will run
def pytest_collection_modifyitems(config, items):
    """The longest test files first (`FILE_SECONDS`), each file's tests in their order."""
    slow = bool(items) and all(item.get_closest_marker("slow") for item in items)
    seconds = {name: times[slow] for name, times in FILE_SECONDS.items()}
    items.sort(key=lambda item: -seconds.get(item.path.stem, 0))
