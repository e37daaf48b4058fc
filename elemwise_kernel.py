"""Fused elementwise kernels: each connected group of float32 elementwise ops in a compiled
graph becomes one generated C loop, vectorised within each row of its output.

Run one numpy ufunc at a time (thunks.py), an LSTM step's gates are eight passes over (B, H)
arrays, each from Python; PyTensor's own fused C loops call scalar libm and on those gates ran
11x slower than numpy's ufuncs. The loop generated for a group reads each input once, keeps
intermediates in registers, writes the outputs the graph reads, and calls glibc's vector math
(libmvec: exp, log, tanh), IEEE semantics kept (no -ffast-math): NaN and inf as numpy's.

modes.compile_mode's C modes find the groups (modes._fusion_groups): elementwise ops that
`supports` (a C expression below, float32 throughout), with outputs of one broadcast pattern,
and no path from the group back into it through another op. Each group becomes a
FusedElemwise node (`fused_node`): a plain C loop built once with gcc (about 0.1 s) and kept
in PyTensor's compile directory under the hash of its source, called through one small Python
extension (`_GLUE`, built once) that checks the shapes and allocates the outputs. `library`
builds and loads other C the same way (gru_kernel.py's loop).
"""
import contextlib
import ctypes
import functools
import hashlib
import importlib.util
import os
import shutil
import subprocess
import sysconfig
import tempfile

import numpy as np

import flags  # noqa: F401  (first: the process's PyTensor flags, before pytensor)
import pytensor
import pytensor.scalar.basic as ps
from pytensor.graph.basic import Apply, Constant
from pytensor.graph.op import Op
from pytensor.link.c.cmodule import GCC_compiler
from pytensor.scalar.math import Sigmoid
from pytensor.tensor.elemwise import Elemwise
from pytensor.tensor.type import TensorType

# Each supported scalar op as a C expression of its operands.
_C = {ps.Add: lambda a: "(" + " + ".join(a) + ")", ps.Mul: lambda a: "(" + " * ".join(a) + ")",
      ps.Sub: lambda a: f"({a[0]} - {a[1]})", ps.TrueDiv: lambda a: f"({a[0]} / {a[1]})",
      ps.Neg: lambda a: f"(-{a[0]})", ps.Sqr: lambda a: f"({a[0]} * {a[0]})", ps.Sqrt: lambda a: f"sqrtf({a[0]})",
      ps.Exp: lambda a: f"expf({a[0]})", ps.Log: lambda a: f"logf({a[0]})", ps.Tanh: lambda a: f"tanhf({a[0]})",
      ps.Log1p: lambda a: f"log1pf({a[0]})", ps.Expm1: lambda a: f"expm1f({a[0]})", ps.Reciprocal: lambda a: f"(1.0f / {a[0]})",
      Sigmoid: lambda a: f"(1.0f / (1.0f + expf(-{a[0]})))", ps.Abs: lambda a: f"fabsf({a[0]})",
      # numpy's maximum and minimum: NaN wins
      ps.Maximum: lambda a: f"(({a[0]} > {a[1]} || {a[0]} != {a[0]}) ? {a[0]} : {a[1]})",
      ps.Minimum: lambda a: f"(({a[0]} < {a[1]} || {a[0]} != {a[0]}) ? {a[0]} : {a[1]})",
      ps.Second: lambda a: a[1], ps.Identity: lambda a: a[0], ps.Cast: lambda a: a[0]}
FLOAT32 = "float32"


def _scalar_constant(v):
    return isinstance(v, Constant) and np.ndim(v.data) == v.type.ndim and np.size(v.data) == 1 \
        and np.asarray(v.data).dtype.kind in "biuf"


def supports(node):
    """A single-output float32 elementwise node with a C expression above."""
    if not isinstance(node.op, Elemwise) or len(node.outputs) != 1 or node.op.inplace_pattern:
        return False
    out = node.outputs[0].type
    if type(node.op.scalar_op) not in _C or out.dtype != FLOAT32 or out.ndim == 0:
        return False
    return all(v.type.dtype == FLOAT32 or _scalar_constant(v) for v in node.inputs)


