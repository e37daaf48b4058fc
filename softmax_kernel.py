"""A hand-written kernel for the part of a training step PyTensor runs slowly on this model
(docs/performance.md): the softmax cross-entropy, an op with its own backward pass.

softmax_cross_entropy(logits, targets) is one C pass per row (OpenMP over rows); greedy_pick
(greedy decoding's argmax and its log-probability) shares its code. Written out
as max / exp / sum / log elementwise ops, the (T*B, V) log-softmax and its gradient took about
a third of a training step: five or six single-threaded passes over a 77 MB matrix.

    nll_i = logsumexp(x_i) - x_i[y_i]
    d nll_i / d x_i = softmax(x_i) - onehot(y_i)

The forward op also returns logsumexp (N,), which the gradient reuses, so the gradient is one
more pass over the logits. The numpy `perform`s are the reference the tests compare the C
code against.
"""
import numpy as np

from flags import FLOATX
import pytensor.tensor as pt
from pytensor.gradient import DisconnectedType
from pytensor.graph.basic import Apply
from pytensor.link.c.op import COp

# -ffast-math lets gcc vectorise expf (glibc's vector math). The kernels branch on no NaN, and NaN or
# +inf logits still give a non-finite loss (tests/test_softmax_kernel.py), as the NaN guard needs.
_OPENMP = ["-fopenmp", "-ffast-math"]

