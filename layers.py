"""Pluggable modules: GRU, LSTM, FF, Embedding, Dropout, and the registry of cell names
(attention is in attention.py). Time is axis 0 everywhere.

Every module owns named shared variables (`encoder.W`, `decoder.U`, ...) and exposes `params`
and `getUpdates(cost, lr)`, which is how training updates it (`module.frozen = True` or
`module.lr_scale = 0.1` in `initModules()` freeze it or slow it). A recurrent cell splits a
step in two, `x_proj = cell.project(x)` (one matmul for every timestep, outside the loop) and
`cell.recur(x_proj_t, *state)`; `cell.step(x_t, *state)` does both, for `pytensor.scan` as in
the seed. `cell.scan(x_proj, mask)` runs the masked loop as one op derived from the cell's own
`recur` (recurrence.py), so a new cell, or a subclass that overrides `recur`, is fast and
exact with no other code. `register_cell` names a cell for `--cell`.
"""
import importlib

import numpy as np

import backend  # noqa: F401  (sets floatX before pytensor is used)
import kernels
import optim
import pytensor
import pytensor.tensor as pt
import recurrence

FLOATX = "float32"


def _shared(name, value):
    value = np.asarray(value, dtype=FLOATX)
    return pytensor.shared(value, name=name, shape=value.shape)


def _uniform(rng, shape, scale):
    return rng.uniform(-scale, scale, size=shape)


def _glorot(rng, n_in, n_out):
    return _uniform(rng, (n_in, n_out), np.sqrt(6.0 / (n_in + n_out)))


def _orthogonal(rng, n):
    q, r = np.linalg.qr(rng.standard_normal((n, n)))
    return q * np.sign(np.diag(r))  # sign fix makes the draw uniform over rotations


class Module:
    """Base class: a named set of shared variables, updated through `getUpdates`."""

    frozen = False  # True: training leaves this module's params as they are
    lr_scale = 1.0  # this module's learning rate is lr * lr_scale

    def __init__(self, name):
        self.name = name
        self.params = []

    def add_param(self, short_name, value):
        """Create a float32 shared variable named `<module>.<short_name>` and register it."""
        param = _shared(f"{self.name}.{short_name}", value)
        self.params.append(param)
        return param

    def getUpdates(self, cost, lr, grads=None, optimizer=optim.sgd):
        """Update pairs `(shared, new value)` for this module's params: by default plain SGD,
        `(p, p - lr * dcost/dp)`, as in the seed. Training passes the clipped `grads` (one
        per param) and the configured optimizer (optim.py). A frozen module returns []."""
        if self.frozen or not self.params:
            return []
        grads = pytensor.grad(cost, self.params) if grads is None else grads
        return optimizer(self.params, grads, lr * np.float32(self.lr_scale), owner=self.name)


def _widths(inputSize):
    """`inputSize` is an int, or a list of widths of inputs used as their concatenation."""
    widths = [int(inputSize)] if np.isscalar(inputSize) else [int(w) for w in inputSize]
    if not widths or min(widths) < 1:
        raise ValueError(f"input sizes must be positive, got {inputSize!r}")
    return widths


def _affine(inputs, widths, W, b):
    """`concat(inputs) @ W + b` without building the concatenation. The inputs' leading shapes
    may broadcast, e.g. (T, B, E) and (B, C): a per-sequence context fed to every timestep
    costs one (B, C) matmul. One input of the full width is always accepted."""
    if len(inputs) == 1:
        widths = [sum(widths)]
    if len(inputs) != len(widths):
        raise ValueError(f"got {len(inputs)} inputs for input widths {widths}")
    out, row = b, 0
    for x, width in zip(inputs, widths):
        out = out + pt.dot(x, W[row : row + width])
        row += width
    return out


class FF(Module):
    """Feed-forward layer: y = activation(x @ W + b).

    `activation` is a callable such as `pt.tanh`, or one of "tanh", "sigmoid", "relu",
    "linear"/None. With `inputSize` a list of widths, `ff(a, b)` means `ff(concat(a, b))`.
    """

    ACTIVATIONS = {"tanh": pt.tanh, "sigmoid": pt.sigmoid, "relu": lambda x: pt.maximum(x, 0),
                   "linear": lambda x: x, None: lambda x: x}

    def __init__(self, inputSize, outputSize, activation="tanh", name="ff", rng=None):
        super().__init__(name)
        if callable(activation):
            self.activation = activation
        elif activation in self.ACTIVATIONS:
            self.activation = self.ACTIVATIONS[activation]
        else:
            raise ValueError(f"{name}: unknown activation {activation!r}")
        rng = rng or np.random.default_rng(0)
        self.widths = _widths(inputSize)
        self.inputSize, self.outputSize = sum(self.widths), outputSize
        self.W = self.add_param("W", _glorot(rng, self.inputSize, outputSize))
        self.b = self.add_param("b", np.zeros(outputSize))

    def __call__(self, *inputs):
        return self.activation(_affine(inputs, self.widths, self.W, self.b))

    step = __call__


class Embedding(Module):
    """Lookup table: ids (any shape, int) -> vectors (..., outputSize).

    Rows start as N(0, init_std**2) draws (ModelConfig.embed_init_std). `Embedding.tied(other,
    name)` reads `other`'s table and owns no parameter (one table for source and target).
    """

    def __init__(self, vocabSize, outputSize, name="embed", rng=None, init_std=1.0):
        super().__init__(name)
        rng = rng or np.random.default_rng(0)
        self.W = self.add_param("W", rng.normal(0.0, init_std, size=(vocabSize, outputSize)))

    @classmethod
    def tied(cls, other, name):
        tied = cls.__new__(cls)
        Module.__init__(tied, name)
        tied.W = other.W
        return tied

    def __call__(self, ids):
        return self.W[ids]


class TiedOutput(Module):
    """The softmax layer with the target word vectors as its weights (Press & Wolf 2017):
    logits = x @ embed.W^T + b. Owns only b; the table's gradient reaches the embedding."""

    def __init__(self, embed, name="ffout"):
        super().__init__(name)
        self.embed = embed
        vocab_size, self.inputSize = embed.W.get_value(borrow=True).shape
        self.outputSize = vocab_size
        self.b = self.add_param("b", np.zeros(vocab_size))

    def __call__(self, x):
        return pt.dot(x, self.embed.W.T) + self.b


class Dropout:
    """Inverted dropout with masks drawn inside the graph from one shared generator, `rng`,
    which checkpoints save. Call `begin()` before building a function's graph and pass
    `updates()` to pytensor.function, so that each call draws new masks."""

    def __init__(self, seed):
        self.rng = self._next = pytensor.shared(np.random.default_rng(seed), name="dropout_rng")

    def begin(self):
        self._next = self.rng

    def uniform(self, shape):
        """Uniform [0, 1) draws of `shape` (a python 1 in it makes that axis broadcastable)."""
        self._next, u = pt.random.uniform(size=shape, rng=self._next, return_next_rng=True)
        return u.astype(FLOATX)

    def mask(self, shape, rate):
        """A float mask of `shape`: 0 with probability `rate`, else 1 / (1 - rate)."""
        keep = np.float32(1.0 - rate)
        return pt.lt(self.uniform(shape), keep).astype(FLOATX) / keep

    def __call__(self, x, rate):
        return x * self.mask(x.shape, rate)

    def locked(self, x, rate):
        """Variational dropout of a sequence x (T, B, D): one mask per sequence, the same at
        every timestep (Gal & Ghahramani 2016)."""
        return x * self.mask((1, x.shape[1], x.shape[2]), rate)  # (1, B, D), broadcast over T

    def updates(self):
        return [(self.rng, self._next)] if self._next is not self.rng else []


