"""Seconds per training step with two worker processes against one, at the same global batch, and the time a lost worker takes to stop the other.

Usage:
    python bench/multiworker.py [--img-size 32] [--batch-size 16] [--steps 20] [--backends tensorflow,jax]
                                [--worker-timeout 20] [--repeats 3]

Runs `ddpm-keras train --preset tiny --dataset synthetic` as users launch
it: one process, then two processes on 127.0.0.1 (`TF_CONFIG`, or Keras's
`KERAS_DISTRIBUTION_*` variables on JAX), for two epochs of `--steps`
steps. The step time is the second epoch's (the first compiles), as `fit`
prints it. Then, on TensorFlow, two workers train for a longer epoch and
worker 1 is killed (SIGKILL) or frozen (SIGSTOP: a machine that stops
answering without closing its connections) in mid-epoch, with the default
`--worker-timeout` (TensorFlow's own detection) and a short one (the
watchdog's bound); the table gives the seconds until worker 0 exits, and
its exit status (75: relaunch with `--resume`).

On one machine the two workers share its cores and talk over loopback,
so the ratio measures the cost of the collectives and of splitting, not
the speed-up of a real second machine.
"""

import argparse
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _ports(count):
    ports = []
    for _ in range(count):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            ports.append(probe.getsockname()[1])
    return ports


def _worker_env(backend, ports, index):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", MPLBACKEND="Agg", KERAS_BACKEND=backend)
    env.pop("TF_CONFIG", None)
    if len(ports) == 1:
        return env
    if backend == "jax":
        env.update(KERAS_DISTRIBUTION_JOB_ADDRESSES=f"127.0.0.1:{ports[0]}",
                   KERAS_DISTRIBUTION_NUM_PROCESSES=str(len(ports)), KERAS_DISTRIBUTION_PROCESS_ID=str(index))
    else:
        cluster = {"worker": [f"127.0.0.1:{port}" for port in ports]}
        env["TF_CONFIG"] = json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})
    return env


def _launch(backend, workers, args, out):
    ports = _ports(workers)
    command = [sys.executable, "-m", "ddpm_keras", "train", "--preset", "tiny", "--dataset", "synthetic",
               "--plot-every", "0", "--out", out, *args]
    if workers > 1:
        command += ["--strategy", "multiworker"]
    return [
        subprocess.Popen(command, env=_worker_env(backend, ports, i), cwd=ROOT, text=True,
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        for i in range(workers)
    ]


def step_seconds(backend, workers, options, tmp):
    args = ["--img-size", str(options.img_size), "--batch-size", str(options.batch_size),
            "--steps-per-epoch", str(options.steps), "--epochs", "2"]
    processes = _launch(backend, workers, args, os.path.join(tmp, f"{backend}-{workers}"))
    outputs = [p.communicate(timeout=1200)[0] for p in processes]
    if any(p.returncode for p in processes):
        raise RuntimeError(f"{backend}, {workers} workers failed:\n" + outputs[0][-3000:])
    times = re.findall(r"- ([0-9.]+)(m?s)/step", outputs[0])
    value, unit = times[-1]
    return float(value) / (1000.0 if unit == "ms" else 1.0)


def time_to_stop(signal_number, options, tmp, worker_timeout=None):
    args = ["--img-size", str(options.img_size), "--batch-size", str(options.batch_size),
            "--steps-per-epoch", "400", "--epochs", "2"]
    if worker_timeout is not None:
        args += ["--worker-timeout", str(worker_timeout)]
    processes = _launch("tensorflow", 2, args, os.path.join(tempfile.mkdtemp(dir=tmp), "run"))
    lines = []
    try:
        for line in processes[1].stdout:  # worker 1 reaches its first logged epoch
            lines.append(line)
            if "epoch 1: trained on" in line:
                break
        time.sleep(1.0)
        processes[1].send_signal(signal_number)
        start = time.time()
        code = processes[0].wait(timeout=600)
        return time.time() - start, code
    finally:
        for p in processes:
            if p.poll() is None:
                p.kill()
                p.wait()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--img-size", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--backends", default="tensorflow,jax")
    parser.add_argument("--worker-timeout", type=int, default=20, help="the bound set in the second rows")
    parser.add_argument("--repeats", type=int, default=3, help="launches per lost-worker row")
    options = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        print(f"tiny preset, {options.img_size}x{options.img_size}, global batch {options.batch_size}, "
              f"second epoch of {options.steps} steps")
        print("| backend | 1 process s/step | 2 processes s/step | ratio |")
        print("|---|---|---|---|")
        for backend in options.backends.split(","):
            one = step_seconds(backend, 1, options, tmp)
            two = step_seconds(backend, 2, options, tmp)
            print(f"| {backend} | {one:.3f} | {two:.3f} | {two / one:.2f}x |", flush=True)
        print(f"\n| worker 1 | --worker-timeout | seconds until worker 0 exits ({options.repeats} runs) | exit status |")
        print("|---|---|---|---|")
        for name, number in (("killed (SIGKILL)", signal.SIGKILL), ("frozen (SIGSTOP)", signal.SIGSTOP)):
            for timeout in (None, options.worker_timeout):
                runs = [time_to_stop(number, options, tmp, timeout) for _ in range(options.repeats)]
                seconds = ", ".join(f"{s:.1f}" for s, _ in runs)
                codes = sorted({code for _, code in runs})
                print(f"| {name} | {timeout or 'default (600)'} | {seconds} | {codes} |", flush=True)


if __name__ == "__main__":
    main()
