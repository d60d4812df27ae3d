"""The README's main job, run as a newcomer runs it: its first set-up command, on its real settings."""

import csv
import os
import re
import shlex
import subprocess
import sys

import pytest

from ddpm_keras.presets import get_preset

README = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "README.md")


def main_job_command():
    """The `ddpm-keras train ...` of the README's first set-up command, split into its arguments."""
    with open(README, encoding="utf-8") as f:
        text = f.read()
    setup = text[text.index("## Set-up"):]
    block = re.search(r"```bash\n(.*?)```", setup, re.S).group(1)
    first = block.splitlines()[0]
    command = first[first.rindex("&& ") + 3:] if "&& " in first else first
    words = shlex.split(command)
    assert words[:2] == ["ddpm-keras", "train"], f"the README's first command does not end with the main job: {first}"
    return words[2:]


def test_the_readme_names_a_main_job_of_a_known_preset():
    arguments = main_job_command()
    preset = get_preset(arguments[arguments.index("--preset") + 1])
    assert preset["training"]["dataset"] == "synthetic"  # no download


@pytest.mark.slow
def test_the_main_job_runs_on_its_real_settings_and_writes_its_grids(tmp_path):
    arguments = main_job_command()
    training = get_preset(arguments[arguments.index("--preset") + 1])["training"]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "MPLBACKEND": "Agg"}
    done = subprocess.run([sys.executable, "-m", "ddpm_keras", "train", *arguments], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=1500)
    assert done.returncode == 0, done.stderr[-3000:]
    (run_dir,) = [os.path.join(tmp_path, "checkpoints", name) for name in os.listdir(tmp_path / "checkpoints")]
    with open(os.path.join(run_dir, "log.csv"), newline="") as f:
        epochs = [int(row["epoch"]) for row in csv.DictReader(f)]
    assert epochs == list(range(1, training["epochs"] + 1))
    every = training["plot_every"]
    grids = sorted(os.listdir(os.path.join(run_dir, "samples")))
    expected = [f"epoch_{epoch:04d}.png" for epoch in range(every, training["epochs"] + 1, every)]
    assert [g for g in grids if g.startswith("epoch_")] == expected
    assert os.path.getsize(os.path.join(run_dir, "model.keras")) > 0
