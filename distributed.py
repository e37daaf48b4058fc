"""Data-parallel training over MPI (mpi4py), used by train.py when launched by mpiexec:

    mpiexec -n 4 python train.py <the usual flags>

Every rank builds the same model and walks the same global batch order (a function of
(seed, epoch)); rank r takes rows r, r+N, r+2N, ... of each global batch. Each rank computes
the gradient of its shard's *summed* token loss with its compiled function; one Allreduce on
one flat float32 buffer sums the gradients of every parameter, the token loss and the token
count (and a stop flag, and rank 0's learning rate) across ranks. Dividing by the global token count gives exactly the
gradient of the global batch's mean loss, so N ranks with global batch B follow one process
with batch B. Every rank then applies the same clipped optimizer update, so the parameters stay
identical; a checksum comparison every `check_interval` steps stops the job if they do not.

Plain `python train.py` never imports mpi4py.
"""
import os
import sys

import numpy as np

from flags import FLOATX
import compiled
import pytensor
import pytensor.tensor as pt

# Set by MPI launchers: MPICH/hydra and Intel MPI (PMI_*), Open MPI, PMIx (srun --mpi=pmix).
LAUNCHER_VARIABLES = ("PMI_SIZE", "PMI_RANK", "OMPI_COMM_WORLD_SIZE", "PMIX_RANK")


class DivergenceError(RuntimeError):
    """The ranks' parameters differ; the message names the step and the checksums."""


def world():
    """MPI.COMM_WORLD when launched by an MPI launcher with more than one process, else None."""
    if not any(name in os.environ for name in LAUNCHER_VARIABLES):
        return None
    try:
        from mpi4py import MPI
    except ImportError:
        raise SystemExit("error: started by an MPI launcher but mpi4py is not installed "
                         "(pip install -r requirements-mpi.txt)") from None
    comm = MPI.COMM_WORLD
    return comm if comm.Get_size() > 1 else None


def exit(status):
    """End this process as sys.exit(status) would (0 or None: success; an int: that code;
    a message: printed to stderr, code 1); when it fails as one rank of an MPI job, the
    whole job is aborted, so that no rank waits for it in an all-reduce."""
    if status in (None, 0):
        sys.exit(0)
    if not isinstance(status, int):
        print(status, file=sys.stderr, flush=True)
    if any(name in os.environ for name in LAUNCHER_VARIABLES) and "mpi4py.MPI" in sys.modules:
        comm = sys.modules["mpi4py.MPI"].COMM_WORLD
        if comm.Get_size() > 1:
            comm.Abort(status if isinstance(status, int) else 1)
    sys.exit(status if isinstance(status, int) else 1)


def check_same_settings(comm, settings):
    """ConfigError on every rank, naming each setting and what each rank was given, unless
    every rank has the same `settings` (a dict): ranks given another seed, size or dataset
    would train on another batch order or fail in the all-reduce. Nothing to check in one
    process (comm None)."""
    import json

    from configurator import ConfigError

    if comm is None:
        return
    every = comm.allgather(settings)
    differ = [key for key in settings if len({json.dumps(s.get(key), sort_keys=True) for s in every}) > 1]
    if differ:
        said = "; ".join(f"{key}: " + ", ".join(f"{s.get(key)!r} on rank {r}" for r, s in enumerate(every))
                         for key in differ)
        raise ConfigError(f"the MPI ranks were given different settings ({said}); every rank must run the same command")


def checksum(model):
    """A float64 fingerprint of every parameter; identical params give identical sums."""
    return float(sum(np.sum(p.get_value(borrow=True), dtype=np.float64) for p in model.params))


def compile_grad(model):
    """Half 1 of a step: `f(src, tgt) -> [summed nll, n_tokens, *gradients of the summed
    objective]` (the nll, or the label-smoothed loss), one gradient per trainable param, no
    parameter updates."""
    def build():
        src, tgt = pt.imatrix("src"), pt.imatrix("tgt")
        model.dropout.begin()
        nll, mask, objective = model.token_nll(src, tgt, train=True)
        total = pt.sum(objective, dtype=FLOATX)
        outputs = [pt.sum(nll, dtype=FLOATX), pt.sum(mask, dtype=FLOATX),
                   *pytensor.grad(total, model.trainable_params())]
        return compiled.function([src, tgt], outputs, model.mode, model.dropout.updates(), pad=True)

    return compiled.cached(model.functions, "grad", build)


