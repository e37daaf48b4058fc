"""data/kjv/prepare.py: verse pairs within books, whole chapters per split, bad corpora named,
blank lines skipped, long verses truncated and counted."""
import json

import pytest

from dataset import load_dataset
from data.kjv import prepare as kjv_prepare


def write_jsonl(path, rows):
    with open(path, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")


def verse(book, chapter, number, text):
    return {"citation": f"{book} {chapter}:{number}", "text": text, "book": book, "chapter": chapter, "verse": number}


def test_kjv_pairs_stay_within_books_and_split_whole_chapters(tmp_path):
    # Every word occurs in every chapter, so held-out text decodes without <unk>: chapter c
    # of book A reads "x" c times then "y" v times; book B's verses put "y" before "x".
    rows = [verse("A", c, v, "x " * c + "y " * v + ".") for c in range(1, 21) for v in range(1, 4)]
    rows += [verse("B", 1, 1, "y x ."), verse("B", 1, 2, "[]"), verse("B", 1, 3, "y y x .")]
    write_jsonl(tmp_path / "kjv.jsonl", rows)
    out = tmp_path / "out"
    kjv_prepare.main(["--source", str(tmp_path / "kjv.jsonl"), "--out_dir", str(out),
                      "--val_frac", "0.2", "--test_frac", "0.2", "--vocab_size", "500", "--max_len", "100"])
    meta, vocab, _, splits = load_dataset(out)
    texts = {name: [(vocab.decode(s), vocab.decode(t)) for s, t in pairs] for name, pairs in splits.items()}
    all_pairs = [p for pairs in texts.values() for p in pairs]
    assert "<unk>" not in str(all_pairs)
    # 60 verses of A give 59 pairs; B has 2 verses once "[]" is dropped: 1 pair; none A -> B
    assert len(all_pairs) == 60 and meta["n_verses"] == 62
    assert ("y x .", "y y x .") in all_pairs
    assert not any(t.startswith("y x") or t.startswith("y y x") for s, t in all_pairs if s.startswith("x"))
    # a held-out chapter is held out whole: no train pair starts in a val or test chapter
    chapter = lambda text: text.split().count("x") if text.startswith("x") else "B"  # noqa: E731
    held = {chapter(s) for name in ("val", "test") for s, _ in texts[name]}
    assert len(held) == 8 and not held & {chapter(s) for s, _ in texts["train"]}

    kjv_prepare.main(["--source", str(tmp_path / "kjv.jsonl"), "--out_dir", str(tmp_path / "again"),
                      "--val_frac", "0.2", "--test_frac", "0.2", "--vocab_size", "500", "--max_len", "100",
                      "--reverse_source"])
    meta2, vocab2, _, splits2 = load_dataset(tmp_path / "again")
    assert meta2["reverse_source"] and vocab2.itos == vocab.itos  # same split and vocabulary
    for (s, t), (s2, t2) in zip(splits["train"], splits2["train"]):
        assert s2.tolist() == s.tolist()[::-1] and t2.tolist() == t.tolist()


def test_kjv_bad_line_names_file_and_line(tmp_path, capsys):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(verse("A", 1, 1, "ok .")) + "\n{not json\n", encoding="utf-8")
    with pytest.raises(SystemExit, match=r"bad.jsonl:2: not a verse record"):
        kjv_prepare.main(["--source", str(path), "--out_dir", str(tmp_path / "o")])


def verse_line(book, chapter, verse, text):
    return json.dumps({"citation": f"{book} {chapter}:{verse}", "text": text, "book": book,
                       "chapter": chapter, "verse": verse}) + "\n"


@pytest.mark.parametrize("content, message", [
    (None, "No such file or directory"),
    (b"", "no verses found"),
    (b"\n\n  \n", "no verses found"),
    (verse_line("A", 1, 1, "ok .").encode() + b'{"text": "caf\xe9"}\n', "bad.jsonl:2: not UTF-8"),
])
def test_bad_corpus_is_named(tmp_path, content, message):
    path = tmp_path / "bad.jsonl"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(SystemExit, match=message):
        kjv_prepare.main(["--source", str(path), "--out_dir", str(tmp_path / "o")])


def test_blank_lines_are_skipped_and_long_verses_truncated_and_counted(tmp_path):
    lines = [verse_line("A", 1 + v // 4, v, " ".join(["word"] * (5 if v != 3 else 50))) for v in range(40)]
    path = tmp_path / "k.jsonl"
    path.write_text("\n".join(lines), encoding="utf-8")  # a blank line between verses
    args = ["--source", str(path), "--out_dir", str(tmp_path / "o"), "--max_len", "10"]
    with pytest.raises(SystemExit, match="k.jsonl: no val pairs; the corpus has too few chapters"):
        kjv_prepare.main(args)  # 10 chapters: 3% of them is none
    kjv_prepare.main(args + ["--val_frac", "0.1", "--test_frac", "0.1"])
    meta = json.load(open(tmp_path / "o" / "meta.json"))
    assert meta["n_verses"] == 40 and sum(meta["n_over_max_len"].values()) == 2  # verse 3: a target, then a source