class FusedElemwise(Op):
    """One fused group: (inputs) -> (outputs), all of one shape, computed by the generated C
    function `body` (fused_node writes it from _KERNEL)."""

    __props__ = ("body", "shapes")

    def __init__(self, body, shapes):
        """`shapes`: each output's static shape (None where unknown), as the ops it replaces
        had them: the same broadcast pattern for all."""
        self.body, self.shapes = body, tuple(shapes)
        self.broadcastable = tuple(s == 1 for s in self.shapes[0])

    def __str__(self):
        return f"FusedElemwise{{{len(self.shapes)} outputs}}"

    def make_node(self, *inputs):
        return Apply(self, list(inputs), [TensorType(FLOAT32, shape=s)() for s in self.shapes])

    def infer_shape(self, fgraph, node, shapes):
        dims = [[s[d] for s, v in zip(shapes, node.inputs) if not v.type.broadcastable[d]]
                for d in range(len(self.broadcastable))]
        return [tuple(n[0] if n else 1 for n in dims)] * len(self.shapes)

    def _kernel(self, node):
        """(glue run function, the kernel's address, its spec: the inputs', outputs' and axes'
        counts and each input's broadcast flags)."""
        spec = bytes([len(node.inputs), len(node.outputs), len(self.shapes[0])]
                     + [int(b) for v in node.inputs for b in v.type.broadcastable])
        return _glue().run, _kernel_address(self.body), spec

    def perform(self, node, inputs, outputs):
        run, address, spec = self._kernel(node)
        for out, value in zip(outputs, run(address, spec, *inputs)):
            out[0] = value

    def make_thunk(self, node, storage_map, compute_map, no_recycling, impl=None):
        run, address, spec = self._kernel(node)
        inputs, outputs = [storage_map[v] for v in node.inputs], [storage_map[v] for v in node.outputs]
        done = [compute_map[v] for v in node.outputs] if compute_map is not None else []

        def thunk():
            for out, value in zip(outputs, run(address, spec, *[i[0] for i in inputs])):
                out[0] = value
            for d in done:
                d[0] = True

        thunk.inputs, thunk.outputs, thunk.lazy = inputs, outputs, False
        return thunk


def _literal(value):
    value = float(np.float32(value))
    return "NAN" if np.isnan(value) else ("-INFINITY" if value < 0 else "INFINITY") if np.isinf(value) else f"{value.hex()}f"


def fused_node(fgraph, members):
    """The FusedElemwise Apply node computing `members`, and the member outputs it replaces."""
    inside = {m.outputs[0] for m in members}
    inputs, names, lines = [], {}, []
    for m in members:
        for v in m.inputs:
            if v not in inside and v not in names and not _scalar_constant(v):
                names[v] = f"x{len(inputs)}"
                inputs.append(v)
    for k, m in enumerate(members):
        args = [names[v] if v in names else _literal(np.asarray(v.data).item()) for v in m.inputs]
        names[m.outputs[0]] = f"t{k}"
        lines.append(f"const float t{k} = {_C[type(m.op.scalar_op)](args)};")
    outputs = [m.outputs[0] for m in members
               if m.outputs[0] in fgraph.outputs or any(c not in members for c, _ in fgraph.clients[m.outputs[0]])]
    pattern = members[0].outputs[0].type.broadcastable
    if len(inputs) > MAX_ARRAYS or len(outputs) > MAX_ARRAYS or len(pattern) > MAX_AXES:
        return None, outputs
    pointers = [f"const float* restrict a{k} = in[{k}] + offset[{k}];" for k in range(len(inputs))]
    pointers += [f"float* restrict o{k} = out[{k}] + r * cols;" for k in range(len(outputs))]
    loads = [f"const float x{k} = a{k}[{'0' if v.type.broadcastable[-1] else 'j'}];" for k, v in enumerate(inputs)]
    stores = [f"o{k}[j] = {names[v]};" for k, v in enumerate(outputs)]
    body = _KERNEL.format(NI=len(inputs), ND=len(pattern), POINTERS="\n        ".join(pointers),
                          LOADS="\n            ".join(loads + lines + stores))
    op = FusedElemwise(body, [v.type.shape for v in outputs])
    return op.make_node(*inputs), outputs


_BUILT = {}  # a kernel's body (or the glue's source) -> its loaded library, kept loaded
_flags = functools.cache(lambda: "".join("\n" + f for f in [*_FLAGS, *GCC_compiler.compile_args()]))


def _path(name, source, suffix=".so"):
    """Where the build of `source` lives in the compile directory (one build per CPU: PyTensor's
    compile arguments spell out -march=native)."""
    key = source + _flags()
    return os.path.join(pytensor.config.compiledir, "fused", f"{name}_{hashlib.sha256(key.encode()).hexdigest()[:20]}{suffix}")


