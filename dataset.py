"""The prepared-data format, how a dataset folder is written as a whole, and
length-bucketed batches.

A prepared dataset is a folder with `meta.json` (vocabularies and task facts) and one
`<split>.npz` per split: token ids of every source and target concatenated (`src`, `tgt`)
with their lengths (`src_len`, `tgt_len`). Sequences are stored without BOS/EOS; `Batcher`
adds them. Everything loads with allow_pickle=False.

meta.json, written last, lists every other file of the dataset with its size and SHA-256
(`files`): a folder whose files do not match it (a prepare run killed half-way through
replacing them, a file copied in from elsewhere) is refused on loading, in one line naming
the file. `publish` is how every prepare script writes a folder.
"""
import fcntl
import hashlib
import json
import os
import shutil
import tempfile

import numpy as np

from vocab import BOS_ID, EOS_ID, PAD_ID, Vocab

SPLITS = ("train", "val", "test")


ROOT = os.path.dirname(os.path.abspath(__file__))


def dataset_dir(name):
    """The folder of a prepared dataset: a name under data/ (kjv, reverse, ...) or a path."""
    return name if os.sep in name else os.path.join(ROOT, "data", name)


class DataError(ValueError):
    """Prepared data that is missing or malformed; the message names the file."""


def save_split(path, pairs):
    """Write a list of (src_ids, tgt_ids) pairs to `path` (.npz)."""
    src_len = np.array([len(s) for s, _ in pairs], dtype=np.int64)
    tgt_len = np.array([len(t) for _, t in pairs], dtype=np.int64)
    cat = lambda seqs: np.concatenate([np.asarray(s, np.int32) for s in seqs] or [np.zeros(0, np.int32)])  # noqa: E731
    np.savez(path, src=cat(s for s, _ in pairs), tgt=cat(t for _, t in pairs), src_len=src_len, tgt_len=tgt_len)


def load_split(path):
    """The (src_ids, tgt_ids) pairs of a split file, as int32 arrays."""
    if not os.path.exists(path):
        raise DataError(f"{path}: missing; run the dataset's prepare.py first")
    try:
        with np.load(path, allow_pickle=False) as data:
            src, tgt, src_len, tgt_len = (data[k] for k in ("src", "tgt", "src_len", "tgt_len"))
    except Exception as err:
        raise DataError(f"{path}: unreadable split file ({err})") from None
    for name, array in (("src", src), ("tgt", tgt), ("src_len", src_len), ("tgt_len", tgt_len)):
        if array.ndim != 1 or not np.issubdtype(array.dtype, np.integer):
            raise DataError(f"{path}: {name} holds {array.dtype} data of {array.ndim} dimension(s), not integer ids")
    if len(src_len) and min(src_len.min(), tgt_len.min()) < 0:
        raise DataError(f"{path}: negative sequence lengths")
    if src_len.sum() != len(src) or tgt_len.sum() != len(tgt) or len(src_len) != len(tgt_len):
        raise DataError(f"{path}: lengths do not add up to the stored tokens")
    src_seqs = np.split(src, np.cumsum(src_len)[:-1]) if len(src_len) else []
    tgt_seqs = np.split(tgt, np.cumsum(tgt_len)[:-1]) if len(tgt_len) else []
    return list(zip(src_seqs, tgt_seqs))


def write_meta(folder, src_vocab, tgt_vocab, **facts):
    """meta.json: the vocabularies plus facts about the task (all JSON values), and the
    manifest of the folder's other files (`files`: name -> size and SHA-256)."""
    names = sorted(n for n in os.listdir(folder) if n != "meta.json" and not n.startswith("."))
    meta = dict(facts, src_vocab=src_vocab.itos, tgt_vocab=tgt_vocab.itos,
                files={n: fingerprint(os.path.join(folder, n)) for n in names})
    with open(os.path.join(folder, "meta.json"), "w", encoding="utf-8") as f:
        json.dump(meta, f, ensure_ascii=False)


