"""Fault campaign: kill train.py with SIGKILL at random moments, many times, and count what
was lost. Re-runnable; the README's reliability table comes from it.

    python benchmarks/faults.py [--kills 20] [--steps 40]

A tiny reverse-task run checkpoints every step, and each checkpoint write pauses
--slow_save seconds between writing its temp file and renaming it (the SEQ2SEQ_TEST_SLOW_SAVE
hook), so many kills land mid-write. After every kill the latest checkpoint must load; the
run resumes with --init_from=resume. At the end the parameters and optimizer state must equal
those of an uninterrupted run, bit for bit, and log.jsonl must hold each step once.
Then SIGTERM and SIGINT are sent a few times each: each must save and exit 0. Last, the
bad-input campaign (benchmarks/bad_inputs.py: 36 mistakes, each a one-line error or the right
behaviour, every earlier good file byte-identical). Writes benchmarks/faults.json.
"""
import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
TINY = ["--embed_size=8", "--hidden_size=16", "--batch_size=8", "--eval_exact_match=0", "--num_samples=0",
        "--max_minutes=0", "--learning_rate=0.01", "--min_lr=0.01", "--warmup_iters=0", "--eval_interval=1"]


def wait_for_new_checkpoint(job, path, after, timeout=120):
    deadline = time.time() + timeout
    while job.poll() is None and time.time() < deadline:
        if os.path.exists(path) and os.path.getmtime(path) > after:
            return True
        time.sleep(0.02)
    return False


def main(argv=None):
    from checkpoint import read_arrays as read_npz
    from model import Model

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kills", type=int, default=20, help="SIGKILLs to land")
    ap.add_argument("--steps", type=int, default=40, help="training steps of the run")
    ap.add_argument("--slow_save", type=float, default=0.3, help="seconds each checkpoint write pauses")
    ap.add_argument("--signals", type=int, default=3, help="SIGTERMs and SIGINTs to send, each")
    ap.add_argument("--bad_inputs", type=int, default=1, help="1: also run benchmarks/bad_inputs.py's cases")
    ap.add_argument("--json", default=os.path.join(ROOT, "benchmarks", "faults.json"))
    args = ap.parse_args(argv)
    rng = np.random.default_rng(0)
    tmp = tempfile.mkdtemp(prefix="faults-")
    data = os.path.join(tmp, "data")
    subprocess.run([sys.executable, "data/reverse/prepare.py", "--out_dir", data, "--n_train", "300",
                    "--n_heldout", "20", "--max_len", "6"], cwd=ROOT, check=True, capture_output=True)

    def cmd(out, *extra):
        return [sys.executable, "train.py", f"--dataset={data}", f"--out_dir={out}", *TINY,
                f"--max_iters={args.steps}", *extra]

    reference = os.path.join(tmp, "reference")
    subprocess.run(cmd(reference), cwd=ROOT, check=True, capture_output=True)

    out = os.path.join(tmp, "killed")
    latest = os.path.join(out, "ckpt_latest.npz")
    env = dict(os.environ, SEQ2SEQ_TEST_SLOW_SAVE=str(args.slow_save))
    kills = mid_write = load_failures = 0
    lost_steps = []
    while kills < args.kills:
        resume = ["--init_from=resume"] if os.path.exists(latest) else []
        before = os.path.getmtime(latest) if resume else 0.0
        job = subprocess.Popen(cmd(out, *resume), cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
        wait_for_new_checkpoint(job, latest, before)
        time.sleep(rng.uniform(0.0, 1.5))
        if job.poll() is not None:
            break  # the run finished first
        writing = any(f.startswith(".tmp-") for f in os.listdir(out))
        job.send_signal(signal.SIGKILL)
        job.wait()
        kills += 1
        mid_write += writing
        try:
            step = Model.load(latest).checkpoint_state["step"]
        except Exception:
            load_failures += 1
            continue
        with open(os.path.join(out, "log.jsonl")) as f:
            logged = [json.loads(line)["step"] for line in f]
        lost_steps.append(max(logged, default=0) - step if logged else 0)
    subprocess.run(cmd(out, "--init_from=resume"), cwd=ROOT, check=True, capture_output=True)
    a, b = read_npz(os.path.join(reference, "ckpt_latest.npz")), read_npz(latest)
    keys = [k for k in a if k.startswith(("param/", "opt/"))]
    identical = sorted(keys) == sorted(k for k in b if k.startswith(("param/", "opt/"))) and all(
        np.array_equal(a[k], b[k]) for k in keys)
    with open(os.path.join(out, "log.jsonl")) as f:
        logged = [json.loads(line)["step"] for line in f]

    signal_results = {}
    for sig in (signal.SIGTERM, signal.SIGINT):
        ok, failures = 0, []
        for i in range(args.signals):
            run_dir = os.path.join(tmp, f"{sig.name}-{i}")
            job = subprocess.Popen(cmd(run_dir, "--max_iters=100000", "--eval_interval=2"), cwd=ROOT,
                                   stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            wait_for_new_checkpoint(job, os.path.join(run_dir, "ckpt_latest.npz"), 0.0)
            time.sleep(rng.uniform(0.0, 1.0))
            job.send_signal(sig)
            output, _ = job.communicate(timeout=120)
            step = Model.load(os.path.join(run_dir, "ckpt_latest.npz")).checkpoint_state["step"]
            good = job.returncode == 0 and f"interrupted at step {step}" in output
            ok += good
            if not good:
                failures.append({"returncode": job.returncode, "checkpoint_step": step, "output_tail": output[-1500:]})
        signal_results[sig.name] = {"sent": args.signals, "saved_and_exited_0": ok, "failures": failures}

    import bad_inputs

    bad = bad_inputs.run_cases() if args.bad_inputs else []
    result = {
        "bad_inputs": {"cases": len(bad), "as_expected": sum(r["as_expected"] for r in bad),
                       "good_files_byte_identical": sum(r["good_files_unchanged"] for r in bad),
                       "one_line_errors": sum(r["one_line_error"] for r in bad),
                       "not_as_expected": [r for r in bad if not (r["as_expected"] and r["good_files_unchanged"])]},
        "sigkill": {"kills": kills, "during_checkpoint_write": mid_write, "checkpoint_load_failures": load_failures,
                    "evaluations_logged_after_the_checkpoint_at_kill_time": lost_steps,
                    "final_params_and_optimizer_identical_to_uninterrupted": identical,
                    "log_steps_each_once": logged == list(range(1, args.steps + 1))},
        "signals": signal_results,
        "command": "python benchmarks/faults.py " + " ".join(argv or sys.argv[1:]),
    }
    with open(args.json, "w") as f:
        json.dump(result, f, indent=1)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
