"""The process's PyTensor flags: float32, a project-local compile cache, PyTensor's C backend
as the default mode. Import this module before anything imports pytensor (pytensor reads its
flags at its first import); a user's own PYTENSOR_FLAGS still win over these defaults."""
import ctypes
import ctypes.util
import logging
import os
import warnings

ROOT = os.path.dirname(os.path.abspath(__file__))
FLOATX = "float32"

# A project-local cache: a second run (and the test suite) starts warm. CVM, not PyTensor 3's
# default Numba, which cold-compiles a model in about 90 s (docs/performance.md).
_DEFAULTS = f"floatX={FLOATX},mode=CVM,compiledir={os.path.join(ROOT, '.pytensor_cache')}"
os.environ["PYTENSOR_FLAGS"] = ",".join(f for f in (_DEFAULTS, os.environ.get("PYTENSOR_FLAGS", "")) if f)
# OpenMP threads (the kernels) sleep when idle instead of spinning: spinning, they took the
# cores from numpy's BLAS threads and made the matmuls of a decoding step 2x slower.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
# No BLAS linked to PyTensor's C code: dot products run through numpy's BLAS, as intended.
warnings.filterwarnings("ignore", message="PyTensor could not link to a BLAS")


def keep_large_arrays_mapped(limit=1 << 30):
    """Serve arrays up to `limit` bytes from malloc's heap and keep freed memory mapped
    (glibc only; elsewhere a no-op). By default glibc maps every array over 32 MB afresh and
    unmaps it when freed, so each step's (T*B, V) logits and their gradient paid a page fault
    per 4 KB page at every call: a 1920 x 6,000 bias add took 12.6 ms instead of 3.6
    (docs/performance.md). Returns whether the settings took."""
    path = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(path)
        M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # malloc.h
        return bool(libc.mallopt(M_MMAP_THRESHOLD, limit) and libc.mallopt(M_TRIM_THRESHOLD, 2 * limit))
    except (OSError, AttributeError, TypeError):
        return False


keep_large_arrays_mapped()

import pytensor  # noqa: E402  (after the flags above)

# A WARNING per compiled function ("Using NumPy C-API based implementation for BLAS functions"):
# the expected set-up here, said once in the README instead.
logging.getLogger("pytensor.tensor.blas").setLevel(logging.ERROR)

if pytensor.config.floatX != FLOATX:
    raise RuntimeError(f"floatX is {pytensor.config.floatX}; this project needs {FLOATX}. "
                       "Import flags before anything else imports pytensor.")
