"""Decoders: the modules the model's "decoder" slot holds, all with one interface.

    Decoder           Cho et al. 2014: a cell fed the encoder's summary c at every step
    AttentionDecoder  Bahdanau et al. 2015: a cell fed an attention context at every step,
                      with the attention's own state (coverage) and, as a setting, input
                      feeding (Luong et al. 2015)

The interface Model reads (and a decoder of your own provides):

    memory_names                      the memory entries the decoder reads, in order
    prepare(memory) -> memory         adds entries computed once per batch (attention keys)
    initial_state(h0, memory)         -> the state list; h0 (B, H) is the "init" module's
    step(emb_t, state, memory)        -> (new state list, ctx_t, weights_t or None)
    scan(emb, mask, init, memory, mode, weights)
                                      -> (state sequences, ctx, weights or None)

`memory` is the list of the entries `memory_names` names, except in `prepare`, which gets
and returns the whole dict. emb: the target word vectors (T, B, E), emb_t (B, E). The first
state is h, which the readout reads with the word vector and ctx: (B, C) for a context
fed to every step, (T, B, C) for one per step. `weights` maps params to what the step
reads in their place (weight-drop); the attention weights come out as (T, Ts, B).
`scan` runs the whole masked loop through recurrence.loop, so it is as fast as the cell's.
"""
import numpy as np

import cells
import modes
import pytensor
import pytensor.tensor as pt
import recurrence
from attention import ATTENTIONS
from cells import zone_out
from layers import FF
from module import Module, glorot
from stepgraph import as_list


class Decoder(Module):
    """The decoder of Cho et al. 2014: h'_t = cell([e(y_{t-1}); c], h'_{t-1}), the encoder's
    summary c (B, C) fed to every step and to the readout. `cell` takes the inputs [E, C]
    (cells.Recurrent with inputSize=[E, C]); its params are this module's (`decoder.W`)."""

    memory_names = ("c",)

    def __init__(self, cell):
        super().__init__(cell.name)
        self.cell, self.params = cell, list(cell.params)
        self.n_states, self.hiddenSize = cell.n_states, cell.hiddenSize

    def prepare(self, memory):
        return memory

    def initial_state(self, h0, memory):
        return self.cell.initial_state(h0)

    def step(self, emb_t, state, memory):
        (c,) = memory
        return as_list(self.cell.recur(self.cell.project(emb_t, c), *state)), c, None

    def scan(self, emb, mask, init, memory, mode=None, weights=None, zoneout=None):
        (c,) = memory
        x_proj = self.cell.project(emb, c)  # (T, B, G*H); c broadcast over T
        return self.cell.scan(x_proj, mask, init=init, mode=mode, weights=weights, zoneout=zoneout), c, None


