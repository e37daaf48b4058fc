"""Checkpoint files: archives of plain numpy arrays, written atomically, read without pickle.

Shared by model.Model (.npz) and the autoencoder (its seed-compatible .zip):

    atomic_write(path, write)      write(f) fills a temp file; fsync; rename; fsync the folder
    save_arrays(path, arrays)      an .npz of `arrays`, atomically, refusing NaN/inf in them
    read_arrays(path)              {name: array}; errors say what is wrong with the file
    restore(variables, arrays, path, prefix)   shape-, dtype- and finiteness-checked set_value

A crash leaves the old file or the new one, never a torn one. Errors are CheckpointError with
one line naming the file; none of them suggests loading pickled data.
"""
import os
import tempfile
import time
import zipfile
import zlib

import numpy as np

FORMAT_VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint that is missing, damaged or does not fit; the message names the file."""


def checkpoint_path(out_dir, ckpt):
    """`ckpt` is best, latest, step<N> (<out_dir>/ckpt_<name>.npz) or a path to an .npz."""
    return ckpt if ckpt.endswith(".npz") else os.path.join(out_dir, f"ckpt_{ckpt}.npz")


def atomic_write(path, write):
    """Call write(f) on a temp file beside `path`, fsync it, rename it over `path`, fsync the
    folder. Any failure leaves `path` as it was and no temp file behind."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=os.path.splitext(path)[1])
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        if os.environ.get("SEQ2SEQ_TEST_SLOW_SAVE"):  # fault-injection tests kill us here
            time.sleep(float(os.environ["SEQ2SEQ_TEST_SLOW_SAVE"]))
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    dir_fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def nonfinite(arrays):
    """The names of the float arrays that hold NaN or inf."""
    return [k for k, v in arrays.items() if np.issubdtype(np.asarray(v).dtype, np.floating) and not np.all(np.isfinite(v))]


def save_arrays(path, arrays):
    """An .npz of `arrays`, atomically. Arrays with NaN or inf are refused: the file already
    at `path`, if any, stays as it is."""
    bad = nonfinite(arrays)
    if bad:
        raise CheckpointError(f"{path}: not written: {', '.join(bad[:3])}{' ...' if len(bad) > 3 else ''} "
                              "hold NaN or inf; the checkpoint already there, if any, is unchanged")
    atomic_write(path, lambda f: np.savez(f, **arrays))


def check_archive(path):
    """Refuse what np.load would misread: no file, not a zip, or a member stored twice."""
    if not os.path.exists(path):
        raise CheckpointError(f"{path}: no such checkpoint")
    if os.path.isdir(path):
        raise CheckpointError(f"{path}: is a folder, not a checkpoint")
    if not zipfile.is_zipfile(path):
        with open(path, "rb") as f:
            zip_start = f.read(4) == b"PK\x03\x04"
        raise CheckpointError(f"{path}: truncated (a zip archive without its end)" if zip_start else
                              f"{path}: not a checkpoint (not an .npz/zip archive)")
    try:
        with zipfile.ZipFile(path) as z:
            names = z.namelist()
    except (zipfile.BadZipFile, OSError, EOFError) as err:
        raise CheckpointError(f"{path}: damaged zip archive ({err})") from None
    seen = set()
    for name in names:
        if name in seen:
            raise CheckpointError(f"{path}: holds the member {name} twice (damaged or edited); refused")
        seen.add(name)


def read_arrays(path):
    """All arrays of an .npz as a dict, never unpickling; errors say what is wrong."""
    check_archive(path)
    try:
        with np.load(path, allow_pickle=False) as data:
            return {key: data[key] for key in data.files}
    except ValueError as err:
        if "allow_pickle" in str(err) or "Object arrays" in str(err):
            raise CheckpointError(f"{path}: holds Python objects (pickled data), which this project never "
                                  "writes; refused") from None
        raise CheckpointError(f"{path}: damaged array data ({err})") from None
    except (zipfile.BadZipFile, EOFError, OSError, zlib.error) as err:
        raise CheckpointError(f"{path}: truncated or damaged ({err})") from None


def restore(variables, arrays, path, prefix="param/"):
    """Set each shared variable from arrays[prefix + name], checking that every one is there,
    numeric, finite and of the right shape, and that no extra names are left over."""
    for var in variables:
        key = prefix + var.name
        if key not in arrays:
            raise CheckpointError(f"{path}: missing {key}")
        value, expected = arrays[key], var.get_value(borrow=True)
        if not (np.issubdtype(value.dtype, np.number) or value.dtype == bool):
            raise CheckpointError(f"{path}: {key} holds {value.dtype} data, not numbers")
        if value.shape != expected.shape:
            raise CheckpointError(f"{path}: {key} has shape {value.shape}, the model needs {expected.shape}")
        if nonfinite({key: value}):
            raise CheckpointError(f"{path}: {key} holds NaN or inf; the file is damaged")
        var.set_value(value.astype(expected.dtype))
    extra = sorted({k for k in arrays if k.startswith(prefix)} - {prefix + v.name for v in variables})
    if extra:
        raise CheckpointError(f"{path}: entries the model does not have: {', '.join(extra)}")
