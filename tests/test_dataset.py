"""The prepared-data format and batches (dataset.py): padding, bucketed batches, the checks
of a prepared folder; a dataset folder changes as a whole or is refused, and prepare scripts
leave a user's files alone."""
import json
import os
import shutil

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import dataset
from data.text import prepare as text_prepare
from dataset import Batcher, DataError, eval_batches, load_dataset, make_batch, pad_batch
from helpers import write_pairs_tsv
from vocab import BOS_ID, EOS_ID, PAD_ID



@settings(max_examples=50, deadline=None)
@given(st.lists(st.lists(st.integers(4, 30), min_size=0, max_size=9), min_size=1, max_size=8))
def test_pad_batch_round_trips(seqs):
    tgt = pad_batch(seqs, bos_eos=True)  # (T, B)
    assert tgt.shape[1] == len(seqs)
    for b, s in enumerate(seqs):
        column = tgt[:, b].tolist()
        assert column[: len(s) + 2] == [BOS_ID, *s, EOS_ID]
        assert set(column[len(s) + 2 :]) <= {PAD_ID}


def test_batcher_order_is_fixed_by_seed_and_epoch_and_covers_every_pair():
    rng = np.random.default_rng(0)
    pairs = [(rng.integers(4, 9, n), rng.integers(4, 9, n)) for n in rng.integers(1, 30, 500)]
    batcher = Batcher(pairs, batch_size=16, seed=3)
    epoch0 = batcher.epoch(0)
    assert [b.tolist() for b in epoch0] == [b.tolist() for b in Batcher(pairs, 16, 3).epoch(0)]
    assert [b.tolist() for b in epoch0] != [b.tolist() for b in batcher.epoch(1)]
    assert sorted(np.concatenate(epoch0).tolist()) == list(range(500))
    # bucketing: a batch's lengths spread far less than random batches' would
    spread = np.mean([np.ptp(batcher.lengths[b]) for b in epoch0])
    assert spread < 5
    assert sorted(i for b in eval_batches(pairs, 64) for i in b) == list(range(500))


def test_missing_prepared_data_says_what_to_run(tmp_path):
    with pytest.raises(ValueError, match="meta.json: missing; run .*prepare.py first"):
        load_dataset(tmp_path)


def test_make_batch_shapes():
    src, tgt = make_batch([([4, 5, 6], [7]), ([8], [9, 10])])
    assert src.shape == (3, 2) and tgt.shape == (4, 2)
    assert src[:, 1].tolist() == [8, PAD_ID, PAD_ID]
    assert tgt[:, 0].tolist() == [BOS_ID, 7, EOS_ID, PAD_ID]


def prepare(*args):
    """data/text/prepare.py's main: a dataset written as a whole, or SystemExit."""
    text_prepare.main([str(a) for a in args])


def snapshot(folder):
    return {n: open(os.path.join(folder, n), "rb").read() for n in os.listdir(folder)
            if os.path.isfile(os.path.join(folder, n)) and not n.startswith(".")}


