"""FID, KID, the Inception Score and QualityMonitor give the same numbers on TensorFlow, JAX and PyTorch.

The extractor and classifier get the same weights on each backend, so their
features agree to float32 rounding and the float64 host arithmetic must
give the same metrics.
"""

import numpy as np
import pytest
from subprocess_json import run_snippet
from subprocess_json import skip_unless_installed

# Subprocesses on every backend: in `-m slow` (CI runs it).
pytestmark = pytest.mark.slow

METRICS = """
from ddpm_keras.training.callbacks import QualityMonitor
from ddpm_keras.metrics import FrechetInceptionDistance, InceptionScore, KernelInceptionDistance

inputs = keras.Input((16, 16, 3))
features = keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(8, 3, strides=2, activation="tanh")(inputs))
extractor = keras.Model(inputs, features, name="small_extractor")
classifier = keras.Model(inputs, keras.layers.Dense(4, activation="softmax")(features))
rng = np.random.default_rng(0)
for w in classifier.weights:  # the extractor's too
    w.assign(rng.normal(0.0, 0.3, w.shape).astype("float32"))
real, fake = tiny_images(64), tiny_images(40, seed=1)
fid = FrechetInceptionDistance(real, extractor)
fid.update_state(fake)
kid = KernelInceptionDistance(real, extractor, subset_size=20, num_subsets=10)
kid.update_state(fake)
score = InceptionScore(classifier, splits=4)
score.update_state(fake)
monitor = QualityMonitor(real, every=1, num_samples=8, sampling={"sampler": "ddim", "num_steps": 3},
                         feature_extractor=extractor, kid_subset_size=4, verbose=0)
# The callback's own work (sampling with the EMA network, the distances, the logs), without a fit.
monitor.set_model(tiny_model(timesteps=10))
logs = {"loss": 1.0}
monitor.on_epoch_end(0, logs)
emit(fid=fid.result(), kid=kid.result(), inception_score=score.result(), logged=[logs["fid"], logs["kid"]])
"""


@pytest.fixture(scope="module")
def tensorflow_metrics():
    return run_snippet(METRICS, "tensorflow")


@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_metrics_agree_with_tensorflow(backend, tensorflow_metrics):
    skip_unless_installed(backend)
    result = run_snippet(METRICS, backend)
    for name in ("fid", "kid", "inception_score"):
        assert result[name] == pytest.approx(tensorflow_metrics[name], rel=1e-4, abs=1e-7), name
    assert tensorflow_metrics["fid"] > 0 and tensorflow_metrics["inception_score"] > 1.0
    fid, kid = result["logged"]
    assert np.isfinite(kid) and fid > 0
