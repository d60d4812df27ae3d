"""Bad inputs and faults: each is one line and an exit status, and no file of the user's changes.

Each case of `CASES` runs `ddpm-keras` in this process against copies of a
trained run and of a folder of the user's, hashes every file before and
after, and checks the exit status, that the last line of standard error
names the value, and that no traceback is printed. Real processes (some
of the cases, and a diverging loss's exit status) are in the slow run; a
full disk and a read-only folder (tmpfs mounts, where the machine allows
them) follow.
"""

import contextlib
import hashlib
import json
import os
import shutil
import stat
import subprocess
import sys
import zipfile

import keras
import numpy as np
import pytest

from ddpm_keras import DiffusionModel
from ddpm_keras.cli import main
from ddpm_keras.training.callbacks import RunCheckpoint
from ddpm_keras.training.finite import NonFiniteError
from ddpm_keras.training.finite import NonFiniteGuard
from ddpm_keras.utils import files

TINY = ["--preset", "tiny", "--dataset", "synthetic", "--img-size", "16", "--steps-per-epoch", "2",
        "--batch-size", "4", "--plot-every", "0"]
FAST_SAMPLE = ["--sampler", "ddim", "--steps", "2", "--num-images", "1"]


def run_cli(argv, capsys):
    """`ddpm-keras ARGV` in this process: `(status, stdout, stderr)`; argparse's exits included."""
    capsys.readouterr()
    try:
        status = main(argv)
    except SystemExit as exit_:
        status = exit_.code
    out, err = capsys.readouterr()
    return status, out, err


def tree_hashes(*folders):
    """Every file under `folders` (and the folders themselves) -> the SHA-256 of its bytes."""
    hashes = {}
    for folder in folders:
        for root, _, names in os.walk(folder):
            hashes[root] = "dir"
            for name in names:
                path = os.path.join(root, name)
                with open(path, "rb") as f:
                    hashes[path] = hashlib.sha256(f.read()).hexdigest()
    return hashes


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """A 16-px `tiny` run of one epoch, and a NaN copy of its model."""
    folder = tmp_path_factory.mktemp("trained")
    run = str(folder / "run")
    assert main(["train", *TINY, "--epochs", "1", "--out", run]) == 0
    model = keras.saving.load_model(os.path.join(run, "model.keras"))
    weight = model.ema_network.weights[0]
    weight.assign(np.full(weight.shape, np.nan, "float32"))
    model.save(str(folder / "nan.keras"))
    return run


@pytest.fixture
def world(trained_run, tmp_path):
    """A copy of the trained run, a folder of the user's beside a sibling, and model files good and bad."""
    run = str(tmp_path / "run")
    shutil.copytree(trained_run, run)
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "thesis.txt").write_text("two years of work")
    (tmp_path / "precious.old").mkdir()
    (tmp_path / "precious.old" / "keep.txt").write_text("a sibling")
    (tmp_path / "notes.png").write_bytes(b"not a grid of ddpm_keras")
    (tmp_path / "a_file").write_text("a file, not a folder")
    (tmp_path / "stale").mkdir()
    (tmp_path / "stale" / "log.csv").write_text("epoch,loss\n1,0.5\n")
    with open(os.path.join(run, "model.keras"), "rb") as f:
        (tmp_path / "truncated.keras").write_bytes(f.read()[:50_000])
    shutil.copy(os.path.join(os.path.dirname(trained_run), "nan.keras"), tmp_path / "nan.keras")
    shutil.copytree(run, tmp_path / "nanrun")
    shutil.copy(tmp_path / "nan.keras", tmp_path / "nanrun" / "model.keras")
    inputs = keras.Input((2,))
    keras.Model(inputs, keras.layers.Lambda(lambda x: x * 2)(inputs)).save(str(tmp_path / "lambda.keras"))
    (tmp_path / "weights.h5").write_bytes(b"not weights")
    with zipfile.ZipFile(tmp_path / "linked.zip", "w") as archive:
        link = zipfile.ZipInfo("ckpt.index")
        link.external_attr = (stat.S_IFLNK | 0o777) << 16
        archive.writestr(link, "/etc/passwd")
    return tmp_path


# (argv with {tmp} for the test's folder, exit status, words the last line must hold)
CASES = {
    # Never delete what the toolkit did not write.
    "export over a run directory": (["export", "--checkpoint", "{tmp}/run", "--out", "{tmp}/run"], 2,
                                    ["--out", "run", "--overwrite"]),
    "export over a user's folder": (["export", "--checkpoint", "{tmp}/run", "--out", "{tmp}/precious"], 2,
                                    ["precious", "not an export of ddpm_keras", "--overwrite"]),
    "export to a file": (["export", "--checkpoint", "{tmp}/run", "--out", "{tmp}/a_file"], 2, ["a_file is a file"]),
    "sample over a user's PNG": (["sample", "--checkpoint", "{tmp}/run", "--out", "{tmp}/notes.png", *FAST_SAMPLE],
                                 2, ["notes.png", "--overwrite"]),
    "evaluate --out a folder": (["evaluate", "--checkpoint", "{tmp}/run", "--out", "{tmp}/precious"], 2,
                                ["--out", ".json"]),
    "import over a user's file": (["import-keras-io", "{tmp}/linked.zip", "--out", "{tmp}/lambda.keras"], 2,
                                  ["lambda.keras", "--overwrite"]),
    # Numbers: finite, in range, named as written.
    "learning rate nan": (["train", *TINY, "--learning-rate", "nan", "--out", "{tmp}/new"], 2,
                          ["--learning-rate", "> 0", "nan"]),
    "learning rate -1": (["train", *TINY, "--learning-rate", "-1", "--out", "{tmp}/new"], 2, ["--learning-rate", "-1"]),
    "learning rate 0": (["train", *TINY, "--learning-rate", "0", "--out", "{tmp}/new"], 2, ["--learning-rate", "0"]),
    "seed -1": (["train", *TINY, "--seed", "-1", "--out", "{tmp}/new"], 2, ["--seed", "-1"]),
    "seed 2**31": (["sample", "--checkpoint", "{tmp}/run", "--out", "{tmp}/s.png", "--seed", "2147483648"], 2,
                   ["--seed", "2147483648"]),
    "guidance scale inf": (["sample", "--checkpoint", "{tmp}/run", "--out", "{tmp}/s.png", "--guidance-scale",
                            "inf"], 2, ["--guidance-scale", "finite", "inf"]),
    "guidance sweep -1": (["sample", "--checkpoint", "{tmp}/run", "--out", "{tmp}/s.png", "--guidance-sweep",
                           "1,-1"], 2, ["--guidance-sweep", "-1"]),
    "eta 2": (["sample", "--checkpoint", "{tmp}/run", "--out", "{tmp}/s.png", "--eta", "2"], 2, ["--eta", "[0, 1]"]),
    "cond drop prob 1": (["train", *TINY, "--class-conditional", "--cond-drop-prob", "1", "--out", "{tmp}/new"], 2,
                         ["--cond-drop-prob", "[0, 1)"]),
    "steps above T": (["sample", "--checkpoint", "{tmp}/run", "--out", "{tmp}/s.png", "--steps", "5000"], 2,
                      ["--steps 5000", "1000 timesteps"]),
    "interpolate steps above T": (["interpolate", "--checkpoint", "{tmp}/run", "--out", "{tmp}/s.png", "--steps",
                                   "1001"], 2, ["--steps 1001"]),
    # Resume honours or refuses.
    "resume at another image size": (["train", *TINY[:4], "--img-size", "32", "--epochs", "2", "--resume", "--out",
                                      "{tmp}/run"], 2, ["--img-size 32", "16x16"]),
    "resume with another preset": (["train", "--preset", "quick", "--epochs", "2", "--resume", "--out", "{tmp}/run"],
                                   2, ["--preset quick", "'tiny'"]),
    "resume in another precision": (["train", "--precision", "mixed_bfloat16", "--epochs", "2", "--resume", "--out",
                                     "{tmp}/run"], 2, ["--precision mixed_bfloat16", "'float32'"]),
    "resume of a NaN model": (["train", "--epochs", "2", "--resume", "--out", "{tmp}/nanrun"], 2,
                              ["nanrun/model.keras", "NaN or Inf"]),
    # A fresh run never mixes with another's files.
    "fresh run into an old log": (["train", *TINY, "--epochs", "1", "--out", "{tmp}/stale"], 2,
                                  ["stale", "log.csv", "--resume"]),
    "fresh run into a run": (["train", *TINY, "--epochs", "1", "--out", "{tmp}/run"], 2, ["model.keras", "--resume"]),
    "train --out a file": (["train", *TINY, "--epochs", "1", "--out", "{tmp}/a_file"], 2, ["a_file is a file"]),
    # Files that cannot be used.
    "truncated checkpoint": (["sample", "--checkpoint", "{tmp}/truncated.keras", "--out", "{tmp}/s.png"], 2,
                             ["truncated.keras", "corrupt or truncated", "50,000 bytes"]),
    "safe mode": (["sample", "--checkpoint", "{tmp}/lambda.keras", "--out", "{tmp}/s.png"], 2,
                  ["lambda.keras", "safe mode", "safe_mode=False"]),
    "NaN weights": (["sample", "--checkpoint", "{tmp}/nan.keras", "--out", "{tmp}/s.png"], 2,
                    ["nan.keras", "NaN or Inf", "1 variable(s)"]),
    "NaN weights to export": (["export", "--checkpoint", "{tmp}/nan.keras", "--out", "{tmp}/gen"], 2, ["nan.keras"]),
    "bad inception weights": (["evaluate", "--checkpoint", "{tmp}/run", "--metrics", "fid", "--num-samples", "2",
                               "--inception-weights", "{tmp}/weights.h5"], 2, ["weights.h5", "InceptionV3"]),
    "zip with a symlink": (["import-keras-io", "{tmp}/linked.zip", "--out", "{tmp}/imported.keras"], 2,
                           ["linked.zip", "symbolic link", "ckpt.index"]),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_one_line_and_changes_no_file(case, world, capsys):
    argv, status, words = CASES[case]
    argv = [arg.replace("{tmp}", str(world)) for arg in argv]
    before = tree_hashes(world)
    code, out, err = run_cli(argv, capsys)
    assert code == status, (case, out, err)
    last = err.strip().splitlines()[-1]
    assert "Traceback" not in err and last.startswith("ddpm-keras"), err
    for word in words:
        assert word in last, (word, last)
    assert tree_hashes(world) == before, case


@pytest.mark.slow
@pytest.mark.parametrize("case", ["safe mode", "truncated checkpoint", "export over a user's folder"])
def test_a_real_process_exits_2_without_a_traceback(case, world):
    argv, status, words = CASES[case]
    before = tree_hashes(world)
    process = subprocess.run(
        [sys.executable, "-m", "ddpm_keras", *[arg.replace("{tmp}", str(world)) for arg in argv]],
        capture_output=True, text=True, timeout=120, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
    )
    assert process.returncode == status and "Traceback" not in process.stderr, process.stderr[-2000:]
    assert all(word in process.stderr.strip().splitlines()[-1] for word in words)
    assert tree_hashes(world) == before


def test_an_export_replaces_only_a_previous_export(world, capsys):
    out = str(world / "generator")
    argv = ["export", "--checkpoint", str(world / "run"), "--out", out, "--sampler", "ddim", "--steps", "2"]
    assert run_cli(argv, capsys)[0] == 0
    assert oct(os.stat(out).st_mode & 0o777) == oct(0o777 & ~_umask())  # not mkdtemp's 0700
    first = tree_hashes(out)
    siblings = tree_hashes(world / "precious", world / "precious.old", world / "run")
    assert run_cli(argv, capsys)[0] == 0  # a previous export is replaced
    assert set(tree_hashes(out)) == set(first)
    # Anything added to it makes it a folder of the user's.
    (world / "generator" / "README.txt").write_text("notes")
    code, _, err = run_cli(argv, capsys)
    assert code == 2 and "--overwrite" in err and os.path.exists(world / "generator" / "README.txt")
    # --overwrite replaces that folder and nothing beside it.
    assert run_cli([*argv, "--overwrite"], capsys)[0] == 0
    assert not os.path.exists(world / "generator" / "README.txt")
    assert tree_hashes(world / "precious", world / "precious.old", world / "run") == siblings
    assert not [name for name in os.listdir(world) if name.startswith(files.TMP_PREFIX)]


def test_sample_replaces_its_own_grid_and_overwrite_a_users(world, capsys):
    out = str(world / "notes.png")  # a user's PNG, replaced only with --overwrite
    argv = ["sample", "--checkpoint", str(world / "run"), "--out", out, *FAST_SAMPLE]
    assert run_cli([*argv, "--overwrite"], capsys)[0] == 0 and files.written_by_toolkit(out)
    first = tree_hashes(world)[out]
    assert run_cli([*argv, "--seed", "1"], capsys)[0] == 0  # now its own grid: replaced without it
    assert files.written_by_toolkit(out) and tree_hashes(world)[out] != first


def test_resume_honours_what_may_change_reconciles_the_log_and_removes_orphan_temporaries(world, capsys):
    run = str(world / "run")
    orphan = os.path.join(run, ".tmp-999999999-model.keras")  # no such process
    shutil.copy(os.path.join(run, "model.keras"), orphan)
    with open(os.path.join(run, "log.csv")) as f:
        header = f.readline()
    with open(os.path.join(run, "log.csv"), "w") as f:  # the row of epoch 1 lost, one of a later epoch kept
        f.write(header + "7,0.5,1.0\n")
    code, out, _ = run_cli(["train", "--epochs", "2", "--learning-rate", "5e-4", "--resume", "--out", run], capsys)
    assert code == 0, out
    assert "Removed 1 temporary file" in out and not os.path.exists(orphan)
    assert "no row for epoch(s) 1 " in out
    with open(os.path.join(run, "log.csv")) as f:
        assert [line.split(",")[0] for line in f.read().splitlines()[1:]] == ["2"]
    model = keras.saving.load_model(os.path.join(run, "model.keras"))
    assert int(model.epoch) == 2 and model.image_shape == (16, 16, 3)  # the run's preset, size and data
    assert np.isclose(float(keras.ops.convert_to_numpy(model.optimizer.learning_rate)), 5e-4)
    with open(os.path.join(run, "run.json")) as f:
        record = json.load(f)
    assert record["preset"] == "tiny" and record["dataset"] == "synthetic" and record["learning_rate"] == 5e-4
    launches = record["launches"]
    assert [launch["resume"] for launch in launches] == [False, True]
    assert [launch["learning_rate"] for launch in launches] == [1e-3, 5e-4]
    assert launches[1]["from_epoch"] == 1 and launches[1]["epochs"] == 2


def test_progress_is_plain_lines_where_the_output_is_not_a_terminal(world, capsys):
    out = str(world / "grid.png")
    code, printed, _ = run_cli(["sample", "--checkpoint", str(world / "run"), "--out", out, "--sampler", "ddim",
                                "--steps", "120", "--num-images", "1"], capsys)
    assert code == 0
    assert "\x1b[" not in printed and "\r" not in printed
    assert "120/120 steps" in printed


# ----------------------------------------------------------------------------- a loss that diverges


def _diverging_data(nan_batch=None):
    """32 tiny images whose batch `nan_batch` (of 8 images) holds a NaN: the loss is NaN at that step."""
    from conftest import tiny_images

    images = tiny_images(32)
    if nan_batch is not None:
        images[nan_batch * 8] = np.nan
    return images


def test_the_nan_guard_keeps_the_finite_checkpoint_bit_for_bit(tmp_path):
    from conftest import tiny_model

    model = tiny_model()
    run = str(tmp_path / "run")
    model.fit(_diverging_data(), batch_size=8, epochs=1, verbose=0,
              callbacks=[NonFiniteGuard(), RunCheckpoint(run)], shuffle=False)
    before = tree_hashes(run)
    with pytest.raises(NonFiniteError, match=r"the loss became nan in epoch 2, step 3") as info:
        model.fit(_diverging_data(nan_batch=2), batch_size=8, epochs=3, initial_epoch=1, verbose=0,
                  callbacks=[NonFiniteGuard(), RunCheckpoint(run)], shuffle=False)
    assert (info.value.epoch, info.value.step) == (2, 3)
    assert tree_hashes(run) == before
    assert int(keras.saving.load_model(os.path.join(run, "model.keras")).epoch) == 1


def test_a_checkpoint_refuses_non_finite_weights_without_the_guard(tmp_path):
    from conftest import tiny_model

    model = tiny_model()
    run = str(tmp_path / "run")
    model.fit(_diverging_data(), batch_size=8, epochs=1, verbose=0, callbacks=[RunCheckpoint(run)])
    before = tree_hashes(run)
    with pytest.raises(NonFiniteError, match="weights became NaN or Inf in epoch 2"):
        model.fit(_diverging_data(nan_batch=1), batch_size=8, epochs=2, initial_epoch=1, verbose=0,
                  callbacks=[RunCheckpoint(run)], shuffle=False)
    assert tree_hashes(run) == before


GUARD_SNIPPET = """
import hashlib
from ddpm_keras.training.callbacks import RunCheckpoint
from ddpm_keras.training.finite import NonFiniteError, NonFiniteGuard
images = tiny_images(32)
model = tiny_model()
run = sys.argv[1] if len(sys.argv) > 1 else os.environ["RUN_DIR"]
model.fit(images, batch_size=8, epochs=1, verbose=0, callbacks=[NonFiniteGuard(), RunCheckpoint(run)], shuffle=False)
digest = lambda: hashlib.sha256(open(os.path.join(run, "model.keras"), "rb").read()).hexdigest()
before = digest()
images[16] = np.nan
try:
    model.fit(images, batch_size=8, epochs=2, initial_epoch=1, verbose=0,
              callbacks=[NonFiniteGuard(), RunCheckpoint(run)], shuffle=False)
    emit(raised=None)
except NonFiniteError as error:
    emit(raised=str(error), epoch=error.epoch, step=error.step, unchanged=digest() == before)
"""


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_the_nan_guard_on_other_backends(backend, tmp_path):
    from subprocess_json import run_snippet
    from subprocess_json import skip_unless_installed

    skip_unless_installed(backend)
    result = run_snippet(GUARD_SNIPPET, backend=backend, env={"RUN_DIR": str(tmp_path)})
    assert (result["epoch"], result["step"], result["unchanged"]) == (2, 3, True), result


@pytest.mark.slow
def test_a_diverging_run_exits_3_and_keeps_its_last_finite_epoch(trained_run, tmp_path):
    run = str(tmp_path / "run")
    shutil.copytree(trained_run, run)
    with open(os.path.join(run, "model.keras"), "rb") as f:
        before = hashlib.sha256(f.read()).hexdigest()
    process = subprocess.run(
        [sys.executable, "-m", "ddpm_keras", "train", "--epochs", "3", "--learning-rate", "1e6", "--resume",
         "--out", run], capture_output=True, text=True, timeout=300,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
    )
    assert process.returncode == 3, process.stderr[-2000:]
    assert "Traceback" not in process.stderr
    last = process.stderr.strip().splitlines()[-1]
    assert "the loss became nan in epoch 2" in last and "epoch 1, is still in" in last and "learning rate" in last
    with open(os.path.join(run, "model.keras"), "rb") as f:
        assert hashlib.sha256(f.read()).hexdigest() == before
    assert [line.split(",")[0] for line in open(os.path.join(run, "log.csv")).read().splitlines()[1:]] == ["1"]


# ----------------------------------------------------------------------------- full and read-only disks


@contextlib.contextmanager
def tmpfs(path, size, read_only=False):
    """A tmpfs of `size` mounted at `path`, or a skip saying why it cannot be (not root, not Linux)."""
    os.makedirs(path, exist_ok=True)
    options = f"size={size}" + (",ro" if read_only else "")
    if sys.platform != "linux" or os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs root on Linux")
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True,
                             text=True)
    if mounted.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def test_a_full_disk_keeps_the_previous_checkpoint(trained_run, tmp_path, capsys):
    size = os.path.getsize(os.path.join(trained_run, "model.keras"))
    with tmpfs(tmp_path / "disk", f"{size * 3 // 2 // 1024}k") as disk:
        run = str(disk / "run")
        shutil.copytree(trained_run, run)
        before = tree_hashes(run)
        code, _, err = run_cli(["train", "--epochs", "2", "--resume", "--out", run], capsys)
        assert code == 2, err
        last = err.strip().splitlines()[-1]
        assert "no space left on the device" in last and "model.keras" in last and "epoch 1" in last, last
        assert "Traceback" not in err
        assert not [name for name in os.listdir(run) if name.startswith(files.TMP_PREFIX)]
        assert {path: digest for path, digest in tree_hashes(run).items() if "model.keras" in path} == {
            path: digest for path, digest in before.items() if "model.keras" in path}
        assert int(keras.saving.load_model(os.path.join(run, "model.keras")).epoch) == 1


def test_a_read_only_folder_fails_before_any_computation(trained_run, tmp_path, capsys):
    with tmpfs(tmp_path / "ro", "1m", read_only=True) as folder:
        cases = [
            ["train", *TINY, "--epochs", "1", "--out", str(folder / "run")],
            ["sample", "--checkpoint", trained_run, "--out", str(folder / "grid.png")],
            ["evaluate", "--checkpoint", trained_run, "--out", str(folder / "metrics.json")],
        ]
        for argv in cases:
            code, out, err = run_cli(argv, capsys)
            assert code == 2 and "read-only" in err.strip().splitlines()[-1], (argv, err)
            assert "Traceback" not in err and "Training" not in out and "Generating" not in out


def test_diffusion_model_files_are_recognised_as_the_toolkits(trained_run, world):
    assert files.written_by_toolkit(os.path.join(trained_run, "model.keras"))
    assert not files.written_by_toolkit(world / "lambda.keras")
    assert isinstance(keras.saving.load_model(os.path.join(trained_run, "model.keras")), DiffusionModel)


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask
