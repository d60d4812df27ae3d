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


def backend_env(backend):
    """The variables of a subprocess on `backend`: `KERAS_BACKEND`, and on JAX XLA without LLVM's optimisation.

    JAX compiles every step with XLA and the tests' networks are tiny, so a JAX test spends most of its time
    compiling, half of it in LLVM's optimisation of the CPU code: without it the same programs compile in half the
    time (the backend tests' training snippet: 48 s instead of 94) and give the same values to float32 rounding.
    Not on TensorFlow, whose XLA-compiled samplers run long chains: unoptimised code runs them 3x slower.
    """
    env = {"KERAS_BACKEND": backend}
    flags = os.environ.get("XLA_FLAGS", "")
    if backend == "jax" and "xla_backend_optimization_level" not in flags:
        env["XLA_FLAGS"] = f"{flags} --xla_backend_optimization_level=0".strip()
    return env


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
        backend_env(backend),
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
