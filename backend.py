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


# ---- fewer C modules to compile -----------------------------------------------------------
#
# On a cold cache every distinct C op costs one gcc run of about 0.7 s, whatever the -O level
# (measured: -O0 saved 10%). Ops that only move views and shapes, and elementwise ops that
# map to one numpy ufunc, run as fast from Python (numpy's float32 tanh is faster than the
# generated C), so they skip compilation: the training and greedy decoding functions of the
# benchmark model went from 91 modules and 57 s to 33 modules and 24-35 s, at the same speed
# (README, Performance). Fused elementwise ops (Composite) and reductions keep their C code:
# their Python fallback calls Python once per element.


def _python_when(cls, use_python):
    """Make `cls` ops run their Python implementation when `use_python(node)` holds."""
    original = cls.make_thunk

    def make_thunk(self, node, storage_map, compute_map, no_recycling, impl=None):
        impl = "py" if impl is None and use_python(node) else impl
        return original(self, node, storage_map, compute_map, no_recycling, impl=impl)

    cls.make_thunk = make_thunk


def _one_numpy_ufunc(node):
    spec = node.op.nfunc_spec
    return spec is not None and len(node.inputs) == spec[1] and not isinstance(node.op.scalar_op, Composite)


from pytensor.raise_op import Assert  # noqa: E402
from pytensor.scalar.basic import Composite  # noqa: E402
from pytensor.tensor.basic import Alloc, AllocEmpty, ARange, MakeVector, ScalarFromTensor  # noqa: E402
from pytensor.tensor.elemwise import DimShuffle, Elemwise  # noqa: E402
from pytensor.tensor.shape import Reshape, Shape, Shape_i, SpecifyShape  # noqa: E402
from pytensor.tensor.subtensor import AdvancedSubtensor1, IncSubtensor, Subtensor  # noqa: E402

for _cls in (Shape, Shape_i, Reshape, SpecifyShape, MakeVector, ScalarFromTensor, Alloc, AllocEmpty, ARange,
             DimShuffle, Subtensor, IncSubtensor, AdvancedSubtensor1, Assert):
    _python_when(_cls, lambda node: True)
_python_when(Elemwise, _one_numpy_ufunc)
