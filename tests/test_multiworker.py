"""Several processes training one model over loopback: `ddpm-keras train --strategy multiworker` as users launch it.

Each test starts two worker processes on 127.0.0.1 with free ports (by
`TF_CONFIG`, by SLURM's variables, or by Keras's JAX variables), bounds
them in time and kills whatever is left. The SLURM resolver's reading of
the variables is also checked without processes.
"""

import csv
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
from subprocess_json import PREAMBLE
from subprocess_json import ROOT
from subprocess_json import backend_env
from subprocess_json import run_snippet

from ddpm_keras.training.callbacks import StallWatchdog

TINY = ["--preset", "tiny", "--dataset", "synthetic", "--img-size", "16", "--batch-size", "8", "--strategy", "multiworker"]
LAUNCH_TIMEOUT = 300


def free_ports(count):
    """`count` consecutive free loopback ports (SLURM's tasks on a node listen on port_base + i)."""
    for _ in range(50):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            base = probe.getsockname()[1]
        if base + count > 65535:
            continue
        try:
            sockets = []
            for port in range(base, base + count):
                s = socket.socket()
                sockets.append(s)
                s.bind(("127.0.0.1", port))
        except OSError:
            continue
        finally:
            for s in sockets:
                s.close()
        return list(range(base, base + count))
    raise RuntimeError("no free consecutive loopback ports")


def tf_config_env(ports, index):
    cluster = {"worker": [f"127.0.0.1:{port}" for port in ports]}
    return {"TF_CONFIG": json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})}


def slurm_env(ports, index):
    return {
        "SLURM_PROCID": str(index), "SLURM_STEP_NUM_TASKS": str(len(ports)), "SLURM_STEP_NODELIST": "127.0.0.1",
        "SLURM_STEP_TASKS_PER_NODE": str(len(ports)), "DDPM_KERAS_PORT_BASE": str(ports[0]),
    }


def jax_env(ports, index):
    return {
        **backend_env("jax"), "KERAS_DISTRIBUTION_JOB_ADDRESSES": f"127.0.0.1:{ports[0]}",
        "KERAS_DISTRIBUTION_NUM_PROCESSES": str(len(ports)), "KERAS_DISTRIBUTION_PROCESS_ID": str(index),
    }


class Workers:
    """Two `ddpm-keras train` processes, their output in files; killed at exit if still running."""

    def __init__(self, tmp_path, worker_env, args, name="run"):
        ports = free_ports(2)
        self.logs = [tmp_path / f"{name}-worker{i}.log" for i in range(2)]
        self.processes = []
        for index in range(2):
            env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", MPLBACKEND="Agg", PYTHONPATH=str(ROOT))
            for key in ("TF_CONFIG", "KERAS_BACKEND"):
                env.pop(key, None)
            env.update(worker_env(ports, index))
            with open(self.logs[index], "w") as log:
                self.processes.append(subprocess.Popen(
                    [sys.executable, "-m", "ddpm_keras", "train", *args], stdout=log, stderr=subprocess.STDOUT,
                    env=env, cwd=str(tmp_path),
                ))

    def output(self, index):
        return self.logs[index].read_text()

    def wait(self, timeout=LAUNCH_TIMEOUT):
        deadline = time.time() + timeout
        try:
            return [process.wait(timeout=max(1, deadline - time.time())) for process in self.processes]
        finally:
            self.kill()

    def kill(self):
        for process in self.processes:
            if process.poll() is None:
                process.kill()
                process.wait(timeout=30)

    def expect_success(self):
        codes = self.wait()
        assert codes == [0, 0], "\n\n".join(f"worker {i} (exit {c}):\n{self.output(i)[-4000:]}" for i, c in enumerate(codes))


def printed_losses(output):
    return re.findall(r"loss: ([0-9.]+)", output)


def logged(run_dir):
    with open(os.path.join(run_dir, "log.csv"), newline="") as f:
        return list(csv.DictReader(f))


def load(path):
    import keras

    import ddpm_keras  # noqa: F401 - registers the classes

    return keras.saving.load_model(os.path.join(path, "model.keras"))


def assert_same_state(a, b):
    """Network, EMA and optimizer state bit for bit."""
    for name in ("network", "ema_network"):
        for x, y in zip(getattr(a, name).weights, getattr(b, name).weights):
            np.testing.assert_array_equal(np.asarray(x), np.asarray(y), err_msg=f"{name} {x.path}")
    for x, y in zip(a.optimizer.variables, b.optimizer.variables):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y), err_msg=x.path)


