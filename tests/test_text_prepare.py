"""data/text/prepare.py: plain text and parallel text become datasets; every bad input is one
line naming the file and place, and leaves an earlier dataset in --out_dir untouched."""
import json
import os
import re

import numpy as np
import pytest

import dataset
from data.text import prepare as text_prepare
from dataset import load_dataset
from helpers import write_pairs_tsv
from vocab import Vocab, detokenize, tokenize


def numbered_prose(n_paragraphs, per_paragraph, start=0):
    """Paragraphs of sentences that each name their own number, so a split can be checked."""
    paragraphs, k = [], start
    for _ in range(n_paragraphs):
        sentences = []
        for _ in range(per_paragraph):
            sentences.append(f"Mr. Brown counted to number {k} today.")
            k += 1
        paragraphs.append(" ".join(sentences))
    return "\n\n".join(paragraphs) + "\n"


def prepare(*args):
    """Run the script's main; returns its one-line error, or None when it succeeded."""
    try:
        text_prepare.main([str(a) for a in args])
    except SystemExit as exit:
        if exit.code not in (None, 0):
            return str(exit.code)
    return None


def test_prose_is_split_into_sentences_by_pysbd():
    (seg,) = text_prepare.segments("Mr. Smith arrived at 5 p.m. and sat down. He ate, e.g. bread.\nThen he left.")
    assert seg == ["Mr. Smith arrived at 5 p.m. and sat down.", "He ate, e.g. bread.", "Then he left."]


def test_pairs_stop_at_files_and_optionally_at_paragraphs():
    text = "One. Two.\n\nThree. Four.\n"
    assert text_prepare.next_pairs(text_prepare.segments(text)) == [("One.", "Two."), ("Two.", "Three."),
                                                                   ("Three.", "Four.")]
    assert text_prepare.next_pairs(text_prepare.segments(text, within="paragraph")) == [
        ("One.", "Two."), ("Three.", "Four.")]
    lines = text_prepare.segments("a b\n\n  c d \ne\n", split="lines")
    assert lines == [["a b", "c d", "e"]]


def test_clauses_cut_after_semicolons_and_colons():
    assert text_prepare.clauses("And God said: Let there be light; and there was light.") == [
        "And God said:", "Let there be light;", "and there was light."]


def test_next_sentence_dataset_has_contiguous_leak_free_splits(tmp_path):
    book1, book2 = tmp_path / "one.txt", tmp_path / "two.txt"
    book1.write_text(numbered_prose(30, 5), encoding="utf-8")
    book2.write_text(numbered_prose(30, 5, start=150), encoding="utf-8")
    out = tmp_path / "mybook"
    assert prepare("--input", book1, book2, "--out_dir", out, "--min_held", 20, "--val_frac", 0.1,
                   "--test_frac", 0.1) is None
    meta, src_vocab, tgt_vocab, splits = load_dataset(str(out))
    assert meta["task"] == "next_sentence" and meta["n_sentences"] == 300
    # 298 pairs (none across the two files); 2 boundary pairs dropped; 30 val, 30 test
    assert meta["pairs"] == {"train": 236, "val": 30, "test": 30}
    # The same split on the text: every sentence number lands in one split, in order.
    segs = [seg for book in (book1, book2) for seg in text_prepare.segments(text_prepare.read_text(book))]
    pairs = text_prepare.next_pairs(segs)
    assert ("Mr. Brown counted to number 149 today.", "Mr. Brown counted to number 150 today.") not in pairs
    text_splits = text_prepare.contiguous_split(pairs, 30, 30, 1, "books")
    seen = {name: {int(w) for pair in split for s in pair for w in s.split() if w.isdigit()}
            for name, split in text_splits.items()}
    assert not (seen["train"] & seen["val"]) and not (seen["val"] & seen["test"]) and not (seen["train"] & seen["test"])
    assert max(seen["train"]) < min(seen["val"]) and max(seen["val"]) < min(seen["test"])  # blocks, in order
    src, tgt = splits["train"][0]
    assert tgt_vocab.decode(src) == "mr . brown counted to number 0 today ."
    assert tgt_vocab.text(tgt) == "Mr. Brown counted to number 1 today."


