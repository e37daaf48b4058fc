"""gru_sequence(x_proj, mask, h0, U): cells.GRU's whole masked time loop as one C function,
with a hand-written backward pass whose weight gradient is computed once, over all timesteps.

Under scan, each GRU timestep runs as several small ops with per-op overhead. These two ops
run the time loop in C, with the equations of cells.GRU (either reset convention) and its
masking: each step's matmuls through the OpenBLAS in numpy's wheel (thunks.openblas), its
elementwise work in a few vectorised loops (glibc's vector expf and tanhf, IEEE semantics, as
elemwise_kernel.py), and no Python between the steps. They keep per step only what the
backward pass needs. Without that OpenBLAS or a C compiler, `available()` is false and the
GRU runs on the generic loop (recurrence.StepLoop). tests/test_gru_kernel.py checks both
ops against scan, values and gradients; docs/performance.md (round eight) has the timings.
"""
import ctypes
import functools

import numpy as np

import elemwise_kernel
from flags import FLOATX
import pytensor.tensor as pt
from pytensor.gradient import DisconnectedType
from pytensor.graph.basic import Apply
from pytensor.graph.op import Op

from thunks import contiguous, openblas

# Row-major arrays throughout; x (T, B, 3H) holds [z, r, h] blocks, gates (T, B, 2H) [z, r].
_SOURCE = elemwise_kernel.HEADER + r"""
typedef intptr_t I;
typedef void (*gemm_fn)(int, int, int, int64_t, int64_t, int64_t, float, const float*, int64_t,
                        const float*, int64_t, float, float*, int64_t);
static gemm_fn gemm;
void set_gemm(void* f) { gemm = (gemm_fn)f; }
/* C (M, N) = beta C + A (M, K) @ B (K, N); ld: row strides (101: row-major, 111/112: as is/transposed) */
static void mm(I M, I N, I K, const float* A, I lda, const float* B, I ldb, float beta, float* C, I ldc) {
    gemm(101, 111, 111, M, N, K, 1.0f, A, lda, B, ldb, beta, C, ldc);
}
/* C (M, N) = beta C + A^T @ B (K, N), where A is stored (K, M) */
static void mm_at(I M, I N, I K, const float* A, const float* B, I ldb, float beta, float* C, I ldc) {
    gemm(101, 112, 111, M, N, K, 1.0f, A, M, B, ldb, beta, C, ldc);
}
static inline float sig(float v) { return 1.0f / (1.0f + expf(-v)); }

void gru_forward(I T, I B, I H, int after, const float* x, const float* mask, const float* h0, const float* U,
                 float* states, float* gates, float* cand, float* aux, float* hu) {
    const float* h = h0;
    for (I t = 0; t < T; ++t) {
        const float *xt = x + t * B * 3 * H, *m = mask + t * B;
        float *zr = gates + t * B * 2 * H, *c = cand + t * B * H, *a = aux + t * B * H, *out = states + t * B * H;
        if (after) mm(B, 3 * H, H, h, H, U, 3 * H, 0.0f, hu, 3 * H);      /* hu = h U */
        else mm(B, 2 * H, H, h, H, U, 3 * H, 0.0f, zr, 2 * H);           /* zr = h U_zr */
        for (I b = 0; b < B; ++b) {  /* z, r = sigmoid(x + h U_zr); aux = h U_h, or r * h */
            const float *xb = xt + b * 3 * H, *hb = h + b * H, *ub = after ? hu + b * 3 * H : zr + b * 2 * H;
            float *g = zr + b * 2 * H, *ab = a + b * H;
            #pragma omp simd
            for (I j = 0; j < 2 * H; ++j) g[j] = sig(xb[j] + ub[j]);
            #pragma omp simd
            for (I j = 0; j < H; ++j) ab[j] = after ? ub[2 * H + j] : g[H + j] * hb[j];
        }
        if (!after) mm(B, H, H, a, H, U + 2 * H, 3 * H, 0.0f, c, H);    /* c = (r * h) U_h */
        for (I b = 0; b < B; ++b) {  /* h~ = tanh(x_h + that); h' = h~ + z (h - h~); masked */
            const float *xb = xt + b * 3 * H + 2 * H, *hb = h + b * H, *g = zr + b * 2 * H, *ab = a + b * H;
            const float mb = m[b];
            float *cb = c + b * H, *o = out + b * H;
            #pragma omp simd
            for (I j = 0; j < H; ++j) {
                const float ct = tanhf(xb[j] + (after ? g[H + j] * ab[j] : cb[j]));
                cb[j] = ct;
                o[j] = hb[j] + mb * (ct + g[j] * (hb[j] - ct) - hb[j]);
            }
        }
        h = out;
    }
}

/* dh (B, H): zeros in, d h0 out. dx (T, B, 3H): the pre-activation gradients; pre (T, B, 3H),
   reset_after only: [dz, dr, d(h U_h)], what h U's gradient reads. */
void gru_backward(I T, I B, I H, int after, const float* mask, const float* h0, const float* UT,
                  const float* states, const float* gates, const float* cand, const float* aux, const float* g_states,
                  float* dx, float* pre, float* dh, float* tmp, float* dU) {
    for (I t = T - 1; t >= 0; --t) {
        const float *hp = t ? states + (t - 1) * B * H : h0, *zr = gates + t * B * 2 * H, *c = cand + t * B * H;
        const float *a = aux + t * B * H, *gs = g_states + t * B * H, *m = mask + t * B;
        float *dxt = dx + t * B * 3 * H, *pt = after ? pre + t * B * 3 * H : dxt;
        for (I b = 0; b < B; ++b) {
            const float mb = m[b];
            const float *z = zr + b * 2 * H, *r = z + H, *cb = c + b * H, *hb = hp + b * H;
            const float *ab = a + b * H, *gb = gs + b * H;
            float *d = dh + b * H, *dz = dxt + b * 3 * H, *dr = dz + H, *ds = dz + 2 * H, *p = pt + b * 3 * H;
            #pragma omp simd
            for (I j = 0; j < H; ++j) {  /* h_t = h + m (z h + (1 - z) h~ - h) */
                const float dt = d[j] + gb[j], dn = dt * mb, dtilde = dn * (1.0f - z[j]);
                d[j] = dt - dtilde;                          /* (1 - m) dt + m z dt */
                ds[j] = dtilde * (1.0f - cb[j] * cb[j]);     /* through tanh */
                dz[j] = (hb[j] - cb[j]) * dn * (z[j] * (1.0f - z[j]));
            }
            if (after) {  /* h~ = tanh(x_h + r * (h U_h)) */
                #pragma omp simd
                for (I j = 0; j < H; ++j) {
                    dr[j] = ds[j] * ab[j] * (r[j] * (1.0f - r[j]));
                    p[j] = dz[j], p[H + j] = dr[j], p[2 * H + j] = ds[j] * r[j];
                }
            }
        }
        if (after) {
            mm(B, H, 3 * H, pt, 3 * H, UT, H, 1.0f, dh, H);             /* dh += pre_t U^T */
            continue;
        }
        mm(B, H, H, dxt + 2 * H, 3 * H, UT + 2 * H * H, H, 0.0f, tmp, H);  /* d(r * h) = ds U_h^T */
        for (I b = 0; b < B; ++b) {
            const float *r = zr + b * 2 * H + H, *hb = hp + b * H, *tb = tmp + b * H;
            float *d = dh + b * H, *dr = dxt + b * 3 * H + H;
            #pragma omp simd
            for (I j = 0; j < H; ++j) {
                dr[j] = tb[j] * hb[j] * (r[j] * (1.0f - r[j]));
                d[j] += tb[j] * r[j];
            }
        }
        mm(B, H, 2 * H, dxt, 3 * H, UT, H, 1.0f, dh, H);               /* dh += [dz dr] U_zr^T */
    }
    if (T == 0) return;
    /* dU = sum_t h_{t-1}^T [dz dr d(h U_h)]_t, with (r * h)_{t}^T dh~_t for U_h in Cho's form */
    const float* g = after ? pre : dx;
    const I n = after ? 3 * H : 2 * H;
    mm_at(H, n, B, h0, g, 3 * H, 0.0f, dU, 3 * H);
    if (T > 1) mm_at(H, n, (T - 1) * B, states, g + B * 3 * H, 3 * H, 1.0f, dU, 3 * H);
    if (!after) mm_at(H, H, T * B, aux, dx + 2 * H, 3 * H, 0.0f, dU + 2 * H, 3 * H);
}
"""