def _build(source, path, extension=False):
    """Compile C `source` with gcc to `path`, unless it is there: into a temporary folder
    beside it, then renamed (parallel processes may race)."""
    if os.path.exists(path):
        return
    tmp = None
    while tmp is None:  # (PyTensor's cache refresh removes empty folders: one may go in between)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            tmp = tempfile.mkdtemp(dir=os.path.dirname(path))
    try:
        with open(os.path.join(tmp, "source.c"), "w") as f:
            f.write(source)
        includes = [f"-I{sysconfig.get_paths()['include']}", f"-I{np.get_include()}"] if extension else []
        command = [COMPILER, *_FLAGS, *includes, f.name, "-o", os.path.join(tmp, "built.so"), "-lm"]
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode:
            raise RuntimeError(f"building a fused elementwise kernel failed ({' '.join(command)}):\n{result.stderr}")
        os.replace(os.path.join(tmp, "built.so"), path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def library(name, source):
    """The C `source`, built once under `name` in the compile directory, loaded with ctypes."""
    _build(source, _path(name, source))
    return ctypes.CDLL(_path(name, source))


def _symbol(body):
    return "kernel_" + hashlib.sha256(body.encode()).hexdigest()[:20]


def build_kernels(bodies):
    """Build the kernels of `bodies` that the compile directory lacks with one gcc run (a
    function's kernels together: one compiler start, about 0.1 s, not one each), each then
    found under a name of its own (a link to the library that holds it)."""
    missing = [b for b in dict.fromkeys(bodies) if not os.path.exists(_path("kernel", b))]
    if not missing:
        return
    source = HEADER + "\n".join(b.replace("KERNEL", _symbol(b)) for b in missing)
    shared = _path("kernels", source)
    _build(source, shared)
    for b in missing:
        link = f"{_path('kernel', b)}.{os.getpid()}.tmp"
        os.symlink(os.path.basename(shared), link)
        os.replace(link, _path("kernel", b))


def _kernel_address(body):
    if body not in _BUILT:
        build_kernels([body])
        _BUILT[body] = ctypes.CDLL(_path("kernel", body))
    return ctypes.cast(getattr(_BUILT[body], _symbol(body)), ctypes.c_void_p).value


def _glue():
    if _GLUE not in _BUILT:
        path = _path("elemwise_glue", _GLUE, sysconfig.get_config_var("EXT_SUFFIX"))
        _build(_GLUE, path, extension=True)
        spec = importlib.util.spec_from_file_location("elemwise_glue", path)
        _BUILT[_GLUE] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(_BUILT[_GLUE])
    return _BUILT[_GLUE]


# -fno-math-errno: the vector math functions set no errno; no -ffast-math, so NaN and inf keep
# IEEE semantics. One thread: an OpenMP team beside OpenBLAS's threads, on as many cores,
# made a loop step 20x slower (docs/performance.md).
_FLAGS = ["-O3", "-march=native", "-fno-math-errno", "-fopenmp-simd", "-shared", "-fPIC"]
COMPILER = shutil.which("gcc") or shutil.which("cc")
MAX_ARRAYS, MAX_AXES = 64, 16  # the glue's bounds

HEADER = r"""#include <math.h>
#include <stdint.h>
/* glibc's vector variants (libmvec), as math-vector.h declares them under -ffast-math */
#define VECTOR __attribute__((simd("notinbranch")))
float expf(float) VECTOR; float logf(float) VECTOR; float tanhf(float) VECTOR;
float log1pf(float) VECTOR; float expm1f(float) VECTOR;
"""

# One kernel: out[k] (rows, cols) from in[k], whose row r starts where `strides` (NI x (ND - 1),
# in elements, 0 along broadcast axes) place it. KERNEL becomes its symbol.
_KERNEL = r"""
void KERNEL(intptr_t rows, intptr_t cols, const intptr_t* shape, const float* const* in,
            const intptr_t* strides, float* const* out) {{
    enum {{ NI = {NI}, ND = {ND} }};
    for (intptr_t r = 0; r < rows; ++r) {{
        intptr_t offset[NI > 0 ? NI : 1] = {{0}}, rest = r;
        for (int d = ND - 2; d >= 0; --d) {{  /* row r's index along each leading axis */
            const intptr_t i = rest % shape[d];
            rest /= shape[d];
            for (int k = 0; k < NI; ++k) offset[k] += i * strides[k * (ND - 1) + d];
        }}
        {POINTERS}
        #pragma omp simd
        for (intptr_t j = 0; j < cols; ++j) {{
            {LOADS}
        }}
    }}
}}
"""

_GLUE = r"""#define PY_SSIZE_T_CLEAN
#include <Python.h>
#define NPY_NO_DEPRECATED_API NPY_1_7_API_VERSION
#include <numpy/arrayobject.h>
#define MAX_ARRAYS 64
#define MAX_AXES 16
typedef void (*kernel_fn)(npy_intp, npy_intp, const npy_intp*, const float* const*, const npy_intp*, float* const*);

static PyObject* release(PyArrayObject** held, int n) {  /* NULL: a failure, with the exception set */
    for (int k = 0; k < n; ++k) Py_XDECREF(held[k]);
    return NULL;
}

/* run(kernel address, spec, *inputs) -> tuple of new C-contiguous float32 outputs of the
   broadcast shape; spec: bytes (inputs, outputs, axes, each input's broadcast flags). */
static PyObject* run(PyObject* self, PyObject* const* args, Py_ssize_t nargs) {
    if (nargs < 2 || !PyBytes_Check(args[1])) return PyErr_Format(PyExc_TypeError, "run(kernel, spec, *inputs)");
    kernel_fn kernel = (kernel_fn)PyLong_AsVoidPtr(args[0]);
    const unsigned char* spec = (const unsigned char*)PyBytes_AS_STRING(args[1]);
    const int NI = spec[0], NO = spec[1], ND = spec[2];
    const unsigned char* bcast = spec + 3;  /* bcast[k * ND + d] */
    if (!kernel || nargs != 2 + NI || NI > MAX_ARRAYS || NO > MAX_ARRAYS || ND > MAX_AXES || ND < 1)
        return PyErr_Format(PyExc_TypeError, "fused elementwise kernel: %d inputs expected", NI);
    PyArrayObject* held[MAX_ARRAYS] = {NULL};
    npy_intp shape[MAX_AXES], rows = 1;
    for (int d = 0; d < ND; ++d) shape[d] = -1;
    for (int k = 0; k < NI; ++k) {
        PyObject* x = args[2 + k];
        if (!PyArray_Check(x) || PyArray_TYPE((PyArrayObject*)x) != NPY_FLOAT32 || PyArray_NDIM((PyArrayObject*)x) != ND) {
            PyErr_Format(PyExc_TypeError, "fused elementwise kernel: input %d is not a float32 array of %d axes", k, ND);
            return release(held, NI);
        }
        for (int d = 0; d < ND; ++d) {
            const npy_intp n = PyArray_DIMS((PyArrayObject*)x)[d];
            if (bcast[k * ND + d] ? n != 1 : (shape[d] >= 0 && n != shape[d])) {
                PyErr_Format(PyExc_ValueError, "fused elementwise kernel: input %d has length %ld on axis %d, where "
                             "the other inputs have %ld", k, (long)n, d, (long)(bcast[k * ND + d] ? 1 : shape[d]));
                return release(held, NI);
            }
            if (!bcast[k * ND + d]) shape[d] = n;
        }
        Py_INCREF(x);  /* the rows of an input not broadcast along them must be contiguous */
        held[k] = (PyArrayObject*)x;
        if (!bcast[k * ND + ND - 1] && PyArray_DIMS(held[k])[ND - 1] > 1 && PyArray_STRIDES(held[k])[ND - 1] != sizeof(float)) {
            held[k] = PyArray_GETCONTIGUOUS((PyArrayObject*)x);
            Py_DECREF(x);
            if (!held[k]) return release(held, NI);
        }
    }
    for (int d = 0; d < ND; ++d) {
        shape[d] = shape[d] < 0 ? 1 : shape[d];
        rows *= d < ND - 1 ? shape[d] : 1;
    }
    const float* in[MAX_ARRAYS];
    npy_intp strides[MAX_ARRAYS * MAX_AXES];
    for (int k = 0; k < NI; ++k) {
        in[k] = (const float*)PyArray_DATA(held[k]);
        for (int d = 0; d < ND - 1; ++d)
            strides[k * (ND - 1) + d] = bcast[k * ND + d] ? 0 : PyArray_STRIDES(held[k])[d] / (npy_intp)sizeof(float);
    }
    PyObject* result = PyTuple_New(NO);
    float* out[MAX_ARRAYS];
    for (int k = 0; k < NO && result; ++k) {
        PyObject* o = PyArray_EMPTY(ND, shape, NPY_FLOAT32, 0);
        if (!o) {
            Py_CLEAR(result);
            break;
        }
        PyTuple_SET_ITEM(result, k, o);
        out[k] = (float*)PyArray_DATA((PyArrayObject*)o);
    }
    if (!result) return release(held, NI);
    Py_BEGIN_ALLOW_THREADS
    kernel(rows, shape[ND - 1], shape, in, strides, out);
    Py_END_ALLOW_THREADS
    release(held, NI);
    return result;
}

static PyMethodDef methods[] = {{"run", (PyCFunction)(void (*)(void))run, METH_FASTCALL, "run(kernel, spec, *inputs)"},
                                {NULL, NULL, 0, NULL}};
static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "elemwise_glue", NULL, -1, methods};
PyMODINIT_FUNC PyInit_elemwise_glue(void) { import_array(); return PyModule_Create(&module); }
"""
