"""Data-parallel training under mpiexec: 2 ranks follow 1 process exactly, a dead rank stops
the job instead of hanging it, and its last checkpoint resumes with another rank count."""
import importlib.util
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from helpers import ROOT, log_rows as rows, run_command
from checkpoint import read_arrays as read_npz

MPIEXEC = os.path.join(os.path.dirname(sys.executable), "mpiexec")
pytestmark = pytest.mark.skipif(
    not os.path.exists(MPIEXEC) or importlib.util.find_spec("mpi4py") is None,
    reason="needs mpi4py and mpich (pip install -r requirements-mpi.txt)",
)
FLAGS = ["--embed_size=8", "--hidden_size=16", "--batch_size=8", "--eval_exact_match=0", "--num_samples=0",
         "--max_minutes=0", "--learning_rate=0.01", "--min_lr=0.01", "--warmup_iters=0", "--mpi_check_interval=2"]


def train_cmd(data, out, *extra):
    return [sys.executable, os.path.join(ROOT, "train.py"), f"--dataset={data}", f"--out_dir={out}", *FLAGS, *extra]


def run(cmd):
    # One BLAS thread per process, so that two ranks fit on two cores.
    return run_command(cmd, env=dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1"))


@pytest.fixture
def data(tiny_reverse):
    return tiny_reverse


def test_two_ranks_equal_one_process(data, tmp_path):
    single, parallel = tmp_path / "single", tmp_path / "mpi"
    run(train_cmd(data, single, "--max_iters=6", "--eval_interval=2"))
    proc = run([MPIEXEC, "-n", "2", *train_cmd(data, parallel, "--max_iters=6", "--eval_interval=2")])
    assert "2 MPI ranks" in proc.stdout
    a, b = rows(single), rows(parallel)
    assert [r["step"] for r in a] == [r["step"] for r in b] == [2, 4, 6]
    for ra, rb in zip(a, b):
        assert rb["train_loss"] == pytest.approx(ra["train_loss"], abs=1e-5)
        assert rb["val_loss"] == pytest.approx(ra["val_loss"], abs=1e-5)
    pa, pb = read_npz(single / "ckpt_latest.npz"), read_npz(parallel / "ckpt_latest.npz")
    for key in (k for k in pa if k.startswith(("param/", "opt/"))):
        np.testing.assert_allclose(pb[key], pa[key], atol=1e-5, err_msg=key)


def rank_pid(rank, marker):
    """The pid of the MPI rank `rank` whose command line contains `marker`."""
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmdline = open(f"/proc/{pid}/cmdline", "rb").read()
            environ = open(f"/proc/{pid}/environ", "rb").read().split(b"\0")
        except OSError:
            continue
        if marker.encode() in cmdline and b"train.py" in cmdline and f"PMI_RANK={rank}".encode() in environ:
            return int(pid)
    return None


def test_a_dead_rank_stops_the_job_and_the_checkpoint_resumes(data, tmp_path):
    out = tmp_path / "killed"
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
    job = subprocess.Popen([MPIEXEC, "-n", "2", *train_cmd(data, out, "--max_iters=100000", "--eval_interval=2")],
                           cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.time() + 300
        while not (out / "ckpt_latest.npz").exists():
            assert job.poll() is None and time.time() < deadline, "no checkpoint appeared"
            time.sleep(0.5)
        pid = rank_pid(1, str(out))
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        job.wait(timeout=60)  # a hang would time out here
        assert job.returncode != 0
    finally:
        if job.poll() is None:
            job.kill()
    step = json.loads(str(read_npz(out / "ckpt_latest.npz")["meta"]))["state"]["step"]
    run(train_cmd(data, out, "--init_from=resume", f"--max_iters={step + 2}", "--eval_interval=2"))
    assert rows(out)[-1]["step"] == step + 2


@pytest.mark.parametrize("case", ["run_in_folder", "locked_folder", "bad_data"])
def test_a_refusal_on_rank_0_alone_ends_every_rank(data, tmp_path, case):
    """Checks only rank 0 makes (the run folder, its lock, and an error on one rank in
    general) end the whole job promptly with a non-zero exit and the one-line refusal."""
    out = tmp_path / "run"
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
    expected = {"run_in_folder": "holds a run", "locked_folder": "in use by another training run",
                "bad_data": "no pairs"}[case]
    if case == "run_in_folder":
        run(train_cmd(data, out, "--max_iters=2", "--eval_interval=2"))
    holder = None
    if case == "locked_folder":  # another run holds out/'s lock
        holder = subprocess.Popen([sys.executable, "-c", "import sys, time; sys.path.insert(0, sys.argv[1]); "
                                   "from runs import RunFolder; RunFolder(sys.argv[2]); print('held', flush=True); "
                                   "time.sleep(120)", ROOT, str(out)], stdout=subprocess.PIPE, text=True)
        assert holder.stdout.readline().strip() == "held"
    dataset = data
    if case == "bad_data":  # rank 0 reads val; an empty val split is refused there
        from dataset import reseal

        dataset = tmp_path / "data"
        import shutil

        shutil.copytree(data, dataset)
        np.savez(dataset / "val.npz", src=np.zeros(0, np.int32), tgt=np.zeros(0, np.int32),
                 src_len=np.zeros(0, np.int64), tgt_len=np.zeros(0, np.int64))
        reseal(dataset)
    try:
        started = time.time()
        proc = subprocess.run([MPIEXEC, "-n", "2", *train_cmd(dataset, out, "--max_iters=4")], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode != 0 and expected in proc.stderr, proc.stderr[-2000:]
        assert time.time() - started < 60
    finally:
        if holder is not None:
            holder.kill()


@pytest.mark.parametrize("rank1, expected", [
    (["--batch_size=0"], "batch_size=0: must be positive"),
    (["--seed=2"], "the MPI ranks were given different settings (seed: 1337 on rank 0, 2 on rank 1)"),
    (["--hidden_size=32"], "the MPI ranks were given different settings (hidden_size: 16 on rank 0, 32 on rank 1)"),
])
def test_ranks_that_disagree_end_the_job_promptly_in_one_line(data, tmp_path, rank1, expected):
    """A refusal on one rank only, before MPI's first collective, and a setting that differs
    between ranks (another batch order, another model) end every rank with one line."""
    out = tmp_path / "run"
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
    started = time.time()
    proc = subprocess.run([MPIEXEC, "-n", "1", *train_cmd(data, out, "--max_iters=4"), ":",
                           "-n", "1", *train_cmd(data, out, "--max_iters=4", *rank1)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and expected in proc.stderr, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr and time.time() - started < 60
