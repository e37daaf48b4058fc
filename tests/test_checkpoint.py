"""Checkpoint files (checkpoint.py): arrays round-trip exactly, writes are atomic (a failure
leaves the previous file and no temp file), nothing is unpickled, damaged archives and bad
arrays are refused in one line naming the file."""
import os
import pickle
import zipfile

import numpy as np
import pytensor
import pytest

import checkpoint
from checkpoint import CheckpointError, read_arrays, save_arrays
from model import Model, ModelConfig


def test_arrays_round_trip_exactly_and_non_finite_ones_are_refused(tmp_path):
    path = tmp_path / "a.npz"
    arrays = {"param/x": np.arange(6, dtype="float32").reshape(2, 3), "step": np.int64(7), "name": np.array("gru")}
    save_arrays(path, arrays)
    back = read_arrays(path)
    assert sorted(back) == sorted(arrays)
    for key, value in arrays.items():
        np.testing.assert_array_equal(back[key], value)
        assert back[key].dtype == np.asarray(value).dtype
    before = path.read_bytes()
    with pytest.raises(CheckpointError, match=r"a.npz: not written: param/x hold NaN or inf"):
        save_arrays(path, {"param/x": np.array([np.nan], "float32")})
    assert path.read_bytes() == before and os.listdir(tmp_path) == ["a.npz"]


def test_a_failed_write_leaves_the_file_and_no_temp_file(tmp_path):
    path = tmp_path / "f.bin"
    checkpoint.atomic_write(path, lambda f: f.write(b"first"))

    def half_then_fail(f):
        f.write(b"half")
        raise RuntimeError("interrupted")

    with pytest.raises(RuntimeError):
        checkpoint.atomic_write(path, half_then_fail)
    assert path.read_bytes() == b"first" and os.listdir(tmp_path) == ["f.bin"]


def test_pickles_damage_and_doubled_members_are_refused_without_unpickling(tmp_path):
    pickled = tmp_path / "p.npz"
    np.savez(pickled, x=np.array([object()], dtype=object))
    with pytest.raises(CheckpointError, match="p.npz: holds Python objects"):
        read_arrays(pickled)
    truncated = tmp_path / "t.npz"
    save_arrays(truncated, {"x": np.ones(1000)})
    truncated.write_bytes(truncated.read_bytes()[:200])
    with pytest.raises(CheckpointError, match=r"t.npz: truncated"):
        read_arrays(truncated)
    (tmp_path / "n.npz").write_bytes(pickle.dumps([1, 2]))
    with pytest.raises(CheckpointError, match=r"n.npz: not a checkpoint"):
        read_arrays(tmp_path / "n.npz")
    doubled = tmp_path / "d.npz"
    with zipfile.ZipFile(doubled, "w") as z:
        for _ in range(2):
            with z.open("x.npy", "w") as member:
                np.save(member, np.ones(2))
    with pytest.raises(CheckpointError, match="d.npz: holds the member x.npy twice"):
        read_arrays(doubled)


def test_restore_checks_names_shapes_and_values(tmp_path):
    var = pytensor.shared(np.zeros(3, "float32"), name="enc.W")
    checkpoint.restore([var], {"param/enc.W": np.ones(3, "float32")}, "c.npz")
    np.testing.assert_array_equal(var.get_value(), np.ones(3))
    for arrays, message in (({}, "c.npz: missing param/enc.W"),
                            ({"param/enc.W": np.ones(4, "float32")}, r"c.npz: .*enc.W"),
                            ({"param/enc.W": np.full(3, np.inf, "float32")}, r"c.npz: .*enc.W")):
        with pytest.raises(CheckpointError, match=message):
            checkpoint.restore([var], arrays, "c.npz")


def test_disk_full_during_save_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    model = Model(ModelConfig(embed_size=4, hidden_size=4, src_vocab_size=8, tgt_vocab_size=8))
    path = tmp_path / "ckpt.npz"
    model.save(path)
    before = path.read_bytes()

    def full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(np, "savez", full)
    with pytest.raises(CheckpointError, match="cannot write .*ckpt.npz \\(No space left on device\\)"):
        model.save(path)
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["ckpt.npz"]
