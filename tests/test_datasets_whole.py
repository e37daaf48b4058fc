"""A dataset folder changes as a whole or is refused; prepare scripts leave a user's files
alone; long inputs are bounded in one line; a user's broken cell is named in one line."""
import json
import os
import shutil
import sys

import numpy as np
import pytest

import dataset
import layers
from configurator import ConfigError
from dataset import DataError, load_dataset
from helpers import ROOT

from data.text import prepare as text_prepare  # noqa: E402


def tsv(folder, n=200, seed=0):
    words = {"god": "dios", "light": "luz", "water": "agua", "earth": "tierra", "day": "dia"}
    rng = np.random.default_rng(seed)
    path = os.path.join(folder, f"pairs{seed}.tsv")
    with open(path, "w", encoding="utf-8") as f:
        for _ in range(n):
            s = list(rng.choice(list(words), rng.integers(2, 6)))
            f.write(" ".join(s) + "\t" + " ".join(words[w] for w in s) + "\n")
    return path


def prepare(*args):
    text_prepare.main([str(a) for a in args])


def snapshot(folder):
    return {n: open(os.path.join(folder, n), "rb").read() for n in os.listdir(folder)
            if os.path.isfile(os.path.join(folder, n)) and not n.startswith(".")}


def test_files_that_do_not_belong_together_are_refused(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    prepare("--pairs_tsv", tsv(tmp_path, seed=0), "--out_dir", a, "--min_held", 20)
    prepare("--pairs_tsv", tsv(tmp_path, seed=1), "--out_dir", b, "--min_held", 20)
    load_dataset(str(a))
    shutil.copy(b / "train.npz", a / "train.npz")  # what a prepare killed between two replaces leaves
    with pytest.raises(DataError, match=rf"^{a}/train.npz: not the file {a}/meta.json was written with"):
        load_dataset(str(a))
    os.remove(a / "val.ref.txt")
    prepare("--pairs_tsv", tsv(tmp_path, seed=0), "--out_dir", a, "--min_held", 20)  # the next prepare mends it
    load_dataset(str(a))


def test_a_prepare_stopped_half_way_leaves_a_folder_that_is_refused(tmp_path, monkeypatch):
    """Stopped after the first file replaced: the new train.npz beside the old meta.json is
    refused, and the staging folder is gone."""
    out = tmp_path / "d"
    prepare("--pairs_tsv", tsv(tmp_path, seed=0), "--out_dir", out, "--min_held", 20)
    replace, calls = os.replace, []

    def stop_after_one(src, dst):
        if calls:
            raise KeyboardInterrupt
        calls.append(dst)
        replace(src, dst)

    monkeypatch.setattr(dataset.os, "replace", stop_after_one)
    with pytest.raises(KeyboardInterrupt):
        prepare("--pairs_tsv", tsv(tmp_path, seed=1), "--out_dir", out, "--min_held", 20)
    monkeypatch.setattr(dataset.os, "replace", replace)
    with pytest.raises(DataError, match="not the file .*meta.json was written with"):
        load_dataset(str(out))
    assert not [n for n in os.listdir(out) if n.startswith(".prepare-")]


def test_a_killed_prepares_staging_folder_is_removed_by_the_next(tmp_path):
    out = tmp_path / "d"
    os.makedirs(out / ".prepare-killed")
    prepare("--pairs_tsv", tsv(tmp_path), "--out_dir", out, "--min_held", 20)
    assert not (out / ".prepare-killed").exists()


def test_a_corpus_scripts_own_downloads_beside_it_are_not_a_users_files(tmp_path):
    """data/kjv_es/prepare.py downloads Debian's packages into data/kjv_es/sword/ before it
    publishes the dataset into that folder; that must not count as a user's files."""
    out = tmp_path / "kjv_es"
    (out / "sword" / "mods.d").mkdir(parents=True)
    (out / "download").mkdir()
    (out / "prepare.py").write_text("# the corpus script")
    prepare("--pairs_tsv", tsv(tmp_path), "--out_dir", out, "--min_held", 20)
    load_dataset(str(out))
    assert (out / "sword" / "mods.d").is_dir() and (out / "prepare.py").exists()


def test_a_users_folder_is_refused_and_overwrite_leaves_their_other_files(tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "meta.json").write_text('{"my": "notes"}')
    (out / "train.npz").write_text("mine")
    (out / "notes.txt").write_text("keep me")
    before = snapshot(out)
    with pytest.raises(SystemExit, match=r"out_dir=.*mine: holds files no prepare script wrote \(meta.json, notes.txt, "
                                          r"train.npz\); choose another folder, or pass --overwrite"):
        prepare("--pairs_tsv", tsv(tmp_path), "--out_dir", out, "--min_held", 20)
    assert snapshot(out) == before
    prepare("--pairs_tsv", tsv(tmp_path), "--out_dir", out, "--min_held", 20, "--overwrite")
    load_dataset(str(out))
    assert (out / "notes.txt").read_text() == "keep me"
    with pytest.raises(SystemExit, match=r"holds files no prepare script wrote \(notes.txt\)"):  # the rest is ours now
        prepare("--pairs_tsv", tsv(tmp_path), "--out_dir", out, "--min_held", 20)


def test_a_dataset_of_an_earlier_version_is_named():
    with pytest.raises(DataError, match="lists no files .* re-run the dataset's prepare.py"):
        dataset.check_manifest("somewhere", {"src_vocab": [], "tgt_vocab": []})


@pytest.mark.parametrize("content, message", [
    (" ".join(["word"] * 400_000).encode(), r"long.txt:1: 1,999,999 characters without a sentence end"),
    ("One. Two. Three.\n".encode("utf-16"), "UTF-16 text"),
    ("One. Two. Three.\n".encode("utf-16-le"), "UTF-16 text"),
])
def test_long_and_utf16_inputs_are_one_line(tmp_path, content, message):
    path = tmp_path / "long.txt"
    path.write_bytes(content)
    with pytest.raises(SystemExit, match=message):
        prepare("--input", path, "--out_dir", tmp_path / "o")


def test_a_sentencepiece_vocabulary_too_small_for_the_text_is_one_line(tmp_path):
    with pytest.raises(SystemExit, match=r"--vocab_size=5: SentencePiece could not train \(the text has \d+ distinct "
                                         r"characters; ask for at least \d+ pieces\)"):
        prepare("--pairs_tsv", tsv(tmp_path), "--out_dir", tmp_path / "o", "--min_held", 20,
                "--tokenizer=sentencepiece", "--vocab_size=5")


def test_a_relative_out_dir_gets_a_dataset_path_train_py_finds(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    prepare("--pairs_tsv", tsv(tmp_path), "--out_dir", "mybook", "--min_held", 20)
    hint = capsys.readouterr().out.strip().splitlines()[-1]
    assert hint.endswith(f"next: python train.py --dataset={os.path.join('.', 'mybook')}")
    assert os.path.samefile(dataset.dataset_dir(hint.split("--dataset=")[1]), tmp_path / "mybook")


class Wide(layers.Recurrent):
    def recur(self, x_t, h):
        return layers.pt.concatenate([h, h], axis=1)


class Float64(layers.Recurrent):
    def recur(self, x_t, h):
        return layers.pt.tanh(x_t + layers.pt.dot(h, self.U)) * np.float64(0.5)


class TwoStates(layers.Recurrent):
    def recur(self, x_t, h):
        return [h, h]


@pytest.mark.parametrize("cls, message", [
    (Wide, r"Wide.recur returned states of shapes \[\(2, 10\)\]; expected \[\(2, 5\)\]"),
    (Float64, "Float64.recur returned a float64 state 0; expected float32"),
    (TwoStates, r"TwoStates.recur returned 2 state\(s\); n_states is 1"),
])
def test_a_broken_cell_is_named_with_what_recur_returned(cls, message):
    with pytest.raises(ValueError, match=message):
        layers.check_cell(cls)
    layers.check_cell(layers.LSTM)  # a good one passes


@pytest.mark.parametrize("source, message", [
    ("raise RuntimeError('no GPU here')\n", r"importing \w+ failed: RuntimeError: no GPU here"),
    ("def broken(:\n", r"importing \w+ failed: SyntaxError: .*line 1"),
])
def test_a_cell_module_that_fails_to_import_is_one_line(tmp_path, monkeypatch, source, message):
    from train import TrainConfig, check
    from model import ModelConfig

    name = f"usercell_{abs(hash(source)) % 10**6}"
    (tmp_path / f"{name}.py").write_text(source)
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ConfigError, match=rf"^cell='{name}:X': {message}"):
        check(TrainConfig(), ModelConfig(cell=f"{name}:X"))


def test_samples_and_validation_passes_are_bounded():
    from sample import MAX_SAMPLES, SampleConfig, check

    with pytest.raises(ConfigError, match=f"num_samples=1000000: must be between 1 and {MAX_SAMPLES}"):
        check(SampleConfig(num_samples=1_000_000))
    sys.path.insert(0, os.path.join(ROOT, "data", "sincos"))
    from sincos import make_generator
    from autoencoder import NDS2SAEFactory

    factory = NDS2SAEFactory()
    factory.input_dim, factory.output_dim, factory.layer_sizes = 2, 1, [4]
    model = factory.build()
    endless = make_generator(20, 1)
    with pytest.raises(ValueError, match="valid generator gave 5 batches without last_batch=True"):
        model.evaluate(lambda n: endless(n)[:2] + (False,), batch_size=4, max_batches=5)


def test_meta_json_lists_every_file_with_its_size_and_hash(tmp_path):
    out = tmp_path / "d"
    prepare("--pairs_tsv", tsv(tmp_path), "--out_dir", out, "--min_held", 20)
    meta = json.loads((out / "meta.json").read_text(encoding="utf-8"))
    assert sorted(meta["files"]) == ["test.npz", "test.ref.txt", "train.npz", "val.npz", "val.ref.txt"]
    assert all(meta["files"][n] == dataset.fingerprint(out / n) for n in meta["files"])
