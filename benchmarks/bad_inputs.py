"""Bad inputs, tried as a careless or hostile user would: every one must end in one true
line (or the right behaviour), and no earlier good checkpoint, zip, log or eval file may
change. Re-runnable; benchmarks/faults.py runs it after its kill campaign, or alone:

    python benchmarks/bad_inputs.py [--json benchmarks/bad_inputs.json]

Two good runs are made first (a next-sentence run G on a tiny reverse task, a translation run
T with references) plus an autoencoder zip; every case then works on them (or on a copy) and
the bytes of every file in them are compared before and after.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import warnings
import zipfile

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
TINY = ["--embed_size=8", "--hidden_size=16", "--batch_size=8", "--eval_exact_match=0", "--num_samples=0",
        "--max_minutes=0", "--learning_rate=0.01", "--min_lr=0.01", "--warmup_iters=0", "--eval_bleu=20"]


def python(*args, env=None):
    return subprocess.run([sys.executable, *map(str, args)], cwd=ROOT, capture_output=True, text=True, env=env)


def files(folder):
    return {os.path.relpath(os.path.join(d, n), folder): open(os.path.join(d, n), "rb").read()
            for d, _, names in os.walk(folder) for n in names if n != ".lock"}


# A run's records of each attempt, which a later attempt appends to (a resume cuts steps.jsonl
# back to its checkpoint): earlier content must stay, byte for byte, and more may follow.
APPEND_ONLY = ("train.log", "steps.jsonl")


def kept(before, after):
    """Whether every file of `before` ({name: bytes}) is in `after` unchanged, or, for the
    append-only records, with its earlier bytes first; and no other file is new."""
    new = {name for name in after if name not in before}
    return all(name in after and (after[name] == data or (os.path.basename(name) in APPEND_ONLY
                                                         and after[name].startswith(data)))
               for name, data in before.items()) and all(os.path.basename(n) in APPEND_ONLY for n in new)


def copy_with(src, dst, edit):
    shutil.copytree(src, dst)
    edit(dst)
    return dst


def rewrite_npz(path, **changes):
    with np.load(path, allow_pickle=False) as data:
        arrays = {k: data[k] for k in data.files}
    arrays.update(changes)
    np.savez(path, **{k: v for k, v in arrays.items() if v is not None})


def with_meta(folder, **facts):
    meta = json.load(open(os.path.join(folder, "meta.json"), encoding="utf-8"))
    meta.update(facts)
    json.dump(meta, open(os.path.join(folder, "meta.json"), "w", encoding="utf-8"))


def setup(tmp):
    """Datasets and good runs the cases use; returns a dict of paths."""
    p = {"tmp": tmp, "data": os.path.join(tmp, "data"), "G": os.path.join(tmp, "G"), "T": os.path.join(tmp, "T")}
    python("data/reverse/prepare.py", "--out_dir", p["data"], "--n_train", 200, "--n_heldout", 20, "--max_len", 6)
    words = {"god": "dios", "light": "luz", "water": "agua", "earth": "tierra", "day": "dia"}
    rng = np.random.default_rng(0)
    with open(os.path.join(tmp, "pairs.tsv"), "w", encoding="utf-8") as f:
        for _ in range(200):
            s = list(rng.choice(list(words), rng.integers(2, 5)))
            f.write(" ".join(s) + "\t" + " ".join(words[w] for w in s) + "\n")
    p["tr"] = os.path.join(tmp, "tr")
    python("data/text/prepare.py", "--pairs_tsv", os.path.join(tmp, "pairs.tsv"), "--out_dir", p["tr"], "--min_held", 20)
    for run, data, extra in (("G", p["data"], []), ("T", p["tr"], ["--attention=bahdanau"])):
        done = python("train.py", f"--dataset={data}", f"--out_dir={p[run]}", *TINY, *extra, "--max_iters=4",
                      "--eval_interval=2")
        assert done.returncode == 0, done.stderr
    python("evaluate.py", f"--out_dir={p['T']}", "--max_len=8")
    p["zip"] = os.path.join(tmp, "ae.zip")
    ae = python("-c", AE_SETUP.format(path=p["zip"]))
    assert ae.returncode == 0, ae.stderr
    return p


AE_SETUP = """
import sys; sys.path.insert(0, "data/sincos")
from sincos import make_generator
from autoencoder import NDS2SAEFactory
f = NDS2SAEFactory(); f.set_output({path!r}); f.input_dim = 2; f.output_dim = 1; f.layer_sizes = [8]
f.build().train(make_generator(50, 0), make_generator(20, 1), n_iterations=2, batch_size=10, display_step=1)
"""
AE_CALL = """
import sys; sys.path.insert(0, "data/sincos")
import numpy as np
from sincos import make_generator
from autoencoder import NDS2SAEFactory
f = NDS2SAEFactory(); f.set_output({path!r})
{setup}
try:
    {call}
