"""Hand-written kernels for the two parts of a step that PyTensor runs slowly on this model
(README, Performance), each an op with its own backward pass:

- softmax_cross_entropy(logits, targets): one C pass per row (OpenMP over rows). Written out
  as max / exp / sum / log elementwise ops, the (T*B, V) log-softmax and its gradient took
  about a third of a training step: five or six single-threaded passes over a 77 MB matrix.

      nll_i = logsumexp(x_i) - x_i[y_i]
      d nll_i / d x_i = softmax(x_i) - onehot(y_i)

  The forward op also returns logsumexp (N,), which the gradient reuses, so the gradient is
  one more pass over the logits. The numpy `perform`s are the reference the tests compare
  the C code against.

- gru_sequence(x_proj, mask, h0, U): layers.GRU's whole masked time loop in numpy, with a
  hand-written backward pass whose weight gradient is one matmul over all timesteps.
"""
import numpy as np

import backend  # noqa: F401  (sets floatX before pytensor is used)
import pytensor.tensor as pt
from pytensor.gradient import DisconnectedType
from pytensor.graph.basic import Apply
from pytensor.graph.op import Op
from pytensor.link.c.op import COp

# -ffast-math lets gcc vectorise expf (glibc's vector math). The kernels branch on no NaN, and NaN or
# +inf logits still give a non-finite loss (tests/test_kernels.py), as the NaN guard needs.
_OPENMP = ["-fopenmp", "-ffast-math"]

# Both kernels as plain C functions; the ops' c_code only calls them. Each returns 0, or -1
# with a Python exception set. Outputs are (re)allocated unless the arrays PyTensor hands
# back already fit.
_SUPPORT = r"""
/* Below this many logits one thread is faster: waking the team costs more than it saves. */
#define SCE_PARALLEL_MIN (1 << 20)

static PyArrayObject* sce_output(PyArrayObject* out, int nd, npy_intp N, npy_intp V) {
    if (out && PyArray_NDIM(out) == nd && PyArray_DIMS(out)[0] == N
        && (nd == 1 || PyArray_DIMS(out)[1] == V) && PyArray_IS_C_CONTIGUOUS(out)) return out;
    npy_intp dims[2] = {N, V};
    Py_XDECREF(out);
    return (PyArrayObject*)PyArray_EMPTY(nd, dims, NPY_FLOAT32, 0);
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
    *nll = sce_output(*nll, 1, N, V);
    *lse = sce_output(*lse, 1, N, V);
    if (!*nll || !*lse) { Py_DECREF(xc); return -1; }
    const float* X = (const float*)PyArray_DATA(xc);
    float *NLL = (float*)PyArray_DATA(*nll), *LSE = (float*)PyArray_DATA(*lse);
    #pragma omp parallel for schedule(static) if (N * V >= SCE_PARALLEL_MIN)
    for (npy_intp i = 0; i < N; ++i) {
        const float* row = X + i * V;
        float top = row[0];
        for (npy_intp j = 1; j < V; ++j) top = row[j] > top ? row[j] : top;
        float total = 0.0f;
        #pragma omp simd reduction(+:total)
        for (npy_intp j = 0; j < V; ++j) total += expf(row[j] - top);
        LSE[i] = logf(total) + top;
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
    *dx = sce_output(*dx, 2, N, V);
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
"""


class _Kernel(COp):
    """What both ops share: OpenMP flags and the C functions above."""

    __props__ = ()

    def c_compile_args(self, **kwargs):
        return _OPENMP

    def c_libraries(self, **kwargs):
        return ["gomp"]

    def c_support_code(self, **kwargs):
        return _SUPPORT

    def c_code_cache_version(self):
        return (3,)


def _f32(x):
    return pt.as_tensor_variable(x).astype("float32")


class SoftmaxCrossEntropy(_Kernel):
    """(logits (N, V) float32, targets (N,) int32) -> (nll (N,), logsumexp (N,))."""

    def make_node(self, x, y):
        x, y = _f32(x), pt.as_tensor_variable(y).astype("int32")
        if x.type.ndim != 2 or y.type.ndim != 1:
            raise ValueError(f"softmax_cross_entropy wants (N, V) logits and (N,) targets, got {x.type} and {y.type}")
        return Apply(self, [x, y], [pt.vector(dtype="float32"), pt.vector(dtype="float32")])

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
        zeros = pt.zeros_like(y, dtype="float32")
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
        return Apply(self, inputs, [pt.matrix(dtype="float32")])

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