class Recurrent(Module):
    """What every cell shares: input projection, the masked time loop, state bookkeeping.

    Subclasses set `n_gates` (the projection is (T, B, n_gates * H)) and `n_states`, and
    define `recur(x_proj_t, *state)`, which returns the new state: one tensor for the GRU, a
    list [h, c] for the LSTM. The first state is h, the one the rest of the model reads.
    `fused=False` runs the loop under pytensor.scan (recurrence.loop's reference).
    """

    n_gates = 1
    n_states = 1

    def __init__(self, inputSize, hiddenSize, name="cell", rng=None, fused=True):
        super().__init__(name)
        rng = rng or np.random.default_rng(0)
        self.fused = fused
        self.widths = _widths(inputSize)
        self.inputSize, self.hiddenSize = sum(self.widths), hiddenSize
        G, H, I = self.n_gates, hiddenSize, self.inputSize
        # Gates stacked along columns, so one matmul computes all of them.
        self.W = self.add_param("W", np.hstack([_glorot(rng, I, H) for _ in range(G)]))
        self.U = self.add_param("U", np.hstack([_orthogonal(rng, H) for _ in range(G)]))
        self.b = self.add_param("b", np.zeros(G * H))

    def project(self, *inputs):
        """Input projection for every timestep in one matmul: (T, B, I) -> (T, B, G*H). With
        `inputSize` a list of widths, several inputs act as their concatenation and may
        broadcast: the decoder passes (T, B, E) embeddings and a (B, C) context."""
        return _affine(inputs, self.widths, self.W, self.b)

    def step(self, x_t, *state):
        """One timestep on a raw input x_t (B, I): the seed's API, usable directly as
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
        backend.MODES (None: pytensor.function's default). `weights` maps some of this
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

    def __init__(self, inputSize, hiddenSize, name="gru", rng=None, reset_after=False, fused=True):
        super().__init__(inputSize, hiddenSize, name, rng, fused)
        self.reset_after = reset_after

    def kernel(self, step, x_proj, mask, init, weights):
        """kernels.GRUSequence, a hand-written loop of these equations (about 2x faster than
        the generic op, docs/performance.md), for the stock GRU's own `recur`. A subclass
        that overrides `recur` gets the generic op, built from its own `recur`."""
        if getattr(step, "__func__", None) is not GRU.recur or set(weights) - {self.U}:
            return None
        return [kernels.gru_sequence(x_proj, mask, init[0], weights.get(self.U, self.U), self.reset_after)]

    # recur(x_proj_t, h_prev): x_proj_t (B, 3H) is this step's input projection.
    def recur(self, x_t, h_prev):
        H = self.hiddenSize
        if self.reset_after:
            hu = pt.dot(h_prev, self.U)  # (B, 3H), one matmul for all gates
            zr = pt.sigmoid(x_t[:, : 2 * H] + hu[:, : 2 * H])
            z, r = zr[:, :H], zr[:, H:]
            h_tilde = pt.tanh(x_t[:, 2 * H :] + r * hu[:, 2 * H :])
        else:
            zr = pt.sigmoid(x_t[:, : 2 * H] + pt.dot(h_prev, self.U[:, : 2 * H]))
            z, r = zr[:, :H], zr[:, H:]
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

    def __init__(self, inputSize, hiddenSize, name="lstm", rng=None, fused=True):
        super().__init__(inputSize, hiddenSize, name, rng, fused)
        b = np.zeros(4 * hiddenSize, dtype=FLOATX)
        b[hiddenSize : 2 * hiddenSize] = 1.0
        self.b.set_value(b)

    # recur(x_proj_t, h_prev, c_prev): x_proj_t (B, 4H) is this step's input projection.
    def recur(self, x_t, h_prev, c_prev):
        H = self.hiddenSize
        gates = x_t + pt.dot(h_prev, self.U)  # (B, 4H), one matmul for all gates
        ifo = pt.sigmoid(gates[:, : 3 * H])
        i, f, o = ifo[:, :H], ifo[:, H : 2 * H], ifo[:, 2 * H :]
        g = pt.tanh(gates[:, 3 * H :])
        c = f * c_prev + i * g
        h = o * pt.tanh(c)
        return [h, c]


# ---- the registry of cell names (ModelConfig.cell, --cell) ----------------------------------

CELLS = {"gru": GRU, "lstm": LSTM}


def register_cell(name):
    """Class decorator: make a Recurrent subclass available as `--cell=<name>`.

        @layers.register_cell("mgu")
        class MGU(layers.Recurrent): ...
    """

    def register(cls):
        if not (isinstance(cls, type) and issubclass(cls, Recurrent)):
            raise TypeError(f"register_cell({name!r}): {cls!r} is not a layers.Recurrent subclass")
        CELLS[name] = cls
        return cls

    return register


def named_class(name, registry, base, what):
    """The class `name` names: a key of `registry`, or `module:Class` for a class in a file
    of your own (`mycells:MGU` imports mycells.py), which must subclass `base`. A ValueError
    in one line names the choices, or what went wrong with the import. `what` is "cell",
    "attention", ... as the error says it."""
    if name in registry:
        return registry[name]
    if ":" in name:
        module_name, _, class_name = name.partition(":")
        try:
            module = importlib.import_module(module_name)
        except Exception as err:  # a user's file may fail in any way: name it in one line
            where = f" ({err.filename}, line {err.lineno})" if isinstance(err, SyntaxError) else ""
            raise ValueError(f"importing {module_name} failed: {type(err).__name__}: "
                             f"{getattr(err, 'msg', None) or err}{where}") from None
        cls = getattr(module, class_name, None)
        if cls is None:
            raise ValueError(f"{module_name} has no {class_name}")
        if isinstance(cls, type) and issubclass(cls, base):
            return cls
        raise ValueError(f"{what} {name!r} is not a subclass of {base.__module__}.{base.__name__}")
    raise ValueError(f"unknown {what} {name!r}; choose one of {', '.join(sorted(registry))}, or module:Class")


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
        shapes = [v.shape for v in pytensor.function([x, *states], new, mode=backend.compile_mode("FAST_COMPILE"),
                                                     on_unused_input="ignore")(*values)]
    except Exception as err:
        raise ValueError(f"{name}.recur failed on a batch of {batch_size} (input ({batch_size}, {P}), states "
                         f"({batch_size}, {H})): {type(err).__name__}: {str(err).splitlines()[0]}") from None
    expected = [(batch_size, H)] * cell.n_states
    if shapes != expected:
        raise ValueError(f"{name}.recur returned states of shapes {shapes}; expected {expected} "
                         f"(batch, hiddenSize) for n_gates={cell.n_gates}, hiddenSize={H}")