def fingerprint(path):
    """{"bytes", "sha256"} of a file."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return {"bytes": os.path.getsize(path), "sha256": digest.hexdigest()}


def check_manifest(folder, meta):
    """DataError naming the first file of the dataset that is missing or differs from what
    meta.json lists: the folder's files were not written together."""
    path = os.path.join(folder, "meta.json")
    if not isinstance(meta.get("files"), dict):
        raise DataError(f"{path}: lists no files (written by an earlier version of this project); re-run the "
                        "dataset's prepare.py")
    for name, expected in sorted(meta["files"].items()):
        file = os.path.join(folder, name)
        if not os.path.isfile(file):
            raise DataError(f"{file}: missing, though {path} lists it; re-run the dataset's prepare.py")
        if fingerprint(file) != expected:
            raise DataError(f"{file}: not the file {path} was written with (prepared at another time, or changed "
                            "since); re-run the dataset's prepare.py")


def reseal(folder):
    """Rewrite meta.json's manifest for the files as they are now: for tools that edit a
    prepared dataset on purpose (the tests and benchmarks/bad_inputs.py damage one to see
    the checks behind the manifest)."""
    path = os.path.join(folder, "meta.json")
    with open(path, encoding="utf-8") as f:
        meta = json.load(f)
    if not isinstance(meta, dict):
        return  # nothing to seal
    meta["files"] = {n: fingerprint(os.path.join(folder, n)) for n in meta.get("files", {})}
    with open(path, "w", encoding="utf-8") as f:
        json.dump(meta, f, ensure_ascii=False)


# What prepare scripts write, and what they leave in a folder of theirs (data/<name>/).
DATASET_FILES = {"meta.json", "train.npz", "val.npz", "test.npz", "val.ref.txt", "test.ref.txt", "spm.model",
                 "spm_src.model", "spm_tgt.model"}
# A corpus script's own downloads stay beside it: kjv_es's Debian packages (sword/), the
# JapaneseVowels wheel (download/).
KEPT = {"prepare.py", "__pycache__", "README.md", "sword", "download"}


def _ours(folder):
    """The files of `folder` a prepare script wrote: those its meta.json lists, when there
    is a dataset's meta.json."""
    try:
        with open(os.path.join(folder, "meta.json"), encoding="utf-8") as f:
            meta = json.load(f)
    except (OSError, ValueError):
        return set()
    if not isinstance(meta, dict) or "src_vocab" not in meta or "tgt_vocab" not in meta:
        return set()
    listed = meta.get("files")
    return {"meta.json", *(listed if isinstance(listed, dict) else DATASET_FILES)}


def publish(out_dir, write_files, src_vocab, tgt_vocab, facts, overwrite=False):
    """Write a dataset folder as a whole. `write_files(staging)` writes its files into a
    staging folder inside out_dir; meta.json (facts and the manifest) is written there last;
    then the files replace the folder's, meta.json last, and files of the previous dataset
    that the new one lacks go. A run killed in between leaves files that do not match
    meta.json's manifest, which loading refuses. One prepare run at a time holds the
    folder's lock; staging folders of killed runs are removed. A folder holding files that
    no prepare script wrote (by its meta.json) is refused, unless `overwrite`: then they are
    replaced where the dataset has a file of that name and left as they are otherwise."""
    os.makedirs(out_dir, exist_ok=True)
    try:
        lock = open(os.path.join(out_dir, ".prepare.lock"), "w")
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise DataError(f"out_dir={out_dir}: another prepare.py is writing this folder") from None
    except OSError as err:
        raise DataError(f"out_dir={out_dir}: {err.strerror}") from None
    try:
        for name in os.listdir(out_dir):
            if name.startswith(".prepare-"):  # a killed run's staging
                shutil.rmtree(os.path.join(out_dir, name), ignore_errors=True)
        previous = _ours(out_dir)
        foreign = sorted(n for n in os.listdir(out_dir) if not n.startswith(".") and n not in previous | KEPT)
        if foreign and not overwrite:
            raise DataError(f"out_dir={out_dir}: holds files no prepare script wrote ({', '.join(foreign[:5])}"
                            f"{', ...' if len(foreign) > 5 else ''}); choose another folder, or pass --overwrite to "
                            "write the dataset there anyway")
        staging = tempfile.mkdtemp(dir=out_dir, prefix=".prepare-")
        try:
            write_files(staging)
            write_meta(staging, src_vocab, tgt_vocab, **facts)
            written = set(os.listdir(staging))
            for name in sorted(written, key=lambda n: n == "meta.json"):  # meta.json last
                os.replace(os.path.join(staging, name), os.path.join(out_dir, name))
            for name in previous - written - KEPT:  # the previous dataset's, now unlisted
                if os.path.isfile(os.path.join(out_dir, name)):
                    os.remove(os.path.join(out_dir, name))
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    finally:
        lock.close()