@functools.cache
def _library():
    lib = elemwise_kernel.library("gru", _SOURCE)
    lib.set_gemm(ctypes.c_void_p(ctypes.cast(openblas("cblas_sgemm"), ctypes.c_void_p).value))
    return lib


def available():
    """Whether the C loop can be built here: a C compiler and numpy's OpenBLAS."""
    return bool(elemwise_kernel.COMPILER) and openblas("cblas_sgemm") is not None


def _f32(x):
    return pt.as_tensor_variable(x).astype(FLOATX)


def _ptrs(*arrays):
    return [ctypes.c_void_p(a.ctypes.data) for a in arrays]


class GRUSequence(Op):
    """(x_proj (T, B, 3H), mask (T, B), h0 (B, H), U (H, 3H)) -> states (T, B, H), plus what
    GRUSequenceGrad needs: gates [z; r] (T, B, 2H), candidates h~ (T, B, H) and `aux`
    (T, B, H): r * h_prev for Cho's form, h_prev @ U_h for reset_after. Padded steps
    (mask 0) carry the previous state through, as cells.Recurrent.scan does."""

    __props__ = ("reset_after",)

    def __init__(self, reset_after=False):
        self.reset_after = bool(reset_after)

    def make_node(self, x_proj, mask, h0, U):
        inputs = [_f32(v) for v in (x_proj, mask, h0, U)]
        if [v.type.ndim for v in inputs] != [3, 2, 2, 2]:
            raise ValueError(f"GRUSequence wants (T, B, 3H), (T, B), (B, H), (H, 3H); got {[v.type for v in inputs]}")
        return Apply(self, inputs, [pt.tensor3(dtype=FLOATX) for _ in range(4)])

    def perform(self, node, inputs, outputs):
        x, mask, h0, U = (np.ascontiguousarray(v, np.float32) for v in inputs)
        (T, B), H = mask.shape, h0.shape[1]
        if x.shape != (T, B, 3 * H) or h0.shape[0] != B or U.shape != (H, 3 * H):
            raise ValueError(f"GRUSequence: shapes {x.shape}, {mask.shape}, {h0.shape}, {U.shape} do not agree")
        states, gates, cand, aux = (np.empty((T, B, w), np.float32) for w in (H, 2 * H, H, H))
        hu = np.empty((B, 3 * H), np.float32)
        _library().gru_forward(*map(ctypes.c_ssize_t, (T, B, H)), ctypes.c_int(self.reset_after),
                               *_ptrs(x, mask, h0, U, states, gates, cand, aux, hu))
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
        return Apply(self, inputs, [pt.tensor3(dtype=FLOATX), pt.matrix(dtype=FLOATX), pt.matrix(dtype=FLOATX)])

    def perform(self, node, inputs, outputs):
        mask, h0, U, states, gates, cand, aux, g_states = (np.ascontiguousarray(v, np.float32) for v in inputs)
        T, B, H = states.shape
        dx = np.empty((T, B, 3 * H), np.float32)  # the pre-activation gradients
        pre = np.empty((T, B, 3 * H), np.float32) if self.reset_after else dx
        dh, tmp, dU = np.zeros((B, H), np.float32), np.empty((B, H), np.float32), np.zeros((H, 3 * H), np.float32)
        U_T = contiguous(U.T)  # (a name: it must outlive the call)
        _library().gru_backward(*map(ctypes.c_ssize_t, (T, B, H)), ctypes.c_int(self.reset_after),
                                *_ptrs(mask, h0, U_T, states, gates, cand, aux, g_states, dx, pre, dh, tmp, dU))
        outputs[0][0], outputs[1][0], outputs[2][0] = dx, dh, dU


def gru_sequence(x_proj, mask, h0, U, reset_after=False):
    """States (T, B, H) of cells.GRU run over x_proj with `mask`, from h0; see GRUSequence."""
    return GRUSequence(reset_after)(x_proj, mask, h0, U)[0]