except ValueError as err:
    sys.exit(f"error: {{err}}")
"""


def ae(setup="", call="f.build()"):
    return lambda p: ["-c", AE_CALL.format(path=p["zip"], setup=setup, call=call)]


def train(run, *flags, data="data"):
    return lambda p: ["train.py", f"--dataset={p[data]}", f"--out_dir={p[run] if run in p else run}", *TINY, *flags]


CELLS = "from benchmarks.broken_cells import Float64, TwoStates, Wide\n"


def user_cell(source, class_name):
    """train.py with --cell=<a module written from `source`>:<class_name>."""
    def args(p):
        folder = os.path.join(p["tmp"], "cells")
        os.makedirs(folder, exist_ok=True)
        module = f"cell_{abs(hash((source, class_name))) % 10**8}"
        open(os.path.join(folder, module + ".py"), "w").write(source)
        return ["-c", f"import sys; sys.path[:0] = [{folder!r}, {ROOT!r}]; import runpy; sys.argv = ['train.py', "
                      f"'--dataset={p['data']}', '--out_dir={os.path.join(p['tmp'], 'cellrun')}', "
                      f"'--cell={module}:{class_name}']; runpy.run_path('train.py', run_name='__main__')"]
    return args


def half_replaced(p):
    """A copy of the reverse dataset whose train.npz is another dataset's."""
    folder = os.path.join(p["tmp"], "half")
    copy_with(p["data"], folder, lambda d: shutil.copy(os.path.join(p["tr"], "train.npz"), os.path.join(d, "train.npz")))
    return folder


def no_leak(folder):
    """Whether no val or test pair of a prepared folder, nor its source, is also in train."""
    from dataset import load_dataset

    _, _, _, splits = load_dataset(folder)
    train = {(tuple(s), tuple(t)) for s, t in splits["train"]}
    sources = {s for s, _ in train}
    return all((tuple(s), tuple(t)) not in train and tuple(s) not in sources
               for name in ("val", "test") for s, t in splits[name])


def damaged_ckpt(name, edit):
    """sample.py on a copy of G whose ckpt_best.npz is edited by edit(path)."""
    def args(p):
        folder = os.path.join(p["tmp"], "ck-" + name)
        copy_with(p["G"], folder, lambda d: edit(os.path.join(d, "ckpt_best.npz")))
        return ["sample.py", f"--out_dir={folder}", "--start=s4 s5", "--max_len=5"]
    return args


def damaged_data(name, edit):
    """train.py on a copy of the prepared data edited by edit(folder), its manifest
    rewritten to match (the checks behind the manifest are the ones tried)."""
    from dataset import reseal

    def args(p):
        folder = os.path.join(p["tmp"], "data-" + name)
        copy_with(p["data"], folder, lambda d: (edit(d), reseal(d)))
        out = os.path.join(p["tmp"], "run-" + name)
        return ["train.py", f"--dataset={folder}", f"--out_dir={out}", *TINY, "--max_iters=2"]
    return args


def damaged_log(name, edit):
    """train.py resuming a copy of G whose log.jsonl is edited by edit(path)."""
    def args(p):
        folder = os.path.join(p["tmp"], "log-" + name)
        copy_with(p["G"], folder, lambda d: edit(os.path.join(d, "log.jsonl")))
        return ["train.py", f"--out_dir={folder}", "--init_from=resume", "--max_iters=6"]
    return args