# Facts of a prepared dataset that a resumed run must find unchanged (besides the vocabulary).
PREPARE_FACTS = ("task", "tokenizer", "reverse_source", "unit", "max_len", "split", "within")


def prepared_facts(meta):
    """The PREPARE_FACTS a dataset's meta.json records (saved in every checkpoint)."""
    return {k: meta[k] for k in PREPARE_FACTS if k in meta}


def check_prepared_as(folder, meta, saved):
    """DataError naming every prepare fact of `meta` that differs from a checkpoint's `saved`
    data record: the dataset was re-prepared with other settings since the run began."""
    now = prepared_facts(meta)
    before = saved.get("prepared", now)
    if "reverse_source" in saved:  # checkpoints of earlier versions
        before = dict(before, reverse_source=saved["reverse_source"])
    differ = sorted(k for k in set(before) | set(now) if before.get(k) != now.get(k))
    if differ:
        raise DataError(f"{folder}: prepared with other settings than the run used: " + ", ".join(
            f"{k} {before.get(k)!r} then, {now.get(k)!r} now" for k in differ))


def read_bytes(folder, name):
    """The bytes of a file named in meta.json (a SentencePiece model), or None for no name."""
    if name is None:
        return None
    try:
        with open(os.path.join(folder, name), "rb") as f:
            return f.read()
    except OSError as err:
        raise DataError(f"{os.path.join(folder, name)}: {err.strerror}; re-run the dataset's prepare.py") from None


def load_dataset(folder, need=()):
    """(meta dict, src Vocab, tgt Vocab, {split: pairs}) of a prepared folder; a DataError if
    a split named in `need` holds no pairs."""
    path = os.path.join(folder, "meta.json")
    if not os.path.exists(path):
        raise DataError(f"{path}: missing; run {os.path.join(folder, 'prepare.py')} first")
    try:
        with open(path, encoding="utf-8") as f:
            meta = json.load(f)
        if not isinstance(meta, dict):
            raise ValueError(f"a JSON {type(meta).__name__}, not an object")
        for side in ("src", "tgt"):
            if not isinstance(meta.get(f"{side}_vocab"), list) or not all(isinstance(w, str) for w in meta[f"{side}_vocab"]):
                raise ValueError(f"{side}_vocab is not a list of strings")
    except (ValueError, KeyError, TypeError) as err:
        raise DataError(f"{path}: malformed meta.json ({err})") from None
    check_manifest(folder, meta)  # before reading the files it lists
    try:
        spm_files = meta.get("spm") or {}
        src_vocab, tgt_vocab = (Vocab(meta[f"{side}_vocab"], spm=read_bytes(folder, spm_files.get(side)))
                                for side in ("src", "tgt"))
    except (ValueError, KeyError, TypeError, RuntimeError) as err:
        raise DataError(f"{path}: malformed meta.json ({err})") from None
    splits = {name: load_split(os.path.join(folder, f"{name}.npz")) for name in SPLITS}
    for name in need:
        if not splits[name]:
            raise DataError(f"{folder}/{name}.npz: no pairs; {name} pairs are needed here")
    for name, pairs in splits.items():
        for side, vocab in ((0, src_vocab), (1, tgt_vocab)):
            ids = [pair[side] for pair in pairs if len(pair[side])]
            if ids and (min(i.min() for i in ids) < 0 or max(i.max() for i in ids) >= len(vocab)):
                raise DataError(f"{folder}/{name}.npz: a {('source', 'target')[side]} token id is outside "
                                f"its vocabulary (0..{len(vocab) - 1})")
    return meta, src_vocab, tgt_vocab, splits


