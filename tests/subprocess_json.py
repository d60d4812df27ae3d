"""Runs a Python snippet in a fresh interpreter (its own KERAS_BACKEND, its own TF devices) and parses its JSON."""

import importlib.util
import json
import os
import pathlib
import subprocess
import sys
import textwrap

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
BACKEND_PACKAGES = {"tensorflow": "tensorflow", "jax": "jax", "torch": "torch"}

PREAMBLE = """
import json, os, sys
import numpy as np
import keras
from keras import ops
from conftest import tiny_images, tiny_model, tiny_unet
keras.utils.set_random_seed(1234)

def to_numpy(x):
    return np.asarray(ops.convert_to_numpy(x))

def emit(**results):
    print("JSON:" + json.dumps(results))
"""


def skip_unless_installed(backend):
    """Skips the test, saying why, when `backend`'s package is missing."""
    package = BACKEND_PACKAGES[backend]
    if importlib.util.find_spec(package) is None:
        reason = f"KERAS_BACKEND={backend} needs `{package}`, not installed"
        print(f"SKIP: {reason}")
        pytest.skip(reason)


def run_snippet(code, backend="tensorflow", timeout=300, env=None):
    """Runs `PREAMBLE + code` with `KERAS_BACKEND=backend`; returns the dict it passed to `emit`."""
    environment = dict(os.environ)
    environment.update(
        KERAS_BACKEND=backend,
        TF_CPP_MIN_LOG_LEVEL="3",
        PYTHONPATH=os.pathsep.join([str(ROOT), str(ROOT / "tests")]),
    )
    environment.update(env or {})
    process = subprocess.run(
        [sys.executable, "-c", PREAMBLE + textwrap.dedent(code)],
        capture_output=True, text=True, timeout=timeout, env=environment, cwd=ROOT,
    )
    lines = [line for line in process.stdout.splitlines() if line.startswith("JSON:")]
    if process.returncode or not lines:
        raise AssertionError(
            f"snippet failed under KERAS_BACKEND={backend} (exit {process.returncode}):\n"
            f"{process.stdout[-3000:]}\n{process.stderr[-5000:]}"
        )
    return json.loads(lines[-1][len("JSON:"):])
