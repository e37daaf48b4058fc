"""evaluate.py through its command line: perplexity, BLEU and chrF of a checkpoint on the data
it is given."""
import json
import math
import os

import pytest

from helpers import run_script


def test_evaluate_scores_the_dataset_it_is_given(smoke_run, tmp_path):
    """--dataset names the data scored, not the checkpoint's own: a second reverse task (its
    own 30 test pairs, the same symbols) is scored as given."""
    other = tmp_path / "other"
    run_script(os.path.join("data", "reverse", "prepare.py"), "--out_dir", other, "--n_train", 100, "--n_heldout", 30,
        "--max_len", 6, "--seed", 7)
    proc = run_script("evaluate.py", f"--out_dir={smoke_run[0]}", f"--dataset={other}")
    assert "of 30 pairs" in proc.stdout, proc.stdout


def test_a_source_file_is_scored_against_its_references(smoke_run, tmp_path):
    """--src_file/--ref_file: any text, tokenised by the checkpoint's vocabularies; results
    named after the file, beside the checkpoint; mismatched files are one line."""
    src, ref = tmp_path / "src.txt", tmp_path / "ref.txt"
    src.write_text("s1 s2 s3\ns4 s5\n", encoding="utf-8")
    ref.write_text("s3 s2 s1\ns5 s4\n", encoding="utf-8")
    proc = run_script("evaluate.py", f"--out_dir={smoke_run[0]}", f"--src_file={src}", f"--ref_file={ref}")
    assert "of 2 pairs; BLEU" in proc.stdout, proc.stdout
    with open(smoke_run[0] / "eval_best_file-src_beam1.json", encoding="utf-8") as f:
        result = json.load(f)
    assert result["n_pairs"] == 2 and 0 <= result["bleu"] <= 100 and result["ppl"] > 1
    with open(smoke_run[0] / "eval_best_file-src_beam1.ppl.txt", encoding="utf-8") as f:
        per_sentence = [float(line) for line in f]
    # 4 and 3 target tokens (EOS included): the overall perplexity is their token-weighted mean in logs
    overall = math.exp((4 * math.log(per_sentence[0]) + 3 * math.log(per_sentence[1])) / 7)
    assert len(per_sentence) == 2 and overall == pytest.approx(result["ppl"], rel=1e-4)
    ref.write_text("s3 s2 s1\n", encoding="utf-8")
    proc = run_script("evaluate.py", f"--out_dir={smoke_run[0]}", f"--src_file={src}", f"--ref_file={ref}", check=False)
    assert proc.returncode != 0 and proc.stderr.strip().endswith("one reference per source line is needed")
    proc = run_script("evaluate.py", f"--out_dir={smoke_run[0]}", f"--src_file={src}", check=False)
    assert "src_file and ref_file go together" in proc.stderr