def softmax_cross_entropy(logits, targets):
    """Negative log-likelihood of `targets` (N,) under softmax(`logits` (N, V)): (N,)."""
    return SoftmaxCrossEntropy()(logits, targets)[0]


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


# ---- the GRU over a whole sequence ---------------------------------------------------------
#
# Under scan, each GRU timestep runs as several small ops with per-op overhead; tanh alone
# took 12 ns per element, 25x numpy's. These two ops run the time loop in numpy, with the
# equations of layers.GRU (either reset convention) and its masking, and keep per step only
# what the backward pass needs. The weight gradient is then one matmul over all timesteps.


def _sigmoid(x, out):
    """Logistic function in place through tanh: numpy's float32 tanh is vectorised."""
    np.multiply(x, np.float32(0.5), out=out)
    np.tanh(out, out=out)
    out *= np.float32(0.5)
    out += np.float32(0.5)
    return out


class GRUSequence(Op):
    """(x_proj (T, B, 3H), mask (T, B), h0 (B, H), U (H, 3H)) -> states (T, B, H), plus what
    GRUSequenceGrad needs: gates [z; r] (T, B, 2H), candidates h~ (T, B, H) and `aux`
    (T, B, H): r * h_prev for Cho's form, h_prev @ U_h for reset_after. Padded steps
    (mask 0) carry the previous state through, as layers.Recurrent.scan does."""

    __props__ = ("reset_after",)

    def __init__(self, reset_after=False):
        self.reset_after = bool(reset_after)

    def make_node(self, x_proj, mask, h0, U):
        inputs = [_f32(v) for v in (x_proj, mask, h0, U)]
        if [v.type.ndim for v in inputs] != [3, 2, 2, 2]:
            raise ValueError(f"GRUSequence wants (T, B, 3H), (T, B), (B, H), (H, 3H); got {[v.type for v in inputs]}")
        return Apply(self, inputs, [pt.tensor3(dtype="float32") for _ in range(4)])

    def perform(self, node, inputs, outputs):
        x, mask, h, U = inputs
        T, B, H = x.shape[0], h.shape[0], h.shape[1]
        states, gates, cand, aux = (np.empty((T, B, w), np.float32) for w in (H, 2 * H, H, H))
        U = np.ascontiguousarray(U)
        U_zr, U_h = np.ascontiguousarray(U[:, : 2 * H]), np.ascontiguousarray(U[:, 2 * H :])
        hu = np.empty((B, 3 * H), np.float32)
        tmp = np.empty((B, H), np.float32)
        for t in range(T):
            zr, h_tilde = gates[t], cand[t]
            if self.reset_after:
                np.dot(h, U, out=hu)
                np.add(x[t, :, : 2 * H], hu[:, : 2 * H], out=zr)
                _sigmoid(zr, zr)
                aux[t] = hu[:, 2 * H :]
                np.multiply(zr[:, H:], aux[t], out=h_tilde)
            else:
                np.dot(h, U_zr, out=zr)
                zr += x[t, :, : 2 * H]
                _sigmoid(zr, zr)
                np.multiply(zr[:, H:], h, out=aux[t])
                np.dot(aux[t], U_h, out=h_tilde)
            h_tilde += x[t, :, 2 * H :]
            np.tanh(h_tilde, out=h_tilde)
            # h' = h~ + z * (h - h~), then masked: h_t = h + m * (h' - h)
            np.subtract(h, h_tilde, out=tmp)
            tmp *= zr[:, :H]
            tmp += h_tilde
            tmp -= h
            tmp *= mask[t][:, None]
            np.add(h, tmp, out=states[t])
            h = states[t]
        for out, value in zip(outputs, (states, gates, cand, aux)):
            out[0] = value

    def connection_pattern(self, node):
        # The mask only selects between states; it gets no gradient.
        return [[True] * 4, [False] * 4, [True] * 4, [True] * 4]

    def pullback(self, inputs, outputs, output_grads):
        x, mask, h0, U = inputs
        if any(not isinstance(g.type, DisconnectedType) for g in output_grads[1:]):
            raise NotImplementedError("GRUSequence: only the states output is differentiable")
        dx, dh0, dU = GRUSequenceGrad(self.reset_after)(mask, h0, U, *outputs, output_grads[0])
        return [dx, DisconnectedType()(), dh0, dU]