class AttentionDecoder(Module):
    """Any cell made to read an attention context (Bahdanau et al. 2015, appendix A.2.2):

        ctx_t, a_t, r_t = attention(h_{t-1}, keys, annotations, src_mask, r_{t-1})
        state_t = cell.recur(e(y_{t-1}) W + b + ctx_t W_c [+ f_{t-1} W_f], state_{t-1})
        f_t     = tanh([h_t; ctx_t] W_a + b_a)           input feeding only

    h is the cell's first state, r the attention's own state (the coverage of
    attention.CoverageAttention; none for the others). With `input_feeding` (Luong et al.
    2015, sec. 3.3) the attentional vector f_t (Luong's eq. 5) enters the next step's input
    through W_f, so each step knows what the previous one attended to. The decoder's state
    is [*cell state, *attention state, f (input feeding)]. The cell, the attention module
    and the feed layer are children: their params are this module's, named `<cell>.W`,
    `<cell>.Wc`, `decoder.attention.W`, `decoder.feed.W`, ...
    """

    def __init__(self, cell, contextSize, attention, rng=None, input_feeding=False):
        super().__init__(cell.name)
        rng = rng or np.random.default_rng(0)
        self.cell, self.attention, self.input_feeding = cell, attention, input_feeding
        self.params = list(cell.params)
        H, G = cell.hiddenSize, cell.n_gates
        self.Wc = self.add_param("Wc", np.hstack([glorot(rng, contextSize, H) for _ in range(G)]))
        self.params += attention.params
        if input_feeding:
            self.feed = FF([H, contextSize], H, "tanh", name=f"{self.name}.feed", rng=rng)
            self.Wf = self.add_param("Wf", np.hstack([glorot(rng, H, H) for _ in range(G)]))
            self.params += self.feed.params
        self.n_attention = getattr(attention, "n_states", 0)
        self.n_states = cell.n_states + self.n_attention + int(input_feeding)
        self.hiddenSize = H
        self.memory_names = ("keys", "annotations", "src_mask") if attention.has_keys else ("annotations", "src_mask")

    @property
    def fast_loop(self):
        """Whether the loop may run as one op (recurrence.loop): the cell's choice."""
        return getattr(self.cell, "fast_loop", True)

    def prepare(self, memory):
        if self.attention.has_keys:
            memory = {**memory, "keys": self.attention.keys(memory["annotations"])}  # (Ts, B, A), once per batch
        return memory

    def _memory(self, memory):
        """(keys, annotations, src_mask) from the entries memory_names lists."""
        return tuple(memory) if self.attention.has_keys else (memory[0], *memory)

    def initial_state(self, h0, memory):
        _, annotations, src_mask = self._memory(memory)
        state = self.cell.initial_state(h0) + list(self.attention.initial_state(annotations, src_mask))
        return state + ([pt.zeros_like(h0)] if self.input_feeding else [])

    # attend(x_proj_t, *state, *memory): one step on the cell's input projection, in scan's
    # order (the projection a sequence, the state the previous outputs, the memory
    # non-sequences). Returns [*new state, ctx_t, weights_t], the form recurrence.loop takes.
    def attend(self, x_t, *args):
        n_cell, n_att = self.cell.n_states, self.n_attention
        state, (keys, annotations, src_mask) = args[: self.n_states], self._memory(args[self.n_states :])
        cell_state, att_state = state[:n_cell], state[n_cell : n_cell + n_att]
        ctx, weights, *new_att = as_list(self.attention(cell_state[0], keys, annotations, src_mask, *att_state))
        if len(new_att) != n_att:
            raise ValueError(f"{self.attention.name}: returned {len(new_att)} new state(s); its n_states is {n_att}")
        x_t = x_t + pt.dot(ctx, self.Wc)
        if self.input_feeding:
            x_t = x_t + pt.dot(state[-1], self.Wf)
        new = as_list(self.cell.recur(x_t, *cell_state))
        feed = [self.feed(new[0], ctx)] if self.input_feeding else []
        return [*new, *new_att, *feed, ctx, weights]

    # zoneout_attend([x_proj_t, u_t], *state, *memory): attend, the cell's states moving only
    # by u_t (B, H) of the way to their new values (cells.Recurrent.scan).
    def zoneout_attend(self, x_t, *args):
        H, n_cell = self.hiddenSize, self.cell.n_states
        out = self.attend(x_t[:, :-H], *args)
        return zone_out(out[:n_cell], args[:n_cell], x_t[:, -H:]) + out[n_cell:]

    def step(self, emb_t, state, memory):
        out = self.attend(self.cell.project(emb_t), *state, *memory)
        return out[: self.n_states], out[-2], out[-1]

    def scan(self, emb, mask, init, memory, mode=None, weights=None, zoneout=None):
        """Teacher-forced loop: (state sequences, contexts (T, B, C), weights (T, Ts, B)). A
        padded step carries the state through; its context and weights are computed all the
        same. `zoneout` (T, B, H): the cell's update mask, as in cells.Recurrent.scan."""
        n = self.n_states
        unique = list(dict.fromkeys(memory))  # one loop input per distinct entry
        positions = tuple(unique.index(v) for v in memory)
        attend = self.attend if zoneout is None else self.zoneout_attend

        def step(x_t, *args):  # one variable per distinct memory entry, as the loop passes them
            return attend(x_t, *args[:n], *(args[n + i] for i in positions))

        x_proj = self.cell.project(emb)
        if zoneout is not None:
            x_proj = pt.concatenate([x_proj, pt.as_tensor_variable(zoneout).astype(x_proj.dtype)], axis=2)
        T, B = x_proj.shape[0], x_proj.shape[1]
        _, annotations, src_mask = self._memory(memory)
        out = recurrence.loop(self, step, n, x_proj, mask, init, unique, n_extra=2, mode=mode, weights=weights,
                              key=(attend.__func__, positions),
                              extra_shapes=[(T, B, annotations.shape[2]), (T, src_mask.shape[0], B)])
        return out[:n], out[n], out[n + 1]