def reorder_tgt_vocab(folder):
    meta = json.load(open(os.path.join(folder, "meta.json"), encoding="utf-8"))
    with_meta(folder, tgt_vocab=meta["tgt_vocab"][:4] + meta["tgt_vocab"][4:][::-1])


def noise(path):
    open(path, "wb").write(np.random.default_rng(0).bytes(2000))


def twice(path):
    with zipfile.ZipFile(path, "a") as z, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zipfile warns about the duplicate it is asked to write
        z.writestr("param/encoder.U.npy", b"")


def nan_param(path):
    with np.load(path) as d:
        U = d["param/encoder.U"].copy()
    U[0, 0] = np.nan
    rewrite_npz(path, **{"param/encoder.U": U})


def folder_log(path):
    os.remove(path)
    os.mkdir(path)


# (name, what it tries, args(p) -> argv after python, expected: "error" or a check(p, proc) -> bool)
CASES = [
    ("resume_lr_inf", "resume with --learning_rate=inf", train("G", "--init_from=resume", "--learning_rate=inf"), "error"),
    ("resume_lr_huge", "resume with a learning rate that overflows the weights",
     train("G", "--init_from=resume", "--max_iters=8", "--learning_rate=3e38", "--min_lr=3e38", "--grad_clip=0",
           "--optimizer=sgd"), "error"),
    ("scratch_over_run", "a scratch run into a folder holding a run", train("G", "--max_iters=2"), "error"),
    ("evaluate_other_ckpt", "evaluate.py --out_dir=<a run> with another run's --ckpt",
     lambda p: ["evaluate.py", f"--out_dir={p['T']}", f"--ckpt={os.path.join(p['tmp'], 'T2', 'ckpt_best.npz')}",
                "--max_len=8"],
     lambda p, proc: proc.returncode == 0 and os.path.exists(os.path.join(p["tmp"], "T2", "eval_best_test_beam1.json"))),
    ("resume_flipped_data", "resume after the data was prepared again with reverse_source flipped",
     lambda p: ["train.py", f"--dataset={copy_with(p['data'], os.path.join(p['tmp'], 'flip'), lambda d: with_meta(d, reverse_source=True))}",
                f"--out_dir={p['G']}", "--init_from=resume", "--max_iters=6"], "error"),
    ("ckpt_nan", "sample.py on a checkpoint with a NaN weight", damaged_ckpt("nan", nan_param), "error"),
    ("ckpt_noise", "sample.py on 2,000 random bytes", damaged_ckpt("noise", noise), "error"),
    ("ckpt_twice", "sample.py on a checkpoint with a duplicated member", damaged_ckpt("twice", twice), "error"),
    ("ckpt_strings", "sample.py on a checkpoint whose weights are strings",
     damaged_ckpt("str", lambda f: rewrite_npz(f, **{"param/encoder.U": np.full((16, 48), "x")})), "error"),
    ("ckpt_short_vocab", "sample.py on a checkpoint with a short vocabulary",
     damaged_ckpt("vocab", lambda f: rewrite_npz(f, src_vocab=np.array(["<pad>", "<unk>", "<s>", "</s>"]))), "error"),
    ("ckpt_no_opt", "resume from a checkpoint without optimizer state",
     lambda p: (copy_with(p["G"], os.path.join(p["tmp"], "noopt"), lambda d: rewrite_npz(
         os.path.join(d, "ckpt_latest.npz"), **{k: None for k in np.load(os.path.join(d, "ckpt_latest.npz")).files
                                                if k.startswith("opt/")})),
                ["train.py", f"--out_dir={os.path.join(p['tmp'], 'noopt')}", "--init_from=resume", "--max_iters=6"])[1],
     "error"),
    ("data_tgt_id", "a target id beyond the target vocabulary",
     damaged_data("tgt", lambda d: with_meta(d, tgt_vocab=json.load(open(os.path.join(d, "meta.json")))["tgt_vocab"][:-2])),
     "error"),
    ("data_float_ids", "float token ids", damaged_data("float", lambda d: rewrite_npz(
        os.path.join(d, "train.npz"), src=np.load(os.path.join(d, "train.npz"))["src"].astype(np.float32))), "error"),
    ("data_empty_val", "an empty validation split", damaged_data("empty", lambda d: rewrite_npz(
        os.path.join(d, "val.npz"), src=np.zeros(0, np.int32), tgt=np.zeros(0, np.int32),
        src_len=np.zeros(0, np.int64), tgt_len=np.zeros(0, np.int64))), "error"),
    ("meta_list", "meta.json holding a JSON list",
     damaged_data("list", lambda d: open(os.path.join(d, "meta.json"), "w").write("[1, 2]")), "error"),
    ("meta_vocab_number", "meta.json with a number for a vocabulary",
     damaged_data("num", lambda d: with_meta(d, src_vocab=7)), "error"),
    ("out_dir_file", "out_dir that is a file",
     lambda p: (open(os.path.join(p["tmp"], "afile"), "w").close(), train(os.path.join(p["tmp"], "afile"))(p))[1], "error"),
    ("out_dir_readonly", "out_dir where nothing can be written", train("/proc/seq2seq_out"), "error"),
    ("log_folder", "log.jsonl that is a folder", damaged_log("folder", folder_log), "error"),
    ("log_binary", "log.jsonl with non-UTF-8 bytes", damaged_log("bin", lambda f: open(f, "ab").write(b"\xff\n")), "error"),
    ("log_null_step", 'log.jsonl holding {"step": null}',
     damaged_log("null", lambda f: open(f, "w").write('{"step": null}\n' + open(f).read())), "error"),
    ("toml_latin1", "a non-UTF-8 TOML file",
     lambda p: (open(os.path.join(p["tmp"], "l1.toml"), "wb").write(b"# caf\xe9\n"),
                train(os.path.join(p["tmp"], "x"))(p) + [os.path.join(p["tmp"], "l1.toml")])[1], "error"),
    ("seed_negative", "--seed=-1", train(os.path.join("/tmp", "unused-run"), "--seed=-1"), "error"),
    ("hidden_huge", "--hidden_size=100000000", train(os.path.join("/tmp", "unused-run"), "--hidden_size=100000000"),
     "error"),
    ("evaluate_ckpt_only", "evaluate.py --ckpt=PATH without --out_dir",
     lambda p: ["evaluate.py", f"--ckpt={os.path.join(p['tmp'], 'T2', 'ckpt_latest.npz')}", "--max_len=8"],
     lambda p, proc: proc.returncode == 0 and os.path.exists(os.path.join(p["tmp"], "T2", "eval_latest_test_beam1.json"))),
    ("plot_missing_folder", "--plot_attention into a missing folder",
     lambda p: ["sample.py", f"--out_dir={p['T']}", "--start=god", "--plot_attention=/nonexistent/a.png"], "error"),
    ("plot_no_suffix", "--plot_attention=heat names the file it writes",
     lambda p: ["sample.py", f"--out_dir={p['T']}", "--start=god", f"--plot_attention={os.path.join(p['tmp'], 'heat')}",
                "--max_len=4"],
     lambda p, proc: proc.returncode == 0 and f"attention heatmap: {os.path.join(p['tmp'], 'heat.png')}" in proc.stdout
     and os.path.exists(os.path.join(p["tmp"], "heat.png"))),
    ("temperature_inf", "--temperature=inf", lambda p: ["sample.py", f"--out_dir={p['G']}", "--start=s4", "--temperature=inf"],
     "error"),
    ("length_norm_nan", "--length_norm=nan",
     lambda p: ["evaluate.py", f"--out_dir={p['T']}", "--beam_size=2", "--length_norm=nan"], "error"),
    ("ae_lr_inf", "autoencoder lrargs lr=inf", ae("f.lrtype = 'constant'; f.lrargs = dict(lr=float('inf'))"), "error"),
    ("ae_clip_nan", "autoencoder grad_clip=nan", ae("f.grad_clip = float('nan')"), "error"),
    ("ae_keep_prob", 'autoencoder keep_prob="abc"', ae("f.keep_prob = 'abc'"), "error"),
    ("ae_batch_0", "autoencoder predict with batch_size=0", ae(call="f.build().predict([np.zeros((3, 2))], batch_size=0)"),
     "error"),
    ("ae_batch_neg", "autoencoder encode with batch_size=-1", ae(call="f.build().encode([np.zeros((3, 2))], batch_size=-1)"),
     "error"),
    ("ae_complex", "autoencoder predict on complex input", ae(call="f.build().predict([np.zeros((3, 2)) + 1j])"), "error"),
    # Round three: datasets replaced as a whole, no hangs, no leaks, a user's broken cell.
    ("data_half_replaced", "a dataset whose train.npz was replaced and meta.json not (a prepare killed between them)",
     lambda p: ["train.py", f"--dataset={half_replaced(p)}", f"--out_dir={os.path.join(p['tmp'], 'run-half')}", *TINY],
     "error"),
    ("prepare_foreign_folder", "prepare.py --out_dir=<a folder of the user's with a meta.json and a train.npz>",
     lambda p: (os.makedirs(os.path.join(p["tmp"], "mine"), exist_ok=True),
                open(os.path.join(p["tmp"], "mine", "meta.json"), "w").write('{"my": "notes"}'),
                open(os.path.join(p["tmp"], "mine", "train.npz"), "w").write("mine"),
                ["data/text/prepare.py", "--pairs_tsv", os.path.join(p["tmp"], "pairs.tsv"), "--out_dir",
                 os.path.join(p["tmp"], "mine"), "--min_held", "20"])[-1],
     lambda p, proc: proc.returncode != 0 and "holds files no prepare script wrote" in proc.stderr
     and open(os.path.join(p["tmp"], "mine", "train.npz")).read() == "mine"),
    ("prepare_stale_staging", "prepare.py into a folder a killed prepare left a .prepare-* staging folder in",
     lambda p: (shutil.copytree(p["tr"], os.path.join(p["tmp"], "stale")),
                os.makedirs(os.path.join(p["tmp"], "stale", ".prepare-killed")),
                ["data/text/prepare.py", "--pairs_tsv", os.path.join(p["tmp"], "pairs.tsv"), "--out_dir",
                 os.path.join(p["tmp"], "stale"), "--min_held", "20"])[-1],
     lambda p, proc: proc.returncode == 0 and not os.path.exists(os.path.join(p["tmp"], "stale", ".prepare-killed"))),
    ("prepare_long_line", "prepare.py on one 2 MB line without a sentence end",
     lambda p: (open(os.path.join(p["tmp"], "long.txt"), "w").write(" ".join(["word"] * 400_000)),
                ["data/text/prepare.py", "--input", os.path.join(p["tmp"], "long.txt"), "--out_dir",
                 os.path.join(p["tmp"], "long")])[1], "error"),
    ("prepare_utf16", "prepare.py on a UTF-16 text file",
     lambda p: (open(os.path.join(p["tmp"], "u16.txt"), "wb").write("One. Two. Three.\n".encode("utf-16")),
                ["data/text/prepare.py", "--input", os.path.join(p["tmp"], "u16.txt"), "--out_dir",
                 os.path.join(p["tmp"], "u16")])[1],
     lambda p, proc: proc.returncode != 0 and "UTF-16" in proc.stderr.strip().splitlines()[-1]),
    ("prepare_twice_the_book", "prepare.py --input book.txt book.txt (every held-out pair also in train)",
     lambda p: (open(os.path.join(p["tmp"], "book.txt"), "w").write(" ".join(f"Sentence {i} is here." for i in range(300))),
                ["data/text/prepare.py", "--input", os.path.join(p["tmp"], "book.txt"), os.path.join(p["tmp"], "book.txt"),
                 "--out_dir", os.path.join(p["tmp"], "book"), "--min_held", "20"])[1],
     lambda p, proc: proc.returncode == 0 and no_leak(os.path.join(p["tmp"], "book"))),
    ("prepare_sp_vocab_5", "prepare.py --tokenizer=sentencepiece --vocab_size=5",
     lambda p: ["data/text/prepare.py", "--pairs_tsv", os.path.join(p["tmp"], "pairs.tsv"), "--out_dir",
                os.path.join(p["tmp"], "sp5"), "--tokenizer=sentencepiece", "--vocab_size=5", "--min_held", "20"], "error"),
    ("sample_a_million", "sample.py --num_samples=1000000",
     lambda p: ["sample.py", f"--out_dir={p['G']}", "--start=s4", "--num_samples=1000000"], "error"),
    ("cell_import_fails", "--cell=<a module that raises at import>", user_cell("raise RuntimeError('no GPU here')", "X"),
     "error"),
    ("cell_syntax_error", "--cell=<a module with a syntax error>", user_cell("def broken(:\n", "X"), "error"),
    ("cell_wrong_shape", "--cell=<a cell whose recur returns (B, 2H)>", user_cell(CELLS, "Wide"), "error"),
    ("cell_float64", "--cell=<a cell whose recur returns a float64 state>", user_cell(CELLS, "Float64"), "error"),
    ("cell_two_states", "--cell=<a cell whose recur returns 2 states for n_states 1>", user_cell(CELLS, "TwoStates"), "error"),
    ("ae_endless_valid", "autoencoder train with a validation generator that never says last_batch=True",
     ae("endless = lambda n: (lambda g: (lambda b: g(b)[:2] + (False,)))(make_generator(20, 1))(n)",
        "f.build().train(make_generator(50, 0), endless, n_iterations=3, batch_size=10, display_step=1)"), "error"),
    # Round four: JAX on one sentence, decoding settings that cannot lie, bounds, the new plumbing.
    ("jax_beam_one_sentence", "sample.py --mode=JAX --beam_size=3 on one sentence",
     lambda p: ["sample.py", f"--out_dir={p['G']}", "--start=s4 s5", "--mode=JAX", "--beam_size=3", "--max_len=5"],
     lambda p, proc: proc.returncode == 0 and proc.stdout.count("log p =") == 3),
    ("jax_evaluate_one_pair", "evaluate.py --mode=JAX --limit=1 --beam_size=2",
     lambda p: ["evaluate.py", f"--ckpt={os.path.join(p['tmp'], 'T2', 'ckpt_best.npz')}", "--mode=JAX", "--limit=1",
                "--beam_size=2", "--max_len=6"],
     lambda p, proc: proc.returncode == 0 and "of 1 pairs; BLEU" in proc.stdout),
    ("temperature_tiny", "sample.py --temperature=1e-45 (float32 underflow): greedy, as temperature 0",
     lambda p: ["sample.py", f"--out_dir={p['G']}", "--start=s4 s5", "--temperature=1e-45", "--max_len=5"],
     lambda p, proc: proc.returncode == 0 and proc.stdout == python(
         "sample.py", f"--out_dir={p['G']}", "--start=s4 s5", "--temperature=0", "--max_len=5").stdout),
    ("beam_with_temperature", "sample.py --beam_size=3 --temperature=0.5 (beam search does not sample)",
     lambda p: ["sample.py", f"--out_dir={p['G']}", "--start=s4", "--beam_size=3", "--temperature=0.5"], "error"),
    ("max_len_huge", "sample.py --max_len=1000000", lambda p: ["sample.py", f"--out_dir={p['G']}", "--start=s4",
                                                                "--max_len=1000000"], "error"),
    ("beam_huge", "sample.py --beam_size=1000000000", lambda p: ["sample.py", f"--out_dir={p['G']}", "--start=s4",
                                                                  "--beam_size=1000000000"], "error"),
    ("max_minutes_huge", "--max_minutes=1e306 (finite)", train(os.path.join("/tmp", "unused-run"), "--max_minutes=1e306"),
     "error"),
    ("eval_files_mismatch", "evaluate.py --src_file of 2 lines with a --ref_file of 1",
     lambda p: (open(os.path.join(p["tmp"], "two.txt"), "w").write("god\nlight\n"),
                open(os.path.join(p["tmp"], "one.txt"), "w").write("dios\n"),
                ["evaluate.py", f"--ckpt={os.path.join(p['tmp'], 'T2', 'ckpt_best.npz')}",
                 f"--src_file={os.path.join(p['tmp'], 'two.txt')}", f"--ref_file={os.path.join(p['tmp'], 'one.txt')}"])[-1],
     "error"),
    ("average_no_snapshots", "average.py on a run folder without ckpt_step<N>.npz",
     lambda p: (os.makedirs(os.path.join(p["tmp"], "nosnap"), exist_ok=True),
                ["average.py", f"--out_dir={os.path.join(p['tmp'], 'nosnap')}"])[-1], "error"),
    ("average_over_latest", "average.py --output=latest (train.py's own checkpoint)",
     lambda p: ["average.py", f"--out_dir={p['G']}", "--output=latest"], "error"),
    ("finetune_wider", "train.py --init_from=<a checkpoint> --hidden_size=32 (another architecture)",
     lambda p: ["train.py", f"--dataset={p['data']}", f"--init_from={os.path.join(p['G'], 'ckpt_best.npz')}",
                f"--out_dir={os.path.join(p['tmp'], 'ft')}", "--hidden_size=32", "--max_iters=2"], "error"),
    ("init_from_text", "train.py --init_from=model.txt", train(os.path.join("/tmp", "unused-run"), "--init_from=model.txt"),
     "error"),
    # last: it prepares T's dataset again, with the target vocabulary in another order
    ("evaluate_new_vocab", "evaluate.py after the data was prepared again with another vocabulary",
     lambda p: reorder_tgt_vocab(p["tr"]) or ["evaluate.py", f"--out_dir={p['T']}", "--max_len=8"], "error"),
]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", default=os.path.join(ROOT, "benchmarks", "bad_inputs.json"))
    args = ap.parse_args(argv)
    results = run_cases()
    summary = {"cases": len(results), "as_expected": sum(r["as_expected"] for r in results),
               "one_line_errors": sum(r["one_line_error"] for r in results),
               "good_files_byte_identical": sum(r["good_files_unchanged"] for r in results), "results": results}
    with open(args.json, "w", encoding="utf-8") as f:
        json.dump(summary, f, indent=1)
    print(json.dumps({k: v for k, v in summary.items() if k != "results"}))
    for r in results:
        print(f"{'ok ' if r['as_expected'] and r['good_files_unchanged'] else 'BAD'} {r['case']}: {r['message']}")