def test_over_long_sentences_are_counted_and_truncated(tmp_path):
    book = tmp_path / "book.txt"
    long = "This sentence goes on " + "and on " * 40 + "forever."
    book.write_text("\n".join([long] + [f"Line {k} is short." for k in range(80)]) + "\n", encoding="utf-8")
    assert prepare("--input", book, "--split", "lines", "--out_dir", tmp_path / "d", "--max_len", 20,
                   "--min_held", 10, "--val_frac", 0, "--test_frac", 0) is None
    meta, _, _, splits = load_dataset(str(tmp_path / "d"))
    assert meta["n_over_max_len"]["train"] == 1 and len(splits["train"][0][0]) == 20


def test_parallel_text_from_two_files_and_from_tsv(tmp_path):
    src, tgt = tmp_path / "en.txt", tmp_path / "es.txt"
    src.write_text("".join(f"the house {k}\n" for k in range(60)), encoding="utf-8")
    tgt.write_text("".join(f"la casa {k}\n" for k in range(60)), encoding="utf-8")
    assert prepare("--src", src, "--tgt", tgt, "--out_dir", tmp_path / "p", "--min_held", 10) is None
    meta, src_vocab, tgt_vocab, splits = load_dataset(str(tmp_path / "p"))
    assert meta["task"] == "translation" and meta["bleu"] and meta["pairs"] == {"train": 40, "val": 10, "test": 10}
    assert "casa" in tgt_vocab.stoi and "casa" not in src_vocab.stoi
    refs = (tmp_path / "p" / "test.ref.txt").read_text(encoding="utf-8").splitlines()
    assert refs[0] == "la casa 50"
    tsv = tmp_path / "pairs.tsv"
    tsv.write_text("".join(f"the house {k}\tla casa {k}\n" for k in range(60)), encoding="utf-8")
    assert prepare("--pairs_tsv", tsv, "--out_dir", tmp_path / "t", "--min_held", 10) is None
    assert load_dataset(str(tmp_path / "t"))[0]["pairs"] == meta["pairs"]


def test_sentencepiece_model_travels_with_the_dataset_and_the_checkpoint(tmp_path):
    from model import Model, ModelConfig

    book = tmp_path / "book.txt"
    book.write_text(numbered_prose(40, 5), encoding="utf-8")
    out = tmp_path / "sp"
    assert prepare("--input", book, "--out_dir", out, "--tokenizer", "sentencepiece", "--vocab_size", 60,
                   "--min_held", 10) is None
    meta, src_vocab, tgt_vocab, splits = load_dataset(str(out))
    assert meta["tokenizer"] == "sentencepiece" and os.path.exists(out / "spm.model")
    assert src_vocab.kind == "sentencepiece" and src_vocab.itos[:4] == ["<pad>", "<unk>", "<s>", "</s>"]
    src, tgt = splits["train"][0]
    assert tgt_vocab.text(src) == "Mr. Brown counted to number 0 today."  # subwords read back as text
    model = Model(ModelConfig(embed_size=4, hidden_size=4, src_vocab_size=len(src_vocab),
                              tgt_vocab_size=len(tgt_vocab)), src_vocab, tgt_vocab)
    model.save(str(tmp_path / "ckpt.npz"))
    loaded = Model.load(str(tmp_path / "ckpt.npz"))
    assert loaded.src_vocab == src_vocab and loaded.src_vocab.tokens("Mr. Brown") == src_vocab.tokens("Mr. Brown")


def test_word_detokenizer_reads_as_text():
    assert detokenize(tokenize("And I said, go (now)! The end.")) == "And I said, go (now)! The end."
    assert Vocab.build([["a"]], 10).text([4]) == "A"


@pytest.fixture
def existing(tmp_path):
    """A prepared dataset in --out_dir, and a snapshot of its bytes."""
    book = tmp_path / "good.txt"
    book.write_text(numbered_prose(20, 5), encoding="utf-8")
    out = tmp_path / "data"
    assert prepare("--input", book, "--out_dir", out, "--min_held", 10) is None
    return out, {name: (out / name).read_bytes() for name in os.listdir(out)}