# The forward and backward passes as plain C functions; the ops' c_code only calls them. Each returns 0, or -1
# with a Python exception set. Outputs are (re)allocated unless the arrays PyTensor hands
# back already fit.
_SUPPORT = r"""
/* Below this many logits one thread is faster: waking the team costs more than it saves. */
#define SCE_PARALLEL_MIN (1 << 20)

static PyArrayObject* sce_output(PyArrayObject* out, int nd, npy_intp N, npy_intp V, int type) {
    if (out && PyArray_NDIM(out) == nd && PyArray_DIMS(out)[0] == N && PyArray_TYPE(out) == type
        && (nd == 1 || PyArray_DIMS(out)[1] == V) && PyArray_IS_C_CONTIGUOUS(out)) return out;
    npy_intp dims[2] = {N, V};
    Py_XDECREF(out);
    return (PyArrayObject*)PyArray_EMPTY(nd, dims, type, 0);
}

/* log(sum_j exp(row[j] - top)) + top: a row's log-sum-exp, given its largest logit `top`. */
static inline float sce_logsumexp(const float* row, npy_intp V, float top) {
    float total = 0.0f;
    #pragma omp simd reduction(+:total)
    for (npy_intp j = 0; j < V; ++j) total += expf(row[j] - top);
    return logf(total) + top;
}

/* Check that y holds one id in [0, V) per row of x; return a C-contiguous x (new ref). */
static PyArrayObject* sce_inputs(PyArrayObject* x, PyArrayObject* y) {
    npy_intp N = PyArray_DIMS(x)[0], V = PyArray_DIMS(x)[1];
    if (PyArray_DIMS(y)[0] != N) {
        PyErr_Format(PyExc_ValueError, "softmax_cross_entropy: %ld rows of logits but %ld targets",
                     (long)N, (long)PyArray_DIMS(y)[0]);
        return NULL;
    }
    for (npy_intp i = 0; i < N; ++i) {
        npy_int32 t = *(npy_int32*)PyArray_GETPTR1(y, i);
        if (t < 0 || t >= V) {
            PyErr_Format(PyExc_ValueError, "softmax_cross_entropy: target %d at row %ld is outside [0, %ld)",
                         (int)t, (long)i, (long)V);
            return NULL;
        }
    }
    return PyArray_GETCONTIGUOUS(x);
}

static int sce_forward(PyArrayObject* x, PyArrayObject* y, PyArrayObject** nll, PyArrayObject** lse) {
    PyArrayObject* xc = sce_inputs(x, y);
    if (!xc) return -1;
    npy_intp N = PyArray_DIMS(xc)[0], V = PyArray_DIMS(xc)[1];
    *nll = sce_output(*nll, 1, N, V, NPY_FLOAT32);
    *lse = sce_output(*lse, 1, N, V, NPY_FLOAT32);
    if (!*nll || !*lse) { Py_DECREF(xc); return -1; }
    const float* X = (const float*)PyArray_DATA(xc);
    float *NLL = (float*)PyArray_DATA(*nll), *LSE = (float*)PyArray_DATA(*lse);
    #pragma omp parallel for schedule(static) if (N * V >= SCE_PARALLEL_MIN)
    for (npy_intp i = 0; i < N; ++i) {
        const float* row = X + i * V;
        float top = row[0];
        for (npy_intp j = 1; j < V; ++j) top = row[j] > top ? row[j] : top;
        LSE[i] = sce_logsumexp(row, V, top);
        NLL[i] = LSE[i] - row[*(npy_int32*)PyArray_GETPTR1(y, i)];
    }
    Py_DECREF(xc);
    return 0;
}

static int sce_backward(PyArrayObject* x, PyArrayObject* y, PyArrayObject* lse, PyArrayObject* g_nll,
                        PyArrayObject* g_lse, PyArrayObject** dx) {
    PyArrayObject* xc = sce_inputs(x, y);
    if (!xc) return -1;
    npy_intp N = PyArray_DIMS(xc)[0], V = PyArray_DIMS(xc)[1];
    if (PyArray_DIMS(lse)[0] != N || PyArray_DIMS(g_nll)[0] != N || PyArray_DIMS(g_lse)[0] != N) {
        PyErr_SetString(PyExc_ValueError, "softmax_cross_entropy grad: one lse and gradient per row needed");
        Py_DECREF(xc);
        return -1;
    }
    *dx = sce_output(*dx, 2, N, V, NPY_FLOAT32);
    if (!*dx) { Py_DECREF(xc); return -1; }
    const float* X = (const float*)PyArray_DATA(xc);
    float* DX = (float*)PyArray_DATA(*dx);
    #pragma omp parallel for schedule(static) if (N * V >= SCE_PARALLEL_MIN)
    for (npy_intp i = 0; i < N; ++i) {
        const float* row = X + i * V;
        float* drow = DX + i * V;
        const float shift = *(float*)PyArray_GETPTR1(lse, i);
        const float gn = *(float*)PyArray_GETPTR1(g_nll, i);
        const float scale = gn + *(float*)PyArray_GETPTR1(g_lse, i);
        #pragma omp simd
        for (npy_intp j = 0; j < V; ++j) drow[j] = expf(row[j] - shift) * scale;
        drow[*(npy_int32*)PyArray_GETPTR1(y, i)] -= gn;
    }
    Py_DECREF(xc);
    return 0;
}

/* Greedy decoding's pick: each row's first argmax over [first, V) (the vectorised maxima of
   blocks of 64, then a scan of the block with the largest) and its log-probability under the
   whole row's softmax. */
static int sce_greedy(PyArrayObject* x, int first, PyArrayObject** ids, PyArrayObject** logp) {
    npy_intp N = PyArray_DIMS(x)[0], V = PyArray_DIMS(x)[1];
    if (first < 0 || first >= V) {
        PyErr_Format(PyExc_ValueError, "greedy_pick: %ld logits per row, none from id %d on", (long)V, first);
        return -1;
    }
    PyArrayObject* xc = PyArray_GETCONTIGUOUS(x);
    *ids = sce_output(*ids, 1, N, V, NPY_INT32);
    *logp = sce_output(*logp, 1, N, V, NPY_FLOAT32);
    if (!xc || !*ids || !*logp) { Py_XDECREF(xc); return -1; }
    const float* X = (const float*)PyArray_DATA(xc);
    npy_int32* IDS = (npy_int32*)PyArray_DATA(*ids);
    float* LOGP = (float*)PyArray_DATA(*logp);
    #pragma omp parallel for schedule(static) if (N * V >= SCE_PARALLEL_MIN)
    for (npy_intp i = 0; i < N; ++i) {
        const float* row = X + i * V;
        float best = row[first];
        npy_intp at = first;
        for (npy_intp b0 = first; b0 < V; b0 += 64) {
            const npy_intp b1 = b0 + 64 < V ? b0 + 64 : V;
            float m = row[b0];
            for (npy_intp j = b0 + 1; j < b1; ++j) m = row[j] > m ? row[j] : m;
            if (m > best) { best = m; at = b0; }
        }
        while (at < V - 1 && row[at] != best) ++at;
        float top = best;
        for (npy_intp j = 0; j < first; ++j) top = row[j] > top ? row[j] : top;
        IDS[i] = (npy_int32)at;
        LOGP[i] = row[at] - sce_logsumexp(row, V, top);
    }
    Py_DECREF(xc);
    return 0;
}
"""


