"""Checkpoint files: archives of plain numpy arrays, written atomically, read without pickle.

Shared by model.Model (.npz) and the autoencoder (its seed-compatible .zip):

    atomic_write(path, write)      write(f) fills a temp file; fsync; rename; fsync the folder
    save_arrays(path, arrays)      an .npz of `arrays`, atomically, refusing NaN/inf in them
    read_arrays(path)              {name: array}; errors say what is wrong with the file
    restore(variables, arrays, path, prefix)   shape-, dtype- and finiteness-checked set_value
    restore_optimizer(variables, saved, path)  the same for an optimizer's state
    save_zip / read_zip / npz_bytes / load_npz     the autoencoder's zip of named members
    save_model / load_model        Model.save and Model.load: the .npz layout of a Model

A crash leaves the old file or the new one, never a torn one. Errors are CheckpointError with
one line naming the file; none of them suggests loading pickled data.
"""
import dataclasses
import io
import json
import os
import tempfile
import time
import zipfile
import zlib

import numpy as np

from vocab import Vocab

FORMAT_VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint that is missing, damaged or does not fit; the message names the file."""


def checkpoint_path(out_dir, ckpt):
    """`ckpt` is best, latest, step<N> (<out_dir>/ckpt_<name>.npz) or a path to an .npz."""
    return ckpt if ckpt.endswith(".npz") else os.path.join(out_dir, f"ckpt_{ckpt}.npz")


def atomic_write(path, write):
    """Call write(f) on a temp file beside `path`, fsync it, rename it over `path`, fsync the
    folder. Any failure leaves `path` as it was and no temp file behind. The file's mode
    follows the umask, as a file open() makes."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=os.path.splitext(path)[1])
    umask = os.umask(0)
    os.umask(umask)
    try:
        os.chmod(tmp, 0o666 & ~umask)  # as open() would make it: mkstemp's is owner-only
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