def test_files_that_do_not_belong_together_are_refused(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    prepare("--pairs_tsv", write_pairs_tsv(tmp_path, seed=0), "--out_dir", a, "--min_held", 20)
    prepare("--pairs_tsv", write_pairs_tsv(tmp_path, seed=1), "--out_dir", b, "--min_held", 20)
    load_dataset(str(a))
    shutil.copy(b / "train.npz", a / "train.npz")  # what a prepare killed between two replaces leaves
    with pytest.raises(DataError, match=rf"^{a}/train.npz: not the file {a}/meta.json was written with"):
        load_dataset(str(a))
    os.remove(a / "val.ref.txt")
    prepare("--pairs_tsv", write_pairs_tsv(tmp_path, seed=0), "--out_dir", a, "--min_held", 20)  # the next prepare mends it
    load_dataset(str(a))


def test_a_prepare_stopped_half_way_leaves_a_folder_that_is_refused(tmp_path, monkeypatch):
    """Stopped after the first file replaced: the new train.npz beside the old meta.json is
    refused, and the staging folder is gone."""
    out = tmp_path / "d"
    prepare("--pairs_tsv", write_pairs_tsv(tmp_path, seed=0), "--out_dir", out, "--min_held", 20)
    replace, calls = os.replace, []

    def stop_after_one(src, dst):
        if calls:
            raise KeyboardInterrupt
        calls.append(dst)
        replace(src, dst)

    monkeypatch.setattr(dataset.os, "replace", stop_after_one)
    with pytest.raises(KeyboardInterrupt):
        prepare("--pairs_tsv", write_pairs_tsv(tmp_path, seed=1), "--out_dir", out, "--min_held", 20)
    monkeypatch.setattr(dataset.os, "replace", replace)
    with pytest.raises(DataError, match="not the file .*meta.json was written with"):
        load_dataset(str(out))
    assert not [n for n in os.listdir(out) if n.startswith(".prepare-")]


def test_a_killed_prepares_staging_folder_is_removed_by_the_next(tmp_path):
    out = tmp_path / "d"
    os.makedirs(out / ".prepare-killed")
    prepare("--pairs_tsv", write_pairs_tsv(tmp_path), "--out_dir", out, "--min_held", 20)
    assert not (out / ".prepare-killed").exists()


def test_a_corpus_scripts_own_downloads_beside_it_are_not_a_users_files(tmp_path):
    """data/kjv_es/prepare.py downloads Debian's packages into data/kjv_es/sword/ before it
    publishes the dataset into that folder; that must not count as a user's files."""
    out = tmp_path / "kjv_es"
    (out / "sword" / "mods.d").mkdir(parents=True)
    (out / "download").mkdir()
    (out / "prepare.py").write_text("# the corpus script")
    prepare("--pairs_tsv", write_pairs_tsv(tmp_path), "--out_dir", out, "--min_held", 20)
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
        prepare("--pairs_tsv", write_pairs_tsv(tmp_path), "--out_dir", out, "--min_held", 20)
    assert snapshot(out) == before
    prepare("--pairs_tsv", write_pairs_tsv(tmp_path), "--out_dir", out, "--min_held", 20, "--overwrite")
    load_dataset(str(out))
    assert (out / "notes.txt").read_text() == "keep me"
    with pytest.raises(SystemExit, match=r"holds files no prepare script wrote \(notes.txt\)"):  # the rest is ours now
        prepare("--pairs_tsv", write_pairs_tsv(tmp_path), "--out_dir", out, "--min_held", 20)


def test_a_dataset_of_an_earlier_version_is_named():
    with pytest.raises(DataError, match="lists no files .* re-run the dataset's prepare.py"):
        dataset.check_manifest("somewhere", {"src_vocab": [], "tgt_vocab": []})


def test_meta_json_lists_every_file_with_its_size_and_hash(tmp_path):
    out = tmp_path / "d"
    prepare("--pairs_tsv", write_pairs_tsv(tmp_path), "--out_dir", out, "--min_held", 20)
    meta = json.loads((out / "meta.json").read_text(encoding="utf-8"))
    assert sorted(meta["files"]) == ["test.npz", "test.ref.txt", "train.npz", "val.npz", "val.ref.txt"]
    assert all(meta["files"][n] == dataset.fingerprint(out / n) for n in meta["files"])


def test_token_batches_hold_at_most_max_tokens_and_cover_every_pair_once():
    rng = np.random.default_rng(1)
    pairs = [(rng.integers(4, 9, n), rng.integers(4, 9, m)) for n, m in rng.integers(1, 40, (500, 2))]
    batcher = Batcher(pairs, batch_size=16, seed=3, max_tokens=200)
    epoch = batcher.epoch(0)
    assert sorted(np.concatenate(epoch).tolist()) == list(range(500))
    assert [b.tolist() for b in epoch] == [b.tolist() for b in Batcher(pairs, 16, 3, max_tokens=200).epoch(0)]
    for b in epoch:
        assert len(b) * batcher.lengths[b].max() <= 200 or len(b) == 1
    sizes = {int(batcher.lengths[b].max()): len(b) for b in epoch}
    assert sizes[min(sizes)] > sizes[max(sizes)]  # short pairs come many to a batch