def check_two_workers(tmp_path, worker_env, per_worker_images=True):
    run_dir, worker_dir = tmp_path / "run", tmp_path / "worker1"
    steps, epochs = 3, 2
    workers = Workers(tmp_path, worker_env, [*TINY, "--epochs", str(epochs), "--steps-per-epoch", str(steps),
                                             "--plot-every", str(epochs), "--out", str(run_dir),
                                             "--worker-dir", str(worker_dir)])
    workers.expect_success()
    chief, other = workers.output(0), workers.output(1)
    assert "worker 0 of 2" in chief and f"into {run_dir}/" in chief
    assert "worker 1 of 2" in other and f"into {worker_dir}/" in other
    if per_worker_images:
        # Each worker trains on half of every global batch of 8.
        for index, output in enumerate((chief, other)):
            counts = re.findall(rf"worker {index} of 2: epoch \d+: trained on (\d+) images", output)
            assert counts == [str(steps * 4)] * epochs, output[-2000:]
    # The logged loss is the global mean: the same on both workers, and in both logs.
    assert printed_losses(chief) == printed_losses(other) and len(printed_losses(chief)) == epochs
    run_rows, worker_rows = logged(run_dir), logged(worker_dir)
    assert [row["epoch"] for row in run_rows] == ["1", "2"]  # one writer: no row twice
    assert [row["loss"] for row in run_rows] == [row["loss"] for row in worker_rows]
    assert sorted(os.listdir(run_dir)) == ["log.csv", "model.keras", "run.json", "samples"]
    assert "run.json" not in os.listdir(worker_dir)
    trained, copy = load(run_dir), load(worker_dir)
    assert int(trained.epoch) == epochs and int(trained.optimizer.iterations) == epochs * steps
    assert_same_state(trained, copy)
    images = trained.generate_images(2, seed=0, sampler="ddim", num_steps=3, verbose=0)
    assert images.shape == (2, 16, 16, 3) and np.all(np.isfinite(images))


@pytest.mark.slow
def test_two_workers_train_as_one(tmp_path):
    check_two_workers(tmp_path, tf_config_env)


@pytest.mark.slow
def test_two_jax_processes_train_as_one(tmp_path):
    pytest.importorskip("jax")
    check_two_workers(tmp_path, jax_env, per_worker_images=False)


def test_a_worker_alone_gives_up_after_the_worker_timeout(tmp_path):
    """Worker 1 never starts: worker 0 must not wait for it forever."""
    ports = free_ports(2)
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=str(ROOT), KERAS_BACKEND="tensorflow",
               **tf_config_env(ports, 0))
    start = time.time()
    process = subprocess.run(
        [sys.executable, "-m", "ddpm_keras", "train", *TINY, "--epochs", "1", "--out", str(tmp_path / "run"),
         "--worker-timeout", "3"], env=env, cwd=str(tmp_path), capture_output=True, text=True, timeout=120,
    )
    assert process.returncode == -signal.SIGALRM, process.stderr[-3000:]
    assert "Waiting up to 3 s (--worker-timeout) for the other workers to join" in process.stdout
    assert time.time() - start < 60
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_a_lost_worker_stops_the_other_and_the_run_resumes(tmp_path):
    """Launched as srun would (SLURM's variables); worker 1 is killed in epoch 2, then both resume."""
    run_dir, steps = tmp_path / "run", 40
    args = [*TINY, "--steps-per-epoch", str(steps), "--plot-every", "0", "--out", str(run_dir)]
    # The watchdog's bound (a step normally takes well under a second here).
    workers = Workers(tmp_path, slurm_env, [*args, "--epochs", "3", "--worker-timeout", "20"], name="first")
    deadline = time.time() + LAUNCH_TIMEOUT
    while "worker 1 of 2: epoch 1:" not in workers.output(1) and time.time() < deadline:
        assert workers.processes[1].poll() is None, workers.output(1)[-3000:]
        time.sleep(0.1)
    time.sleep(0.5)  # into epoch 2
    workers.processes[1].send_signal(signal.SIGKILL)
    killed = time.time()
    try:
        code = workers.processes[0].wait(timeout=120)
    finally:
        workers.kill()
    seconds = time.time() - killed
    print(f"the survivor exited {seconds:.1f} s after the kill")
    chief = workers.output(0)
    assert code == 75, chief[-3000:]
    assert "another worker was lost" in chief and "--resume" in chief
    # TensorFlow's own detection, or the watchdog's: --worker-timeout, then SIGALRM's margin where
    # the wait holds the interpreter, and slack for the exit.
    assert seconds < 20 + StallWatchdog.ALARM_MARGIN + 10
    assert [row["epoch"] for row in logged(run_dir)] == ["1"]
    finished = load(run_dir)
    assert int(finished.epoch) == 1 and int(finished.optimizer.iterations) == steps
    ema_after_epoch_1 = [np.asarray(w) for w in finished.ema_network.weights]

    resumed = Workers(tmp_path, slurm_env, [*args, "--epochs", "3", "--resume"], name="resumed")
    resumed.expect_success()
    assert "Resuming" in resumed.output(0) and "at epoch 2 of 3" in resumed.output(0)
    assert [row["epoch"] for row in logged(run_dir)] == ["1", "2", "3"]
    final = load(run_dir)
    # The optimizer's step count and the EMA carried on from epoch 1.
    assert int(final.epoch) == 3 and int(final.optimizer.iterations) == 3 * steps
    moved = max(float(np.abs(np.asarray(w) - e).max()) for w, e in zip(final.ema_network.weights, ema_after_epoch_1))
    assert 0 < moved


