"""Files the toolkit writes: atomically, only over files it wrote itself, and with one-line errors.

Every output of ddpm_keras carries a mark of its writer (a PNG text chunk,
a GIF comment, a JSON key, a `.keras` file's model class, a SavedModel's
metadata file), so that a later write can tell its own files from a
user's: it replaces the former and refuses the latter unless asked to
(`overwrite=True`, `--overwrite` on the command line). Nothing here ever
deletes or moves a file it did not create.
"""

import contextlib
import errno
import json
import os
import re
import tempfile
import zipfile

WRITER = "ddpm_keras"
# The PNG text key and GIF comment that mark an image written by ddpm_keras.
IMAGE_MARK_KEY = "Software"
# The JSON key that marks a report written by ddpm_keras.
JSON_MARK_KEY = "written_by"
# Temporary files of atomic writes start with this prefix and end with the target's name.
TMP_PREFIX = ".tmp-"


class OutputExistsError(ValueError):
    """An output path names something ddpm_keras did not write: it is left alone."""


def tmp_path_for(path):
    """The temporary file beside `path` that `atomic_write` writes first (`.tmp-PID-NAME`)."""
    directory, name = os.path.split(os.fspath(path))
    return os.path.join(directory, f"{TMP_PREFIX}{os.getpid()}-{name}")


def atomic_write(path, write, mode="wb"):
    """Writes `path` through a temporary file beside it, flushed to disk, and a rename.

    A reader, or a kill at any moment, sees either the previous file or the
    new one whole; the temporary is removed when writing fails (a full disk
    included) and the error raised.

    Args:
        path: String, the file to write; its folder is created if missing.
        write: Callable taking the open temporary file and writing into it,
            or taking its path when `mode` is `None` (for writers that open
            the file themselves, such as `model.save`).
        mode: `"wb"`, `"w"` or `None`. Defaults to `"wb"`.

    Returns:
        `path`.
    """
    path = os.fspath(path)
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = tmp_path_for(path)
    try:
        if mode is None:
            write(tmp)
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
        else:
            with open(tmp, mode, **({"newline": ""} if "b" not in mode else {})) as f:
                write(f)
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.lexists(tmp):
            os.remove(tmp)
    return path


def write_json(path, data):
    """Writes `data` as indented JSON, atomically, marked as written by ddpm_keras."""
    data = {JSON_MARK_KEY: WRITER, **data}
    return atomic_write(path, lambda f: json.dump(data, f, indent=2, default=_json_default), mode="w")


def _json_default(value):
    import numpy as np

    if isinstance(value, np.generic):
        return value.item()
    return str(value)


def remove_orphan_temporaries(folder, name):
    """Removes `.tmp-PID-NAME` files in `folder` left by a killed write of `name`; returns their names.

    Only temporaries of processes no longer running are removed, so a
    write under way in another process is left alone.
    """
    removed = []
    try:
        entries = os.listdir(folder)
    except FileNotFoundError:
        return removed
    for entry in entries:
        pid = _orphan_pid(entry, name)
        if pid is not None and not _process_alive(pid):
            path = os.path.join(folder, entry)
            if os.path.isfile(path) and not os.path.islink(path):
                os.remove(path)
                removed.append(entry)
    return sorted(removed)


def _orphan_pid(entry, name):
    if not (entry.startswith(TMP_PREFIX) and entry.endswith("-" + name)):
        return None
    pid = entry[len(TMP_PREFIX) : -len(name) - 1]
    return int(pid) if pid.isdigit() else None


def _process_alive(pid):
    if pid == os.getpid():
        return False  # this process writes nothing yet: a leftover of an earlier process of the same id
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# ----------------------------------------------------------------------------- what ddpm_keras wrote


def slug(text, keep=""):
    """`text` as a file name: each run of characters other than letters, digits, `_`, `.` and `keep` becomes `_`."""
    return re.sub(rf"[^A-Za-z0-9_.{re.escape(keep)}]+", "_", str(text))


def written_by_toolkit(path):
    """Whether the file or folder at `path` carries ddpm_keras's mark (by its kind, from its name)."""
    path = os.fspath(path)
    lower = path.lower()
    try:
        if os.path.isdir(path):
            return is_export_dir(path)
        if lower.endswith((".png", ".gif")):
            return _image_marked(path)
        if lower.endswith(".json"):
            with open(path) as f:
                data = json.load(f)
            return isinstance(data, dict) and data.get(JSON_MARK_KEY) == WRITER
        if lower.endswith(".keras"):
            return is_diffusion_model_file(path)
    except (OSError, ValueError, zipfile.BadZipFile):
        return False
    return False


def _image_marked(path):
    from PIL import Image

    with Image.open(path) as picture:
        marks = (picture.info.get(IMAGE_MARK_KEY), picture.info.get("comment"))
    return any(mark in (WRITER, WRITER.encode()) for mark in marks)


def is_diffusion_model_file(path):
    """Whether `path` is a `.keras` archive of a ddpm_keras `DiffusionModel`."""
    with zipfile.ZipFile(path) as archive:
        config = json.loads(archive.read("config.json"))
    return str(config.get("module", "")).startswith("ddpm_keras") or config.get("class_name") == "DiffusionModel"


