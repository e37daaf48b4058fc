"""The recurrent cells, GRU and LSTM, what every cell shares (Recurrent), and the registry of
cell names (`--cell`). Time is axis 0.

A cell splits a step in two, `x_proj = cell.project(x)` (one matmul for every timestep,
outside the loop) and `cell.recur(x_proj_t, *state)`; `cell.step(x_t, *state)` does both, for
`pytensor.scan(cell.step, ...)`. `cell.scan(x_proj, mask)` runs the masked loop as one op
derived from the cell's own `recur` (recurrence.loop), so a new cell, or a subclass that
overrides `recur`, is fast and exact with no other code. `register_cell` names a cell for
`--cell`; `check_cell` is what every slot of a model needs from a user's cell.
"""
import numpy as np

from flags import FLOATX
import gru_kernel
import modes
import pytensor
import pytensor.tensor as pt
import recurrence
from module import Module, affine, glorot, named_class, orthogonal, widths_of


class Recurrent(Module):
    """What every cell shares: input projection, the masked time loop, state bookkeeping.

    Subclasses set `n_gates` (the projection is (T, B, n_gates * H)) and `n_states`, and
    define `recur(x_proj_t, *state)`, which returns the new state: one tensor for the GRU, a
    list [h, c] for the LSTM. The first state is h, the one the rest of the model reads.
    `fast_loop=False` runs the loop under pytensor.scan (recurrence.loop's reference).
    """

    n_gates = 1
    n_states = 1

    def __init__(self, inputSize, hiddenSize, name="cell", rng=None, fast_loop=True):
        super().__init__(name)
        rng = rng or np.random.default_rng(0)
        self.fast_loop = fast_loop
        self.widths = widths_of(inputSize)
        self.inputSize, self.hiddenSize = sum(self.widths), hiddenSize
        G, H, I = self.n_gates, hiddenSize, self.inputSize
        # Gates stacked along columns, so one matmul computes all of them.
        self.W = self.add_param("W", np.hstack([glorot(rng, I, H) for _ in range(G)]))
        self.U = self.add_param("U", np.hstack([orthogonal(rng, H) for _ in range(G)]))
        self.b = self.add_param("b", np.zeros(G * H))

    def project(self, *inputs):
        """Input projection for every timestep in one matmul: (T, B, I) -> (T, B, G*H). With
        `inputSize` a list of widths, several inputs act as their concatenation and may
        broadcast: the decoder passes (T, B, E) embeddings and a (B, C) context."""
        return affine(inputs, self.widths, self.W, self.b)

    def step(self, x_t, *state):
        """One timestep on a raw input x_t (B, I): the original example's API, usable directly as
        `pytensor.scan(cell.step, sequences=x, outputs_info=...)`. Returns the new state."""
        return self.recur(self.project(x_t), *state)

    def recur(self, x_proj_t, *state):
        raise NotImplementedError(f"{type(self).__name__} must define recur(x_proj_t, *state)")

    def initial_state(self, h0):
        """The full state to start from, given the hidden part h0 (B, H)."""
        return [h0] + [pt.zeros_like(h0)] * (self.n_states - 1)

    def zeros(self, batch_size):
        return self.initial_state(pt.zeros((batch_size, self.hiddenSize), dtype=FLOATX))

    def scan(self, x_proj, mask, init=None, go_backwards=False, mode=None, weights=None, zoneout=None):
        """Run over a padded batch: the list of state sequences, each (T, B, H).

        x_proj: (T, B, G*H) from `project`; mask: (T, B) float, 1 for real steps, 0 for
        padding. A padded step carries the state through unchanged, so the state at T-1 is
        the state after each sequence's last real token. Backwards, states come out in the
        order computed, as scan's go_backwards gives them. `mode` is a name in
        modes.MODES (None: pytensor.function's default). `weights` maps some of this
        cell's params to what `recur` reads in their place for this loop (weight-drop:
        {U: U * mask}). `zoneout` (T, B, H) is zoneout's update mask (Krueger et al. 2017):
        each state unit takes its new value where it is 1, keeps its previous one where 0,
        and mixes them in between; it is drawn outside the loop and read as input columns,
        so the loop stays fast. The loop itself is recurrence.loop's choice."""
        init = list(init) if init is not None else self.zeros(x_proj.shape[1])
        if go_backwards:
            x_proj, mask = x_proj[::-1], mask[::-1]
            zoneout = None if zoneout is None else zoneout[::-1]
        if zoneout is None:
            return recurrence.loop(self, self.recur, self.n_states, x_proj, mask, init, mode=mode, weights=weights)
        x_proj = pt.concatenate([x_proj, pt.as_tensor_variable(zoneout).astype(FLOATX)], axis=2)
        return recurrence.loop(self, self.zoneout_recur, self.n_states, x_proj, mask, init, mode=mode,
                               weights=weights)

    # zoneout_recur([x_proj_t, u_t], *state): recur on x_proj_t, then each state moves only
    # by u_t (B, H) of the way to its new value.
    def zoneout_recur(self, x_t, *state):
        H = self.hiddenSize
        new = self.recur(x_t[:, :-H], *state)
        return zone_out(new if isinstance(new, (list, tuple)) else [new], state, x_t[:, -H:])

    def kernel(self, step, x_proj, mask, init, weights):
        """A hand-written loop for `step`, or None (recurrence.loop then derives one)."""
        return None


def zone_out(new, prev, u):
    """Zoneout's mix of each new state with the previous one: prev + u * (new - prev), u (B, H)
    the update mask (a number: its expectation, 1 - zoneout)."""
    return [p + u * (s - p) for s, p in zip(new, prev)]


class GRU(Recurrent):
    """Gated recurrent unit of Cho et al. 2014 (arXiv:1406.1078, eqs. 5-8).

        z  = sigmoid(x W_z + h U_z + b_z)              update gate
        r  = sigmoid(x W_r + h U_r + b_r)              reset gate
        h~ = tanh(x W_h + (r * h) U_h + b_h)           reset applied BEFORE the matmul (Cho)
        h' = z * h + (1 - z) * h~

    With `reset_after=True` the candidate is tanh(x W_h + r * (h U_h) + b_h), the convention
    of cuDNN and PyTorch's nn.GRU, which lets all three recurrent matmuls run as one.
    Parameter layout: W (I, 3H), U (H, 3H), b (3H,), gate blocks in the order [z, r, h].
    """

    n_gates = 3

    def __init__(self, inputSize, hiddenSize, name="gru", rng=None, reset_after=False, fast_loop=True):
        super().__init__(inputSize, hiddenSize, name, rng, fast_loop)
        self.reset_after = reset_after

    def kernel(self, step, x_proj, mask, init, weights):
        """gru_kernel.GRUSequence, a hand-written C loop of these equations (its ops 15-31%
        faster than the numpy loop they replaced, which was within 3-5% of the generic op;
        docs/performance.md, round eight), for the stock GRU's own `recur` where it can be
        built. A subclass that overrides `recur` gets the generic op, built from its own
        `recur`."""
        if getattr(step, "__func__", None) is not GRU.recur or set(weights) - {self.U} or not gru_kernel.available():
            return None
        return [gru_kernel.gru_sequence(x_proj, mask, init[0], weights.get(self.U, self.U), self.reset_after)]

    # recur(x_proj_t, h_prev): x_proj_t (B, 3H) is this step's input projection.
    def recur(self, x_t, h_prev):
        H = self.hiddenSize
        # one matmul for the gates: (B, 3H) reset after, (B, 2H) for z and r before
        hu = pt.dot(h_prev, self.U if self.reset_after else self.U[:, : 2 * H])
        z, r = (pt.sigmoid(x_t[:, k * H : (k + 1) * H] + hu[:, k * H : (k + 1) * H]) for k in range(2))
        if self.reset_after:
            h_tilde = pt.tanh(x_t[:, 2 * H :] + r * hu[:, 2 * H :])
        else:
            h_tilde = pt.tanh(x_t[:, 2 * H :] + pt.dot(r * h_prev, self.U[:, 2 * H :]))
        return z * h_prev + (1.0 - z) * h_tilde


class LSTM(Recurrent):
    """Long short-term memory (Hochreiter & Schmidhuber 1997, with the forget gate of
    Gers et al. 2000; no peepholes). State is [h, c].

        i = sigmoid(x W_i + h U_i + b_i)      f = sigmoid(x W_f + h U_f + b_f)
        o = sigmoid(x W_o + h U_o + b_o)      g = tanh(x W_g + h U_g + b_g)
        c' = f * c + i * g
        h' = o * tanh(c')

    Parameter layout: W (I, 4H), U (H, 4H), b (4H,), gate blocks in the order [i, f, o, g].
    The forget-gate bias starts at 1 (Jozefowicz et al. 2015).
    """

    n_gates = 4
    n_states = 2

    def __init__(self, inputSize, hiddenSize, name="lstm", rng=None, fast_loop=True):
        super().__init__(inputSize, hiddenSize, name, rng, fast_loop)
        b = np.zeros(4 * hiddenSize, dtype=FLOATX)
        b[hiddenSize : 2 * hiddenSize] = 1.0
        self.b.set_value(b)

    # recur(x_proj_t, h_prev, c_prev): x_proj_t (B, 4H) is this step's input projection.
    def recur(self, x_t, h_prev, c_prev):
        H = self.hiddenSize
        gates = x_t + pt.dot(h_prev, self.U)  # (B, 4H), one matmul for all gates
        i, f, o = (pt.sigmoid(gates[:, k * H : (k + 1) * H]) for k in range(3))
        g = pt.tanh(gates[:, 3 * H :])
        c = f * c_prev + i * g
        h = o * pt.tanh(c)
        return [h, c]


# ---- the registry of cell names (ModelConfig.cell, --cell) ----------------------------------

CELLS = {"gru": GRU, "lstm": LSTM}


def register_cell(name):
    """Class decorator: make a Recurrent subclass available as `--cell=<name>`.

        @cells.register_cell("mgu")
        class MGU(cells.Recurrent): ...
    """

    def register(cls):
        if not (isinstance(cls, type) and issubclass(cls, Recurrent)):
            raise TypeError(f"register_cell({name!r}): {cls!r} is not a cells.Recurrent subclass")
        CELLS[name] = cls
        return cls

    return register


def cell_class(name):
    """The cell class for `name`: a name in CELLS, or `module:Class` (see named_class)."""
    return named_class(name, CELLS, Recurrent, "cell")


def check_cell(cls, input_size=3, hidden_size=5, batch_size=2):
    """ValueError in one line, naming the class and `recur`, unless a small `cls` builds and
    passes check_recur: what every slot of a model needs from a user's cell."""
    try:
        cell = cls(input_size, hidden_size, name="check", rng=np.random.default_rng(0))
    except Exception as err:
        raise ValueError(f"{cls.__name__}: building it failed: {type(err).__name__}: {err}") from None
    check_recur(cell, batch_size)


def check_recur(cell, batch_size=2):
    """ValueError in one line, naming the cell's class and `recur`, unless its `recur`
    returns n_states float32 states of shape (B, hiddenSize), computed for a batch of 2."""
    name, H, P = type(cell).__name__, cell.hiddenSize, cell.n_gates * cell.hiddenSize
    try:
        x = pt.matrix("x_proj_t", dtype=FLOATX)
        states = [pt.matrix(f"state{k}", dtype=FLOATX) for k in range(cell.n_states)]
        new = cell.recur(x, *states)
    except Exception as err:
        raise ValueError(f"{name}: calling recur failed: {type(err).__name__}: {err}") from None
    new = list(new) if isinstance(new, (list, tuple)) else [new]
    if len(new) != cell.n_states:
        raise ValueError(f"{name}.recur returned {len(new)} state(s); n_states is {cell.n_states}")
    for k, state in enumerate(new):
        if not isinstance(state, pt.TensorVariable) or state.type.dtype != FLOATX:
            got = getattr(getattr(state, "type", None), "dtype", type(state).__name__)
            raise ValueError(f"{name}.recur returned a {got} state {k}; expected {FLOATX} (a float64 constant or "
                             "shared variable upcasts it: use np.float32)")
    rng = np.random.default_rng(0)
    values = [rng.standard_normal((batch_size, P)).astype(FLOATX)]
    values += [rng.standard_normal((batch_size, H)).astype(FLOATX) for _ in states]
    try:
        shapes = [v.shape for v in pytensor.function([x, *states], new, mode=modes.compile_mode("FAST_COMPILE"),
                                                     on_unused_input="ignore")(*values)]
    except Exception as err:
        raise ValueError(f"{name}.recur failed on a batch of {batch_size} (input ({batch_size}, {P}), states "
                         f"({batch_size}, {H})): {type(err).__name__}: {str(err).splitlines()[0]}") from None
    expected = [(batch_size, H)] * cell.n_states
    if shapes != expected:
        raise ValueError(f"{name}.recur returned states of shapes {shapes}; expected {expected} "
                         f"(batch, hiddenSize) for n_gates={cell.n_gates}, hiddenSize={H}")