class _Kernel(COp):
    """What the forward and backward ops share: OpenMP flags and the C functions above."""

    __props__ = ()

    def c_compile_args(self, **kwargs):
        return _OPENMP

    def c_libraries(self, **kwargs):
        return ["gomp"]

    def c_support_code(self, **kwargs):
        return _SUPPORT

    def c_code_cache_version(self):
        return (8,)


def _f32(x):
    return pt.as_tensor_variable(x).astype(FLOATX)


class SoftmaxCrossEntropy(_Kernel):
    """(logits (N, V) float32, targets (N,) int32) -> (nll (N,), logsumexp (N,))."""

    def make_node(self, x, y):
        x, y = _f32(x), pt.as_tensor_variable(y).astype("int32")
        if x.type.ndim != 2 or y.type.ndim != 1:
            raise ValueError(f"softmax_cross_entropy wants (N, V) logits and (N,) targets, got {x.type} and {y.type}")
        return Apply(self, [x, y], [pt.vector(dtype=FLOATX), pt.vector(dtype=FLOATX)])

    def perform(self, node, inputs, outputs):
        x, y = inputs
        top = x.max(axis=1)
        lse = (np.log(np.exp(x - top[:, None]).sum(axis=1)) + top).astype(np.float32)
        outputs[0][0] = (lse - x[np.arange(len(y)), y]).astype(np.float32)
        outputs[1][0] = lse

    def connection_pattern(self, node):
        return [[True, True], [False, False]]

    def infer_shape(self, fgraph, node, shapes):
        return [shapes[1], shapes[1]]

    def pullback(self, inputs, outputs, output_grads):
        (x, y), (_, lse), (g_nll, g_lse) = inputs, outputs, output_grads
        zeros = pt.zeros_like(y, dtype=FLOATX)
        g_nll = zeros if isinstance(g_nll.type, DisconnectedType) else g_nll
        g_lse = zeros if isinstance(g_lse.type, DisconnectedType) else g_lse
        return [SoftmaxCrossEntropyGrad()(x, y, lse, g_nll, g_lse), DisconnectedType()()]

    def c_code(self, node, name, inputs, outputs, sub):
        (x, y), (nll, lse) = inputs, outputs
        return f"if (sce_forward({x}, {y}, &{nll}, &{lse})) {{ {sub['fail']} }}"