EXPORT_METADATA_FILE = os.path.join("assets.extra", "ddpm_keras.json")
# What tf.saved_model.save writes, beside the metadata file: an export holds these and nothing else.
EXPORT_ENTRIES = {"saved_model.pb", "variables", "assets", "assets.extra", "fingerprint.pb"}


def is_export_dir(path):
    """Whether the folder `path` holds a SavedModel exported by ddpm_keras, and nothing else."""
    return (os.path.isfile(os.path.join(path, EXPORT_METADATA_FILE))
            and set(os.listdir(path)) <= EXPORT_ENTRIES
            and set(os.listdir(os.path.join(path, "assets.extra"))) <= {"ddpm_keras.json"})


def check_output(path, option, overwrite=False, kind="file"):
    """Checks that `path` can be written before any long computation; returns it as a string.

    The folder it goes into is created if missing and must be writable; an
    existing `path` must be of the `kind` asked for and written by
    ddpm_keras, or `overwrite` must say that it may be replaced.

    Args:
        path: String, the output path.
        option: String, how the user named it (`"--out"`, `"out_path"`), for
            the message.
        overwrite: Boolean, replace an existing file that ddpm_keras did
            not write. Defaults to `False`.
        kind: `"file"` or `"dir"`. Defaults to `"file"`.

    Raises:
        OutputExistsError: `path` exists and ddpm_keras did not write it (and
            not `overwrite`), or it is of the other kind.
        OSError: The folder cannot be created or written.
    """
    path = os.fspath(path)
    if os.path.lexists(path):
        is_dir = os.path.isdir(path) and not os.path.islink(path)
        if kind == "file" and is_dir:
            raise OutputExistsError(f"{option} {path} is a folder: name a file in it instead.")
        if kind == "dir" and not is_dir:
            raise OutputExistsError(f"{option} {path} is a file: name a new folder instead.")
        if not overwrite and not (kind == "dir" and not os.listdir(path)) and not written_by_toolkit(path):
            what = ("holds files that are not an export of ddpm_keras" if kind == "dir"
                    else "is a file ddpm_keras did not write")
            raise OutputExistsError(
                f"{option} {path} {what}: choose a new path, or pass "
                f"{'--overwrite' if option.startswith('--') else 'overwrite=True'} to replace it."
            )
    check_writable_folder(os.path.dirname(os.path.abspath(path)))
    return path


def check_writable_folder(folder):
    """Creates `folder` if missing and checks that a file can be written in it (an `OSError` otherwise)."""
    os.makedirs(folder, exist_ok=True)
    # Permissions alone do not tell (root, read-only mounts): write a probe and remove it.
    with tempfile.NamedTemporaryFile(dir=folder, prefix=TMP_PREFIX + "probe-"):
        pass
    return folder


# ----------------------------------------------------------------------------- one-line messages

_OS_ERRORS = {
    errno.ENOSPC: "no space left on the device",
    errno.EDQUOT: "the disk quota is exceeded",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.EROFS: "the file system is read-only",
    errno.ENOTDIR: "a part of the path is a file, not a folder",
    errno.EISDIR: "it is a folder",
    errno.EEXIST: "it exists",
    errno.ENAMETOOLONG: "the name is too long",
}


def describe_os_error(error):
    """An `OSError` as one line: what happened and to which path, without a traceback."""
    reason = _OS_ERRORS.get(error.errno) or error.strerror or str(error)
    where = error.filename if error.filename is not None else None
    if where is not None and TMP_PREFIX in os.path.basename(str(where)):
        # The temporary of an atomic write: name the file it was to become.
        name = os.path.basename(str(where)).split("-", 2)[-1]
        where = os.path.join(os.path.dirname(str(where)), name)
    return f"{reason}: {where}" if where else reason


@contextlib.contextmanager
def replacing_dir(path, overwrite=False, option="path"):
    """Yields a new folder beside `path`; on success it replaces `path` (see `check_output`).

    An existing `path` is replaced only when it holds a previous export of
    ddpm_keras and nothing else, or with `overwrite`; the folder it is
    moved to is a fresh temporary name, so no sibling is ever touched.
    """
    path = os.path.abspath(os.fspath(path))
    check_output(path, option, overwrite=overwrite, kind="dir")
    parent, name = os.path.split(path)
    staging = tempfile.mkdtemp(prefix=f"{TMP_PREFIX}{name}-", dir=parent)
    os.chmod(staging, 0o777 & ~_umask())
    try:
        yield staging
        if os.path.isdir(path):
            old = tempfile.mkdtemp(prefix=f"{TMP_PREFIX}{name}-old-", dir=parent)
            os.rmdir(old)
            os.replace(path, old)
            os.replace(staging, path)
            _remove_tree(old)
        else:
            os.replace(staging, path)
    finally:
        if os.path.isdir(staging):
            _remove_tree(staging)


def _remove_tree(path):
    import shutil

    shutil.rmtree(path, ignore_errors=True)


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask
