"""gru_sequence(x_proj, mask, h0, U): cells.GRU's whole masked time loop in numpy, with a
hand-written backward pass whose weight gradient is one matmul over all timesteps.

Under scan, each GRU timestep runs as several small ops with per-op overhead; tanh alone
took 12 ns per element, 25x numpy's. These two ops run the time loop in numpy, with the
equations of cells.GRU (either reset convention) and its masking, and keep per step only
what the backward pass needs. The numpy code is the op; tests/test_gru_kernel.py checks it
against scan, values and gradients.
"""
import numpy as np

from flags import FLOATX
import pytensor.tensor as pt
from pytensor.gradient import DisconnectedType
from pytensor.graph.basic import Apply
from pytensor.graph.op import Op

from thunks import contiguous, sigmoid


def _f32(x):
    return pt.as_tensor_variable(x).astype(FLOATX)


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
                sigmoid(zr, zr)
                aux[t] = hu[:, 2 * H :]
                np.multiply(zr[:, H:], aux[t], out=h_tilde)
            else:
                np.dot(h, U_zr, out=zr)
                zr += x[t, :, : 2 * H]
                sigmoid(zr, zr)
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
        return Apply(self, inputs, [pt.tensor3(dtype=FLOATX), pt.matrix(dtype=FLOATX), pt.matrix(dtype=FLOATX)])

    def perform(self, node, inputs, outputs):
        mask, h0, U, states, gates, cand, aux, g_states = inputs
        T, B, H = states.shape
        dx = np.empty((T, B, 3 * H), np.float32)  # also the pre-activation gradients
        U_T = contiguous(U.T)  # (3H, H)
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
    """States (T, B, H) of cells.GRU run over x_proj with `mask`, from h0; see GRUSequence."""
    return GRUSequence(reset_after)(x_proj, mask, h0, U)[0]