def unwritable(path):
    """Why a file cannot be written at `path` (a folder given, a file where a folder should be,
    a folder that cannot be made or written in), or None; tried with a temporary file."""
    if os.path.isdir(path):
        return "that is a folder; name a file in it"
    folder = existing = os.path.dirname(os.path.abspath(path))
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        return f"{existing} is a file, not a folder"
    try:
        os.makedirs(folder, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as err:
        return f"cannot write in {folder}: {err.strerror or err}"
    return None


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
    try:
        atomic_write(path, lambda f: np.savez(f, **arrays))
    except OSError as err:  # disk full, unwritable folder: the previous file is untouched
        raise CheckpointError(f"cannot write {path} ({err.strerror or err}); "
                              "the checkpoint already there, if any, is unchanged") from None


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


def load_npz(source):
    """{name: array} of an .npz (a path or bytes), never unpickling. A CheckpointError says
    what is wrong without naming the file; the callers add that."""
    try:
        with np.load(io.BytesIO(source) if isinstance(source, bytes) else source, allow_pickle=False) as data:
            return {key: data[key] for key in data.files}
    except ValueError as err:
        if "allow_pickle" in str(err) or "Object arrays" in str(err):
            raise CheckpointError("holds Python objects (pickled data), which this project never writes") from None
        raise CheckpointError(f"damaged array data ({err})") from None
    except (zipfile.BadZipFile, EOFError, OSError, zlib.error) as err:
        raise CheckpointError(f"truncated or damaged ({err})") from None


def read_arrays(path):
    """All arrays of an .npz checkpoint as a dict, never unpickling; errors say what is wrong."""
    check_archive(path)
    try:
        return load_npz(path)
    except CheckpointError as err:
        raise CheckpointError(f"{path}: {err}; refused") from None


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


def generator_state(shared_rng):
    """The JSON-able state of a shared numpy Generator (layers.Dropout.rng)."""
    return shared_rng.get_value(borrow=True).bit_generator.state


def set_generator_state(shared_rng, state):
    generator = np.random.default_rng()
    generator.bit_generator.state = state
    shared_rng.set_value(generator)


def restore_optimizer(variables, saved, path, prefix="opt/"):
    """Set the optimizer's state variables from a checkpoint's `saved` {name: array}, checked
    as params are; a variable missing from it is refused rather than reset. A checkpoint
    holding one Adam step count for the model (`adam.t`) fills every module's `adam.t.*`."""
    mapped = {}
    for var in variables:
        old = "adam.t" if var.name.startswith("adam.t.") and var.name not in saved else var.name
        if old in saved:
            mapped[prefix + var.name] = saved[old]
    restore(variables, mapped, path, prefix=prefix)


# ---- zips of named members (the autoencoder's seed-compatible file) --------------------

def npz_bytes(arrays):
    """An .npz of `arrays`, as bytes."""
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def save_zip(path, members):
    """A zip of {name: bytes}, deflated, written atomically."""
    def write(f):
        with zipfile.ZipFile(f, "w", zipfile.ZIP_DEFLATED) as zf:
            for name, data in members.items():
                zf.writestr(name, data)

    atomic_write(path, write)


def read_zip(path, names):
    """{name: bytes} for exactly the members `names`, never extracting to disk. Member paths
    that could escape a folder, unknown members and missing members are refused."""
    try:
        with zipfile.ZipFile(path) as zf:
            found = zf.namelist()
            for name in found:
                parts = name.replace("\\", "/").split("/")
                if name.startswith(("/", "\\")) or ":" in name or ".." in parts or len(parts) != 1:
                    raise CheckpointError(f"{path}: refused member path {name!r}")
            unexpected = sorted(set(found) - set(names))
            if unexpected:
                raise CheckpointError(f"{path}: unexpected members {', '.join(unexpected)}")
            missing = [name for name in names if name not in found]
            if missing:
                raise CheckpointError(f"{path}: missing members {', '.join(missing)}")
            return {name: zf.read(name) for name in names}
    except (zipfile.BadZipFile, EOFError, OSError) as err:
        raise CheckpointError(f"{path}: not a readable zip ({err})") from None


# ---- Model checkpoints: one .npz of params, optimizer state, vocabularies and a JSON meta ----

def module_kind(module):
    """A module's class as checkpoints record it: `LSTM`, `AttentionDecoder(LSTM)`."""
    inner = getattr(module, "cell", None)
    return type(module).__name__ + (f"({type(inner).__name__})" if inner is not None else "")


def _same_kind(saved, built):
    """Whether a module recorded as `saved` is what initModules() now builds as `built`.
    A checkpoint may name Cho's decoder by its bare cell (`GRU`, the same params as
    `Decoder(GRU)`) and the GRU attention decoder `AttentionGRU`."""
    return {"AttentionGRU": "AttentionDecoder(GRU)"}.get(saved, saved) == built or built == f"Decoder({saved})"


def save_model(model, path, state=None):
    """model.Model.save: params as param/<name>, optimizer state as opt/<name>, each vocabulary
    (and its SentencePiece model), and a JSON `meta` with the config, the module kinds, the
    caller's `state` and the dropout RNG."""
    arrays = {f"param/{p.name}": p.get_value() for p in model.params}
    arrays.update({f"opt/{v.name}": v.get_value() for v in model.opt_state})
    for key, vocab in (("src_vocab", model.src_vocab), ("tgt_vocab", model.tgt_vocab)):
        if vocab is not None:
            arrays[key] = np.array(vocab.itos, dtype=str)
            if vocab.spm is not None:
                arrays[f"{key}_spm"] = np.frombuffer(vocab.spm, dtype=np.uint8)
    meta = {
        "format_version": FORMAT_VERSION,
        "model_config": dataclasses.asdict(model.config),
        "modules": {name: module_kind(mod) for name, mod in model.modules.items()},
        "state": state or {},
        "dropout_rng": generator_state(model.dropout.rng),
    }
    arrays["meta"] = np.array(json.dumps(meta))
    save_arrays(path, arrays)


def vocabularies(arrays, path):
    """[source Vocab, target Vocab] of a checkpoint's arrays (None for a missing one), with
    their SentencePiece models; CheckpointError naming `path` if one cannot be read."""
    try:
        return [Vocab(arrays[k].tolist(), spm=arrays[f"{k}_spm"].tobytes() if f"{k}_spm" in arrays else None)
                if k in arrays else None for k in ("src_vocab", "tgt_vocab")]
    except (ValueError, RuntimeError, TypeError) as err:
        raise CheckpointError(f"{path}: unreadable vocabulary: {err}") from None


def load_model(cls, config_cls, path, mode):
    """model.Model.load: the Model saved at `path`, with every part checked before use."""
    arrays = read_arrays(path)
    if "meta" not in arrays:
        raise CheckpointError(f"{path}: not a checkpoint of this project (no 'meta' entry)")
    try:
        meta = json.loads(str(arrays["meta"]))
        config = config_cls(**meta["model_config"])
        if not isinstance(meta.get("state", {}), dict):
            raise ValueError("its state is not a JSON object")
    except (ValueError, TypeError, KeyError, AttributeError) as err:
        raise CheckpointError(f"{path}: unreadable model config: {err}") from None
    kinds = {int: int, float: (int, float), str: str, bool: bool}
    for field in dataclasses.fields(config):
        value, expected = getattr(config, field.name), kinds.get(field.type)
        if expected and (not isinstance(value, expected) or (expected is int and isinstance(value, bool))):
            raise CheckpointError(f"{path}: model config {field.name}={value!r} is not a {field.type}")
    if meta.get("format_version", 1) > FORMAT_VERSION:
        raise CheckpointError(f"{path}: format version {meta['format_version']} is newer than this code's "
                              f"({FORMAT_VERSION}); update the code")
    vocabs = vocabularies(arrays, path)
    for vocab, size, side in zip(vocabs, (config.src_vocab_size, config.tgt_vocab_size), ("src", "tgt")):
        if vocab is not None and len(vocab) != size:
            raise CheckpointError(f"{path}: the {side} vocabulary has {len(vocab)} entries, the model config {size}")
    try:
        model = cls(config, *vocabs, mode=mode)
    except ValueError as err:  # e.g. a cell of the user's that cannot be imported here
        raise CheckpointError(f"{path}: {err}") from None
    saved_modules = meta.get("modules", {})
    for name, module in model.modules.items():
        saved = saved_modules.get(name)
        if saved is not None and not _same_kind(saved, module_kind(module)):
            raise CheckpointError(f"{path}: module {name!r} is a {saved} in the checkpoint but initModules() "
                                  f"builds a {module_kind(module)}")
    restore(model.params, arrays, path, prefix="param/")
    model._pending_opt_state = {k[4:]: v for k, v in arrays.items() if k.startswith("opt/")}
    model.checkpoint_file, model.checkpoint_state = path, meta.get("state", {})
    if "dropout_rng" in meta:
        try:
            set_generator_state(model.dropout.rng, meta["dropout_rng"])
        except (TypeError, ValueError, KeyError) as err:
            raise CheckpointError(f"{path}: unreadable dropout RNG state ({err})") from None
    return model
