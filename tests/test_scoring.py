"""Scoring helpers (scoring.py): BLEU and chrF through sacrebleu, and references read and
checked against the split."""
import pytest

from dataset import DataError
from scoring import bleu_tokenize, read_references, score
from vocab import SPECIALS, Vocab


def test_bleu_and_chrf_of_perfect_and_disjoint_output():
    refs = ["the light was good", "and god said let there be light"]
    assert score(refs, refs) == {"bleu": 100.0, "chrf": 100.0}
    assert score(["x y z w", "q r s t u v"], refs)["bleu"] == 0.0
    assert bleu_tokenize(Vocab(SPECIALS + ["a"])) == "none"


def test_references_must_exist_and_match_the_split(tmp_path):
    with pytest.raises(DataError, match=r"val.ref.txt: missing; this dataset has no references"):
        read_references(tmp_path, "val", 2)
    (tmp_path / "val.ref.txt").write_text("one\ntwo\nthree\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"val.ref.txt: 3 references for 2 val pairs"):
        read_references(tmp_path, "val", 2)
    assert read_references(tmp_path, "val", 3) == ["one", "two", "three"]