SAMPLE = """
from ddpm_keras.utils.distribute import strategy_scope
worker, weights = os.environ.get("WORKER", "single"), sys.argv[1] + "/weights.weights.h5"
with strategy_scope("none" if worker == "single" else "multiworker"):
    model = tiny_model(timesteps=20, seed=0)
    if worker == "single":
        for w in model.ema_network.weights:
            w.assign(w + np.random.default_rng(0).normal(0, 0.05, w.shape).astype("float32"))
        model.save_weights(weights)
    else:
        model.load_weights(weights)
    images, frames = model.generate_images(5, seed=3, batch_size=2, sampler="ddpm", num_steps=4, verbose=0,
                                           return_trajectory=True)
np.save(f"{sys.argv[1]}/images-{worker}.npy", np.concatenate([images[None], frames]))
"""


@pytest.mark.slow
@pytest.mark.parametrize("backend, worker_env", [("tensorflow", tf_config_env), ("jax", jax_env)])
def test_sampling_chunks_are_dealt_to_the_workers(tmp_path, backend, worker_env):
    """Two workers each make their chunks of a request; after the exchange both hold one process's images."""
    pytest.importorskip(backend)
    script = tmp_path / "sample.py"
    script.write_text(PREAMBLE + SAMPLE)
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", **backend_env(backend),
               PYTHONPATH=os.pathsep.join([str(ROOT), str(ROOT / "tests")]))
    env.pop("TF_CONFIG", None)
    subprocess.run([sys.executable, str(script), str(tmp_path)], env=env, check=True, timeout=LAUNCH_TIMEOUT)
    ports, processes = free_ports(2), []
    for index in range(2):
        environment = dict(env, WORKER=str(index), **worker_env(ports, index))
        processes.append(subprocess.Popen([sys.executable, str(script), str(tmp_path)], env=environment,
                                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    try:
        outputs = [p.communicate(timeout=LAUNCH_TIMEOUT)[0] for p in processes]
    finally:
        for p in processes:
            if p.poll() is None:
                p.kill()
    assert [p.returncode for p in processes] == [0, 0], [o[-3000:] for o in outputs]
    single = np.load(tmp_path / "images-single.npy")
    for index in range(2):
        np.testing.assert_array_equal(np.load(tmp_path / f"images-{index}.npy"), single)


@pytest.mark.slow
def test_sampling_chunks_are_dealt_to_two_devices():
    result = run_snippet("""
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    from ddpm_keras.inference import chunks
    from ddpm_keras.utils.distribute import get_strategy

    plain = tiny_model(timesteps=20, seed=0)
    for w in plain.ema_network.weights:
        w.assign(w + np.random.default_rng(0).normal(0, 0.05, w.shape).astype("float32"))
    strategy = get_strategy("mirrored", devices=["/cpu:0", "/cpu:1"])
    with strategy.scope():
        split = tiny_model(timesteps=20, seed=0)
    split.set_weights(plain.get_weights())
    seen = []
    original = chunks._device_scope
    chunks._device_scope = lambda device: (seen.append(device), original(device))[1]
    a = plain.generate_images(5, seed=3, batch_size=2, sampler="ddpm", num_steps=4, verbose=0)
    b = split.generate_images(5, seed=3, batch_size=2, sampler="ddpm", num_steps=4, verbose=0)
    emit(difference=float(np.abs(a - b).max()), devices=sorted(d for d in seen if d is not None))
    """)
    assert result["difference"] == 0.0
    # Chunks 0 and 2 on the first device, chunk 1 on the second.
    assert [d.split("/")[-1].lower() for d in result["devices"]] == ["device:cpu:0", "device:cpu:0", "device:cpu:1"]


def test_chunks_go_to_the_replicas_in_turn():
    from ddpm_keras.inference.chunks import ChunkPlan

    plan = ChunkPlan(7)
    plan.first_replica, plan.num_replicas, plan.devices = 2, 3, [None]  # worker 1 of 3, one device each
    assert plan.chunks_of(0) == [2, 5] and plan.num_local_chunks == 2
    plan.first_replica = 0
    assert plan.chunks_of(0) == [0, 3, 6]


def test_stall_watchdog_ends_a_process_that_makes_no_progress():
    """A step (here a callback) that blocks for longer than the timeout: exit status and message, within bounds."""
    code = PREAMBLE + """
import time
from ddpm_keras.training.callbacks import StallWatchdog

class Stuck(keras.callbacks.Callback):
    def on_train_batch_end(self, batch, logs=None):
        if batch == 1:
            print("stuck", flush=True)
            time.sleep(60)

model = tiny_model(timesteps=10)
model.fit(tiny_images(8), batch_size=2, epochs=1, verbose=0,
          callbacks=[Stuck(), StallWatchdog(2, "no progress: relaunch", 75)])
"""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", KERAS_BACKEND="tensorflow",
               PYTHONPATH=os.pathsep.join([str(ROOT), str(ROOT / "tests")]))
    process = subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    try:
        stdout, stderr = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
    assert "stuck" in stdout, stderr[-3000:]
    assert process.returncode == 75 and "no progress: relaunch" in stderr


SLURM_CPU = {
    "SLURM_PROCID": "3", "SLURM_STEP_NUM_TASKS": "4", "SLURM_STEP_NODELIST": "node[07-08]",
    "SLURM_STEP_TASKS_PER_NODE": "2(x2)", "DDPM_KERAS_PORT_BASE": "9100",
}


def test_slurm_step_gives_the_cluster(monkeypatch):
    from ddpm_keras.utils.distribute import cluster_resolver
    from ddpm_keras.utils.distribute import is_chief

    monkeypatch.delenv("TF_CONFIG", raising=False)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")  # no GPU: the resolver must list the tasks anyway
    monkeypatch.setenv("PATH", "/nonexistent")  # and no nvidia-smi to ask
    for name, value in SLURM_CPU.items():
        monkeypatch.setenv(name, value)
    resolver = cluster_resolver()
    assert resolver.cluster_spec().as_dict() == {
        "worker": ["node07:9100", "node07:9101", "node08:9100", "node08:9101"]
    }
    assert resolver.get_task_info() == ("worker", 3)
    assert os.environ["CUDA_VISIBLE_DEVICES"] == ""  # left alone on CPU nodes
    assert not is_chief()
    monkeypatch.setenv("SLURM_PROCID", "0")
    assert is_chief()


def test_slurm_step_shares_the_gpus_of_a_node(monkeypatch):
    from ddpm_keras.utils.distribute import slurm_cluster_resolver

    for name, value in {**SLURM_CPU, "SLURM_PROCID": "1", "CUDA_VISIBLE_DEVICES": "0,1,2,3"}.items():
        monkeypatch.setenv(name, value)
    resolver = slurm_cluster_resolver()
    assert resolver.cluster_spec().as_dict()["worker"][1] == "node07:9101"
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "2,3"  # task 1 of its node: the node's GPUs 2 and 3


def test_multiworker_without_a_cluster_says_how_to_give_one(monkeypatch):
    from ddpm_keras.utils.distribute import cluster_resolver

    monkeypatch.delenv("TF_CONFIG", raising=False)
    monkeypatch.delenv("SLURM_PROCID", raising=False)
    with pytest.raises(ValueError, match="set TF_CONFIG on every worker.*srun"):
        cluster_resolver()
    for name, value in SLURM_CPU.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("SLURM_STEP_NODELIST")
    with pytest.raises(ValueError, match="SLURM_STEP_NODELIST not set"):
        cluster_resolver()