class SoftmaxCrossEntropyGrad(_Kernel):
    """d/dlogits of sum(g_nll * nll + g_lse * lse):
    softmax(x) * (g_nll + g_lse) - onehot(y) * g_nll, one pass over x."""

    __props__ = ()

    def make_node(self, x, y, lse, g_nll, g_lse):
        inputs = [_f32(x), pt.as_tensor_variable(y).astype("int32")]
        inputs += [_f32(v) for v in (lse, g_nll, g_lse)]
        return Apply(self, inputs, [pt.matrix(dtype=FLOATX)])

    def infer_shape(self, fgraph, node, shapes):
        return [shapes[0]]

    def perform(self, node, inputs, outputs):
        x, y, lse, g_nll, g_lse = inputs
        out = np.exp(x - lse[:, None]) * (g_nll + g_lse)[:, None]
        out[np.arange(len(y)), y] -= g_nll
        outputs[0][0] = out.astype(np.float32)

    def c_code(self, node, name, inputs, outputs, sub):
        (x, y, lse, g_nll, g_lse), (dx,) = inputs, outputs
        return f"if (sce_backward({x}, {y}, {lse}, {g_nll}, {g_lse}, &{dx})) {{ {sub['fail']} }}"


class GreedyPick(_Kernel):
    """logits (N, V) -> (ids (N,) int32, logp (N,)): each row's argmax over the ids from
    `first` on, and its log-probability under the softmax of the whole row, in one op (greedy
    decoding's argmax and log p(y) were an argmax and a cross-entropy: two passes). Not
    differentiable."""

    __props__ = ("first",)

    def __init__(self, first=0):
        self.first = int(first)

    def make_node(self, x):
        x = _f32(x)
        if x.type.ndim != 2:
            raise ValueError(f"greedy_pick wants (N, V) logits, got {x.type}")
        return Apply(self, [x], [pt.vector(dtype="int32"), pt.vector(dtype=FLOATX)])

    def perform(self, node, inputs, outputs):
        (x,) = inputs
        if not 0 <= self.first < x.shape[1]:
            raise ValueError(f"greedy_pick: {x.shape[1]} logits per row, none from id {self.first} on")
        ids = x[:, self.first :].argmax(axis=1) + self.first
        top = x.max(axis=1)
        lse = np.log(np.exp(x - top[:, None]).sum(axis=1)) + top
        outputs[0][0] = ids.astype(np.int32)
        outputs[1][0] = (x[np.arange(len(x)), ids] - lse).astype(np.float32)

    def infer_shape(self, fgraph, node, shapes):
        return [shapes[0][:1], shapes[0][:1]]

    def c_code(self, node, name, inputs, outputs, sub):
        (x,), (ids, logp) = inputs, outputs
        return f"if (sce_greedy({x}, {self.first}, &{ids}, &{logp})) {{ {sub['fail']} }}"


def greedy_pick(logits, first=0):
    """(ids (N,), log p(ids) (N,)): each row of `logits` (N, V)'s argmax over ids >= first,
    and its log-probability under the softmax of the whole row. See GreedyPick."""
    return GreedyPick(first)(logits)


def softmax_cross_entropy(logits, targets):
    """Negative log-likelihood of `targets` (N,) under softmax(`logits` (N, V)): (N,)."""
    return SoftmaxCrossEntropy()(logits, targets)[0]


def log_softmax(logits):
    """log softmax(`logits` (N, V)) along each row: logits - logsumexp, the logsumexp from the
    same fused pass (its targets are unused; PyTensor's own graph of it ran max, exp and sum
    as three single-threaded passes, a third of a beam search step)."""
    lse = SoftmaxCrossEntropy()(logits, pt.zeros((logits.shape[0],), dtype="int32"))[1]
    return _f32(logits) - lse[:, None]


def smoothed_cross_entropy(logits, targets, smoothing=0.0):
    """(nll (N,), loss (N,)): the negative log-likelihood of `targets` under softmax(logits),
    and the label-smoothed loss, the cross-entropy against (1 - e) onehot(y) + e / V:

        loss_i = (1 - e) nll_i + e (logsumexp(x_i) - mean_j x_ij)

    which reuses the fused op's logsumexp. With smoothing 0, loss is nll."""
    nll, lse = SoftmaxCrossEntropy()(logits, targets)
    if not smoothing:
        return nll, nll
    e = np.float32(smoothing)
    return nll, (np.float32(1.0) - e) * nll + e * (lse - pt.mean(logits, axis=1))