class GRUSequenceGrad(Op):
    """Backward pass of GRUSequence: (mask, h0, U, states, gates, cand, aux, d states)
    -> (d x_proj (T, B, 3H), d h0 (B, H), d U (H, 3H))."""

    __props__ = ("reset_after",)

    def __init__(self, reset_after=False):
        self.reset_after = bool(reset_after)

    def make_node(self, mask, h0, U, states, gates, cand, aux, g_states):
        inputs = [_f32(v) for v in (mask, h0, U, states, gates, cand, aux, g_states)]
        return Apply(self, inputs, [pt.tensor3(dtype="float32"), pt.matrix(dtype="float32"), pt.matrix(dtype="float32")])

    def perform(self, node, inputs, outputs):
        mask, h0, U, states, gates, cand, aux, g_states = inputs
        T, B, H = states.shape
        dx = np.empty((T, B, 3 * H), np.float32)  # also the pre-activation gradients
        U_T = np.ascontiguousarray(U.T)  # (3H, H)
        dh = np.zeros((B, H), np.float32)
        d_new, d_tilde, tmp = (np.empty((B, H), np.float32) for _ in range(3))
        d_gate = np.empty((B, 2 * H), np.float32)
        d_hu_h = np.empty((T, B, H), np.float32) if self.reset_after else None  # d(h_prev @ U_h)
        for t in range(T - 1, -1, -1):
            h_prev = states[t - 1] if t > 0 else h0
            z, r, h_tilde = gates[t, :, :H], gates[t, :, H:], cand[t]
            dh += g_states[t]
            np.multiply(dh, mask[t][:, None], out=d_new)  # through the new state ...
            dh -= d_new  # ... and (1 - m) * dh straight to h_prev
            # h' = z * h_prev + (1 - z) * h~
            np.multiply(d_new, z, out=tmp)
            dh += tmp
            np.subtract(d_new, tmp, out=d_tilde)  # d_new * (1 - z)
            ds = dx[t, :, 2 * H :]  # candidate pre-activation: d_tilde * (1 - h~^2)
            np.multiply(h_tilde, h_tilde, out=ds)
            np.subtract(np.float32(1.0), ds, out=ds)
            ds *= d_tilde
            dzr = dx[t, :, : 2 * H]
            np.subtract(h_prev, h_tilde, out=dzr[:, :H])
            dzr[:, :H] *= d_new  # dz
            if self.reset_after:
                np.multiply(ds, aux[t], out=dzr[:, H:])  # dr = ds * (h_prev @ U_h)
                np.multiply(ds, r, out=d_hu_h[t])
            else:
                np.dot(ds, U_T[2 * H :], out=tmp)  # d(r * h_prev)
                np.multiply(tmp, h_prev, out=dzr[:, H:])  # dr
                tmp *= r
                dh += tmp
            # through the sigmoids: d pre = d gate * g * (1 - g)
            np.subtract(np.float32(1.0), gates[t], out=d_gate)
            d_gate *= gates[t]
            dzr *= d_gate
            dh += dzr @ U_T[: 2 * H]
            if self.reset_after:
                dh += d_hu_h[t] @ U_T[2 * H :]
        # Weight gradient: one matmul over all timesteps, sum_t h_prev_t^T d pre_t.
        h_prevs = np.concatenate([h0[None], states[:-1]], axis=0).reshape(T * B, H)
        flat = dx.reshape(T * B, 3 * H)
        if self.reset_after:
            dU = h_prevs.T @ np.concatenate([flat[:, : 2 * H], d_hu_h.reshape(T * B, H)], axis=1)
        else:
            dU = np.concatenate([h_prevs.T @ flat[:, : 2 * H], aux.reshape(T * B, H).T @ flat[:, 2 * H :]], axis=1)
        outputs[0][0], outputs[1][0], outputs[2][0] = dx, dh, dU


def gru_sequence(x_proj, mask, h0, U, reset_after=False):
    """States (T, B, H) of layers.GRU run over x_proj with `mask`, from h0; see GRUSequence."""
    return GRUSequence(reset_after)(x_proj, mask, h0, U)[0]