def pad_batch(seqs, bos_eos=False):
    """Sequences -> a (T, B) int32 matrix, time first, PAD_ID after each sequence's end.

    With bos_eos, each sequence becomes BOS ids EOS (the decoder's target layout).
    """
    extra = 2 if bos_eos else 0
    T = max(1, max(len(s) for s in seqs) + extra)  # an empty source still gets one step
    out = np.full((T, len(seqs)), PAD_ID, dtype=np.int32)  # (T, B)
    for b, s in enumerate(seqs):
        row = [BOS_ID, *s, EOS_ID] if bos_eos else s
        out[: len(row), b] = row
    return out


class Batcher:
    """Batches of similar lengths, in an order fixed by (seed, epoch) so resume is exact.

    Each epoch shuffles the pairs, sorts windows of `window` x `batch_size` pairs by length (so
    a batch wastes little on padding), cuts them into batches and shuffles the batches. With
    `max_tokens`, a batch is as many pairs as fit in that many padded tokens (rows x the
    longest side of its longest pair; a longer pair alone), so short pairs come many to a step.
    """

    def __init__(self, pairs, batch_size, seed, window=50, max_tokens=0):
        if not pairs:
            raise DataError("no training pairs")
        self.pairs, self.batch_size, self.seed, self.window = pairs, batch_size, seed, window
        self.max_tokens = max_tokens
        self.lengths = np.array([max(len(s), len(t)) for s, t in pairs])

    def epoch(self, epoch):
        """The list of index arrays for one epoch."""
        rng = np.random.default_rng([self.seed, epoch])
        order = rng.permutation(len(self.pairs))
        span = self.batch_size * self.window
        batches = []
        for start in range(0, len(order), span):
            chunk = order[start : start + span]
            batches += self._cut(chunk[np.argsort(self.lengths[chunk], kind="stable")])
        return [batches[i] for i in rng.permutation(len(batches))]

    def _cut(self, chunk):
        """A length-sorted chunk of indices as batches: of batch_size, or by max_tokens."""
        if not self.max_tokens:
            return [chunk[i : i + self.batch_size] for i in range(0, len(chunk), self.batch_size)]
        batches, start = [], 0
        for end in range(1, len(chunk) + 1):  # chunk[end - 1] is the longest of chunk[start:end]
            if end - 1 > start and (end - start) * self.lengths[chunk[end - 1]] > self.max_tokens:
                batches.append(chunk[start : end - 1])
                start = end - 1
        return batches + [chunk[start:]]

    def batch(self, indices):
        """(src (Ts, B), tgt (Tt, B)) for a list of pair indices."""
        return make_batch([self.pairs[i] for i in indices])


def make_batch(pairs):
    """(src (Ts, B), tgt (Tt, B)) int32 for a list of (src_ids, tgt_ids) pairs."""
    return pad_batch([s for s, _ in pairs]), pad_batch([t for _, t in pairs], bos_eos=True)


def eval_batches(pairs, batch_size):
    """Fixed, length-sorted batches covering every pair once (for validation)."""
    order = sorted(range(len(pairs)), key=lambda i: (len(pairs[i][0]), len(pairs[i][1])))
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