def bad_inputs(tmp_path):
    empty, binary, latin1 = tmp_path / "empty.txt", tmp_path / "x.bin", tmp_path / "latin1.txt"
    short, en, es, tsv = tmp_path / "short.txt", tmp_path / "en.txt", tmp_path / "es.txt", tmp_path / "bad.tsv"
    empty.write_text("  \n\n", encoding="utf-8")
    binary.write_bytes(b"text\x00\x01\x02")
    latin1.write_bytes("Good line.\nCaf\u00e9 ol\u00e9.\n".encode("latin-1"))
    short.write_text("One sentence. Two sentences.\n", encoding="utf-8")
    en.write_text("a\nb\nc\n", encoding="utf-8")
    es.write_text("x\ny\n", encoding="utf-8")
    tsv.write_text("a\tb\nno tab here\n", encoding="utf-8")
    missing = tmp_path / "missing.txt"
    return [
        (["--input", missing], f"{missing}: No such file or directory"),
        (["--input", empty], f"{empty}: empty file"),
        (["--input", binary], f"{binary}: binary file (NUL byte at byte offset 4)"),
        (["--input", latin1], f"{latin1}: not UTF-8 text (byte offset 14: invalid continuation byte)"),
        (["--input", short], f"{short}: 1 pairs, but the splits need at least"),
        (["--src", en, "--tgt", es], f"{en} has 3 lines and {es} has 2: line 3 has no partner"),
        (["--pairs_tsv", tsv], f"{tsv}:2: expected source<TAB>target, got 1 field(s)"),
    ]


def test_each_bad_input_is_one_line_and_leaves_the_dataset_alone(tmp_path, existing):
    out, before = existing
    for args, expected in bad_inputs(tmp_path):
        message = prepare(*args, "--out_dir", out)
        assert message is not None and message.startswith(f"error: {expected}"), (args, message)
        assert "\n" not in message
        assert {name: (out / name).read_bytes() for name in os.listdir(out)} == before, args