def check_decoder(dec, embed_size, context_size, batch_size=2, src_len=3):
    """ValueError in one line, naming the decoder's class (and its cell's and attention's),
    unless one step from its initial state, over a batch of 2 with 3 source positions, gives
    as many float32 states of the same shapes, a context (B, C) and attention weights
    (Ts, B) or None: what the model's decoding and training need of a decoder."""
    parts = [type(p).__name__ for p in (getattr(dec, "cell", None), getattr(dec, "attention", None)) if p is not None]
    name = type(dec).__name__ + (f"({', '.join(parts)})" if parts else "")
    B, Ts, E, C, H = batch_size, src_len, embed_size, context_size, dec.hiddenSize
    emb, c, h0, src_mask = pt.matrix("emb"), pt.matrix("c"), pt.matrix("h0"), pt.matrix("src_mask")
    annotations = pt.tensor3("annotations")
    try:
        memory = dec.prepare({"c": c, "annotations": annotations, "src_mask": src_mask})
        memory = [memory[k] for k in dec.memory_names]
        init = list(dec.initial_state(h0, memory))
        new, ctx, weights = dec.step(emb, list(init), memory)
        new = as_list(new)
    except Exception as err:
        raise ValueError(f"{name}: one decoding step failed: {type(err).__name__}: {str(err).splitlines()[0]}") from None
    if len(new) != len(init):
        raise ValueError(f"{name}: a step returned {len(new)} state(s) from an initial state of {len(init)}")
    outputs = [*init, *new, ctx] + ([] if weights is None else [weights])
    for var in outputs:
        if getattr(getattr(var, "type", None), "dtype", None) != "float32":
            raise ValueError(f"{name}: a step returned a {getattr(getattr(var, 'type', None), 'dtype', var)!s} "
                             "tensor; expected float32 (a float64 constant or shared variable upcasts it)")
    rng = np.random.default_rng(0)
    values = [rng.standard_normal(s).astype("float32") for s in [(B, E), (B, C), (B, H), (Ts, B, C)]]
    values.append(np.ones((Ts, B), "float32"))
    try:
        got = pytensor.function([emb, c, h0, annotations, src_mask], outputs, on_unused_input="ignore",
                                mode=modes.compile_mode("FAST_COMPILE"))(*values)
    except Exception as err:
        raise ValueError(f"{name}: one decoding step failed on a batch of {B}: {type(err).__name__}: "
                         f"{str(err).splitlines()[0]}") from None
    n = len(init)
    for k, (before, after) in enumerate(zip(got[:n], got[n : 2 * n])):
        if before.shape != after.shape:
            raise ValueError(f"{name}: state {k} is {before.shape} at the start but {after.shape} after a step")
    if got[2 * n].shape != (B, C):
        raise ValueError(f"{name}: its context is {got[2 * n].shape}; expected {(B, C)} (batch, annotation width)")
    if weights is not None and got[-1].shape != (Ts, B):
        raise ValueError(f"{name}: its attention weights are {got[-1].shape}; expected {(Ts, B)} (source, batch)")


def check_modules(modules):
    """ValueError in one line, naming the slot, unless every cell, attention and decoder of
    the user's own in `modules` (from --cell, --attention or an edit of initModules()) passes
    cells.check_recur or check_decoder. Stock modules are not checked."""
    stock = (cells.GRU, cells.LSTM, Decoder, AttentionDecoder, *ATTENTIONS.values())
    for name, module in modules.items():
        parts = [module, getattr(module, "cell", None), getattr(module, "attention", None)]
        if all(p is None or type(p) in stock for p in parts):
            continue
        try:
            if isinstance(module, cells.Recurrent):
                cells.check_recur(module)
            elif name == "decoder":
                E = modules["tgt_embed"].W.get_value(borrow=True).shape[1]
                check_decoder(module, E, modules["init"].inputSize)
        except ValueError as err:
            raise ValueError(f"modules[{name!r}]: {err}") from None