def run_cases():
    tmp = tempfile.mkdtemp(prefix="bad-inputs-")
    p = setup(tmp)
    python("train.py", f"--dataset={p['tr']}", f"--out_dir={os.path.join(tmp, 'T2')}", *TINY, "--max_iters=2")
    good = {name: files(p[name]) for name in ("G", "T")}
    good["zip"] = {"ae.zip": open(p["zip"], "rb").read()}
    results = []
    for name, what, make_args, expected in CASES:
        proc = python(*make_args(p))
        lines = (proc.stderr.strip() or proc.stdout.strip()).splitlines()
        one_line = proc.returncode != 0 and "Traceback" not in proc.stderr and bool(lines) and lines[-1].startswith("error: ")
        ok = one_line if expected == "error" else bool(expected(p, proc))
        unchanged = all(kept(v, files(p[k])) for k, v in good.items() if k != "zip") and \
            open(p["zip"], "rb").read() == good["zip"]["ae.zip"]
        results.append({"case": name, "tried": what, "expected": "one-line error" if expected == "error" else "works",
                        "as_expected": ok, "one_line_error": one_line, "good_files_unchanged": unchanged,
                        "message": lines[-1] if lines else ""})
    shutil.rmtree(tmp, ignore_errors=True)
    return results


if __name__ == "__main__":
    main()