def test_kjv_prepare_uses_the_shared_writer(tmp_path):
    """data/kjv/prepare.py on a small verse file: pairs within a book, the shared meta."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("kjv_prepare", os.path.join(text_prepare.ROOT, "data", "kjv", "prepare.py"))
    kjv = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(kjv)
    rows = [{"book": "Gen", "chapter": c, "text": f"Verse {c}.{v}: part two; part three."}
            for c in range(1, 21) for v in range(1, 4)]
    source = tmp_path / "kjv.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    kjv.main(["--source", str(source), "--out_dir", str(tmp_path / "v"), "--val_frac", "0.1", "--test_frac", "0.1"])
    kjv.main(["--source", str(source), "--out_dir", str(tmp_path / "c"), "--val_frac", "0.1", "--test_frac", "0.1",
              "--unit", "clause"])
    verse_meta, clause_meta = load_dataset(str(tmp_path / "v"))[0], load_dataset(str(tmp_path / "c"))[0]
    assert sum(verse_meta["pairs"].values()) == 59 and verse_meta["tokenizer"] == "word"
    removed = clause_meta["removed_from_train"]  # "part two." is the source of a val pair too
    assert clause_meta["unit"] == "clause" and sum(clause_meta["pairs"].values()) + sum(removed.values()) == 3 * 60 - 1
    assert removed["sources_in_val_or_test"] > 0
    assert np.isfinite(verse_meta["val_unigram_ppl"])


@pytest.mark.parametrize("tokens, text", [
    ('" copyright disclaimer " as a " work based on the program', '"Copyright disclaimer" as a "work based on the program'),
    ("5 . termination - - - - -", "5. Termination-----"),
    ("his mother ' burnt", "His mother' burnt"),
    ("the brethren ' house and ' the word ' of god", "The brethren' house and 'the word' of god"),
    ('he said , " go to the well - known city . " and they went .', 'He said, "go to the well-known city." And they went.'),
])
def test_detokenizer_reattaches_quotes_apostrophes_and_hyphens(tokens, text):
    assert detokenize(tokens.split()) == text


@pytest.mark.parametrize("sentence", [
    "And God said, Let there be light: and there was light.",
    "And the LORD spake unto Moses, saying, Speak unto the children of Israel (all of them).",
    'The "Program", below, refers to any such program or work, and a "work based on the Program" means either '
    "the Program or any derivative work under copyright law.",
    "This is free software; you can redistribute it and/or modify it under the terms of the well-known licence.",
])
def test_detokenised_kjv_and_licence_sentences_read_as_written(sentence):
    assert detokenize(tokenize(sentence)).lower() == sentence.lower()


def test_a_corpus_that_repeats_itself_leaks_nothing_into_train(tmp_path):
    """The same book twice (--input book.txt book.txt): every val and test pair is also in
    the other copy, and every one of them is taken out of train, counted in meta.json."""
    book = tmp_path / "book.txt"
    book.write_text(" ".join(f"Sentence number {i} is here." for i in range(300)), encoding="utf-8")
    text_prepare.main(["--input", str(book), str(book), "--out_dir", str(tmp_path / "d"), "--min_held", "20"])
    meta, _, _, splits = load_dataset(str(tmp_path / "d"))
    train = {tuple(map(tuple, p)) for p in ((list(s), list(t)) for s, t in splits["train"])}
    train_sources = {tuple(s) for s, _ in splits["train"]}
    for name in ("val", "test"):
        assert splits[name]
        assert not any((tuple(s), tuple(t)) in train or tuple(s) in train_sources for s, t in splits[name])
    assert meta["removed_from_train"]["pairs_in_val_or_test"] > 0


def test_long_text_shows_progress_from_its_first_character(capsys, monkeypatch):
    """Sentence splitting of long paragraphs can take minutes: the progress bar, counted in
    characters, is up for any text of 50,000 characters or more, however few its chunks."""
    import pysbd

    monkeypatch.setattr(pysbd.Segmenter, "segment", lambda self, text: [text])
    paragraph = " ".join(["word"] * 14_000)  # 70,000 characters, no sentence end: a handful of chunks
    segments = text_prepare.segments(paragraph + "\n\n" + paragraph, name="long.txt")
    assert len(segments) == 1 and sum(len(s) for s in segments[0]) >= 139_000
    err = capsys.readouterr().err
    assert "long.txt: sentences" in err and "char" in err


@pytest.mark.parametrize("content, message", [
    (" ".join(["word"] * 400_000).encode(), r"long.txt:1: 1,999,999 characters without a sentence end"),
    ("One. Two. Three.\n".encode("utf-16"), "UTF-16 text"),
    ("One. Two. Three.\n".encode("utf-16-le"), "UTF-16 text"),
])
def test_long_and_utf16_inputs_are_one_line(tmp_path, content, message):
    path = tmp_path / "long.txt"
    path.write_bytes(content)
    assert re.search(message, prepare("--input", path, "--out_dir", tmp_path / "o"))


def test_a_sentencepiece_vocabulary_too_small_for_the_text_is_one_line(tmp_path):
    error = prepare("--pairs_tsv", write_pairs_tsv(tmp_path), "--out_dir", tmp_path / "o", "--min_held", 20,
                    "--tokenizer=sentencepiece", "--vocab_size=5")
    assert re.search(r"--vocab_size=5: SentencePiece could not train \(the text has \d+ distinct "
                     r"characters; ask for at least \d+ pieces\)", error)


def test_a_relative_out_dir_gets_a_dataset_path_train_py_finds(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert prepare("--pairs_tsv", write_pairs_tsv(tmp_path), "--out_dir", "mybook", "--min_held", 20) is None
    hint = capsys.readouterr().out.strip().splitlines()[-1]
    assert hint.endswith(f"next: python train.py --dataset={os.path.join('.', 'mybook')}")
    assert os.path.samefile(dataset.dataset_dir(hint.split("--dataset=")[1]), tmp_path / "mybook")


def test_vocab_from_reuses_a_datasets_or_checkpoints_vocabulary(tmp_path):
    """--vocab_from: another text prepared with the vocabularies of a dataset (or of a
    checkpoint), so that its model can be fine-tuned on it; a bad path is one line."""
    first, second = tmp_path / "first", tmp_path / "second"
    assert prepare("--pairs_tsv", write_pairs_tsv(tmp_path, seed=0), "--out_dir", first, "--min_held", 20) is None
    other = tmp_path / "other.tsv"
    other.write_text("".join(f"the light of day {i}\tla luz del dia {i}\n" for i in range(200)), encoding="utf-8")
    assert prepare("--pairs_tsv", other, "--out_dir", second, "--min_held", 20, "--vocab_from", first) is None
    _, src_a, tgt_a, _ = load_dataset(first)
    _, src_b, tgt_b, splits = load_dataset(second)
    assert (src_b, tgt_b) == (src_a, tgt_a)
    assert len(splits["train"]) > 100  # words outside it are <unk>, as in any text
    error = prepare("--pairs_tsv", other, "--out_dir", tmp_path / "third", "--vocab_from", tmp_path / "nowhere")
    assert error == f"error: --vocab_from={tmp_path / 'nowhere'}: neither a checkpoint (.npz) nor a prepared dataset folder"
