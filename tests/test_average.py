"""average.py: the parameters of the last snapshots averaged exactly, the rest from the newest,
no optimizer state; checkpoints of different models and missing snapshots refused in one line."""
import numpy as np
import pytest

import average
from checkpoint import CheckpointError, read_arrays
from configurator import ConfigError
from model import Model, ModelConfig
from vocab import SPECIALS, Vocab

VOCAB = Vocab(SPECIALS + ["a", "b", "c"])


def snapshot(folder, step, value, hidden_size=4):
    model = Model(ModelConfig(embed_size=3, hidden_size=hidden_size, src_vocab_size=len(VOCAB),
                              tgt_vocab_size=len(VOCAB)), VOCAB, VOCAB)
    for p in model.params:
        p.set_value(np.full(p.get_value().shape, value, dtype="float32"))
    model.save(folder / f"ckpt_step{step}.npz", {"step": step})
    return model


def test_the_last_snapshots_are_averaged_and_load_as_a_model(tmp_path):
    for step, value in ((100, 1.0), (200, 2.0), (300, 6.0)):
        snapshot(tmp_path, step, value)
    assert average.main([f"--out_dir={tmp_path}", "--last=2"]) == 0
    arrays = read_arrays(tmp_path / "ckpt_avg.npz")
    params = [k for k in arrays if k.startswith("param/")]
    assert params and all(np.all(arrays[k] == 4.0) for k in params)  # mean of 2 and 6
    assert not any(k.startswith("opt/") for k in arrays)
    model = Model.load(tmp_path / "ckpt_avg.npz")
    assert model.checkpoint_state == {"step": 300, "averaged": ["ckpt_step200.npz", "ckpt_step300.npz"]}
    assert model.src_vocab == VOCAB
    average.main([f"--out_dir={tmp_path}", "--output=all"])
    assert all(np.allclose(v, 3.0) for k, v in read_arrays(tmp_path / "ckpt_all.npz").items() if k.startswith("param/"))


def test_other_models_missing_snapshots_and_train_py_names_are_refused(tmp_path):
    with pytest.raises(ConfigError, match="no ckpt_step<N>.npz snapshots to average"):
        average.main([f"--out_dir={tmp_path}"])
    snapshot(tmp_path, 1, 1.0)
    snapshot(tmp_path, 2, 1.0, hidden_size=5)
    with pytest.raises(CheckpointError, match="ckpt_step1.npz and .*ckpt_step2.npz are checkpoints of different models"):
        average.main([f"--out_dir={tmp_path}"])
    for name in ("latest", "step5", "../x"):
        with pytest.raises(ConfigError, match="output="):
            average.main([f"--out_dir={tmp_path}", f"--output={name}"])