def compile_apply(model, optimizer="adam", grad_clip=1.0):
    """Half 2: `f(lr, scale, *summed gradients) -> grad_norm` applies the optimizer to
    scale * gradients (scale = 1 / global token count), as Model.compile_train does."""
    def build():
        lr = pt.scalar("lr", dtype=FLOATX)
        scale = pt.scalar("scale", dtype=FLOATX)
        grads = [p.type(f"grad.{p.name}") for p in model.trainable_params()]
        updates, norm = model.training_updates(None, [g * scale for g in grads], lr, optimizer, grad_clip)
        return compiled.function([lr, scale, *grads], norm, model.mode, updates)

    return compiled.cached(model.functions, ("apply", optimizer, grad_clip), build)


def training_step(model, comm, batcher, optimizer, grad_clip, check_interval):
    """`step(indices, lr, stop) -> (loss, n_tokens, grad_norm, stop)`: one fused compiled
    function in one process (comm None); gradients, one all-reduce and the update under MPI."""
    if comm is not None:
        return DataParallelStep(model, comm, batcher, optimizer, grad_clip, check_interval)
    fused = model.compile_train(optimizer, grad_clip)

    def step(indices, lr, stop):
        loss, n_tokens, norm = fused(*batcher.batch(indices), np.float32(lr))
        return float(loss), float(n_tokens), float(norm), stop

    return step


class DataParallelStep:
    """`step(indices, lr, stop) -> (loss, n_tokens, grad_norm, stop)` for one global batch.

    loss and n_tokens are global (every rank gets the same); `stop` is True on every rank if
    it was True on any, which keeps decisions such as a time limit in step across ranks. The
    learning rate applied is rank 0's (a time-based schedule reads rank 0's clock).
    """

    def __init__(self, model, comm, batcher, optimizer="adam", grad_clip=1.0, check_interval=100):
        from mpi4py import MPI

        self.MPI = MPI
        self.model, self.comm, self.batcher = model, comm, batcher
        self.rank, self.size = comm.Get_rank(), comm.Get_size()
        self.grad_fn = compile_grad(model)
        self.apply_fn = compile_apply(model, optimizer, grad_clip)
        self.shapes = [p.get_value(borrow=True).shape for p in model.trainable_params()]
        self.sizes = [int(np.prod(s)) for s in self.shapes]
        self.buffer = np.zeros(sum(self.sizes) + 4, dtype=np.float32)  # grads, nll, tokens, stop, lr
        self.check_interval = check_interval
        self.steps = 0

    def bytes_per_step(self):
        return self.buffer.nbytes

    def __call__(self, indices, lr, stop=False):
        MPI = self.MPI
        shard = indices[self.rank :: self.size]
        buf = self.buffer
        if len(shard):
            nll, n_tokens, *grads = self.grad_fn(*self.batcher.batch(shard))
            np.concatenate([g.ravel() for g in grads], out=buf[:-4])
            buf[-4:-1] = (nll, n_tokens, float(stop))
        else:  # a global batch smaller than the number of ranks
            buf[:] = 0.0
            buf[-2] = float(stop)
        buf[-1] = lr if self.rank == 0 else 0.0
        self.comm.Allreduce(MPI.IN_PLACE, buf, op=MPI.SUM)  # the one collective per step
        nll, n_tokens, stop, lr = float(buf[-4]), float(buf[-3]), bool(buf[-2] > 0), buf[-1]
        grads, start = [], 0
        for shape, size in zip(self.shapes, self.sizes):
            grads.append(buf[start : start + size].reshape(shape))
            start += size
        norm = float(self.apply_fn(np.float32(lr), np.float32(1.0 / max(n_tokens, 1.0)), *grads))
        self.steps += 1
        if self.check_interval and self.steps % self.check_interval == 0:
            self.check_identical()
        return nll / max(n_tokens, 1.0), n_tokens, norm, stop

    def check_identical(self):
        sums = self.comm.allgather(checksum(self.model))
        if len(set(sums)) > 1:
            raise DivergenceError(f"parameters differ across ranks after {self.steps} steps of this "
                                  f"run: checksums {sums}")
