"""PyTensor set-up shared by every entry point: float32, a project-local compile cache, and
the compile mode.

Import this module before anything else imports pytensor: `compiledir` can only be chosen
before pytensor's first import. A user's own PYTENSOR_FLAGS still win over these defaults.
"""
import os

_ROOT = os.path.dirname(os.path.abspath(__file__))
# A project-local cache means a second run (and the test suite) starts warm.
_DEFAULT_FLAGS = f"floatX=float32,compiledir={os.path.join(_ROOT, '.pytensor_cache')}"
os.environ["PYTENSOR_FLAGS"] = ",".join(
    f for f in (_DEFAULT_FLAGS, os.environ.get("PYTENSOR_FLAGS", "")) if f
)

# OpenMP threads (kernels.py) sleep when idle instead of spinning: spinning, they took the
# cores from numpy's BLAS threads and made the matmuls of a decoding step 2x slower.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import warnings  # noqa: E402

# pytensor warns at import that its C backend found no BLAS; dot products then run through
# numpy's own BLAS, which is what we measured and want (see README, Performance).
warnings.filterwarnings("ignore", message="PyTensor could not link to a BLAS")

import logging  # noqa: E402

import pytensor  # noqa: E402,F401

# A WARNING per compiled function ("Using NumPy C-API based implementation for BLAS
# functions"): the expected set-up here, said once in the README instead.
logging.getLogger("pytensor.tensor.blas").setLevel(logging.ERROR)
import pytensor.tensor as pt  # noqa: E402,F401

if pytensor.config.floatX != "float32":
    raise RuntimeError(
        f"floatX is {pytensor.config.floatX}; this project needs float32. "
        "Import backend before anything else imports pytensor."
    )

# The modes a config may name. "CVM" is PyTensor's C backend: measured fastest to compile
# and to run for this model on CPU (README, Performance). "NUMBA" is PyTensor 3's own default.
MODES = ("CVM", "NUMBA", "FAST_COMPILE")
DEFAULT_MODE = "CVM"


def compile_mode(name=DEFAULT_MODE):
    """Return the pytensor mode for `name`, or raise ValueError naming the choices.

    Without the Gemm rewrite: with no BLAS linked to its C code, PyTensor's Gemm goes through
    numpy's C API with extra copies, measured 2x slower than Dot22 (numpy.dot) followed by a
    fused elementwise op (README, Performance). Pass the mode to scan too, whose step
    function otherwise gets scan's own default rewrites."""
    if name not in MODES:
        raise ValueError(f"unknown compile mode {name!r}; choose one of {', '.join(MODES)}")
    return pytensor.compile.mode.get_mode(name).excluding("gemm_optimizer")
