"""A PyTorch copy of model.Model (GRU encoder, Cho GRU decoder), for checking and benchmarking.

`TorchSeq2Seq.from_model(model)` copies a PyTensor Model's parameters, so both compute the
same function; `tests/test_torch_reference.py` checks losses and gradients agree. PyTorch is
a benchmark-only dependency: pip install torch==2.13.0 (CPU).
"""
import torch

PAD_ID = 0


def cho_gru_step(x_proj, h, U, H):
    """One Cho GRU step (reset before the recurrent matmul), as cells.GRU documents."""
    zr = torch.sigmoid(x_proj[:, : 2 * H] + h @ U[:, : 2 * H])
    z, r = zr[:, :H], zr[:, H:]
    h_tilde = torch.tanh(x_proj[:, 2 * H :] + (r * h) @ U[:, 2 * H :])
    return z * h + (1 - z) * h_tilde


def mgu_step(x_proj, h, U, H):
    """One minimal gated unit step, as benchmarks/mgu.py documents."""
    f = torch.sigmoid(x_proj[:, :H] + h @ U[:, :H])
    h_tilde = torch.tanh(x_proj[:, H:] + (f * h) @ U[:, H:])
    return (1 - f) * h + f * h_tilde


class TorchSeq2Seq(torch.nn.Module):
    def __init__(self, params, hidden_size, embed_size, step=cho_gru_step):
        super().__init__()
        self.H, self.E, self.step = hidden_size, embed_size, step
        self.p = torch.nn.ParameterDict({k.replace(".", "__"): torch.nn.Parameter(torch.tensor(v)) for k, v in params.items()})

    @classmethod
    def from_model(cls, model):
        params = {p.name: p.get_value() for p in model.params}
        return cls(params, model.config.hidden_size, model.config.embed_size)

    def __getitem__(self, name):
        return self.p[name.replace(".", "__")]

    def loss(self, src, tgt):
        """Mean NLL per real target token; src (Ts, B), tgt (Tt, B) int64 tensors."""
        H, E = self.H, self.E
        src_mask = (src != PAD_ID).float()
        x_proj = self["src_embed.W"][src] @ self["encoder.W"] + self["encoder.b"]  # (Ts, B, 3H)
        h = torch.zeros(src.shape[1], H)
        for t in range(src.shape[0]):
            m = src_mask[t][:, None]
            h = m * self.step(x_proj[t], h, self["encoder.U"], H) + (1 - m) * h
        c = h  # (B, H)
        tgt_in, tgt_out = tgt[:-1], tgt[1:]
        tgt_mask = (tgt_out != PAD_ID).float()
        emb = self["tgt_embed.W"][tgt_in]  # (T, B, E)
        W = self["decoder.W"]
        x_proj = emb @ W[:E] + (c @ W[E:])[None] + self["decoder.b"]  # (T, B, 3H)
        h = torch.tanh(c @ self["init.W"] + self["init.b"])
        states = []
        for t in range(tgt_in.shape[0]):
            m = tgt_mask[t][:, None]
            h = m * self.step(x_proj[t], h, self["decoder.U"], H) + (1 - m) * h
            states.append(h)
        hs = torch.stack(states)  # (T, B, H)
        Wr = self["readout.W"]
        readout = torch.tanh(hs @ Wr[:H] + emb @ Wr[H : H + E] + (c @ Wr[H + E :])[None] + self["readout.b"])
        logits = readout @ self["ffout.W"] + self["ffout.b"]  # (T, B, V)
        nll = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), tgt_out.reshape(-1), reduction="none")
        return (nll * tgt_mask.reshape(-1)).sum() / tgt_mask.sum()

    @torch.no_grad()
    def greedy(self, src, max_len):
        """Greedy decoding for max_len steps (no early stop); returns the last ids (B,)."""
        H, E = self.H, self.E
        x_proj = self["src_embed.W"][src] @ self["encoder.W"] + self["encoder.b"]
        h = torch.zeros(src.shape[1], H)
        for t in range(src.shape[0]):
            h = self.step(x_proj[t], h, self["encoder.U"], H)
        c = h
        W, Wr = self["decoder.W"], self["readout.W"]
        c_proj, c_out = c @ W[E:] + self["decoder.b"], c @ Wr[H + E :] + self["readout.b"]
        h = torch.tanh(c @ self["init.W"] + self["init.b"])
        y = torch.full((src.shape[1],), 1, dtype=torch.int64)
        for _ in range(max_len):
            emb = self["tgt_embed.W"][y]
            h = self.step(emb @ W[:E] + c_proj, h, self["decoder.U"], H)
            readout = torch.tanh(h @ Wr[:H] + emb @ Wr[H : H + E] + c_out)
            y = (readout @ self["ffout.W"] + self["ffout.b"]).argmax(1)
        return y


class TorchGRUModel(torch.nn.Module):
    """The same architecture written with fused nn.GRU layers, as a PyTorch user would.

    nn.GRU applies the reset gate after the recurrent matmul (model.ModelConfig.reset_after).
    The decoder reads [embedding; c] as its input at every step. `from_model` copies a
    reset_after Model's weights (tests/test_torch_reference.py checks the two agree)."""

    RNN = torch.nn.GRU

    def __init__(self, E, H, V):
        super().__init__()
        nn = torch.nn
        self.src_embed, self.tgt_embed = nn.Embedding(V, E), nn.Embedding(V, E)
        self.encoder = self.RNN(E, H)
        self.init = nn.Linear(H, H)
        self.decoder = self.RNN(E + H, H)
        self.readout, self.readout_c = nn.Linear(H + E, E), nn.Linear(H, E, bias=False)
        self.out = nn.Linear(E, V)

    @classmethod
    def from_model(cls, model):
        """Copy a PyTensor Model (reset_after=True, no attention, one encoder layer)."""
        cfg = model.config
        E, H, V = cfg.embed_size, cfg.hidden_size, cfg.tgt_vocab_size
        new = cls(E, H, V)
        p = {q.name: torch.tensor(q.get_value()) for q in model.params}
        gates = lambda w: torch.cat([w[..., H : 2 * H], w[..., :H], w[..., 2 * H :]], -1)  # noqa: E731  [z,r,h] -> [r,z,n]
        with torch.no_grad():
            new.src_embed.weight.copy_(p["src_embed.W"])
            new.tgt_embed.weight.copy_(p["tgt_embed.W"])
            for gru, name in ((new.encoder, "encoder"), (new.decoder, "decoder")):
                gru.weight_ih_l0.copy_(gates(p[f"{name}.W"]).T)
                gru.weight_hh_l0.copy_(gates(p[f"{name}.U"]).T)
                gru.bias_ih_l0.copy_(gates(p[f"{name}.b"]))
                gru.bias_hh_l0.zero_()  # ours has one bias, outside the reset gate
            new.init.weight.copy_(p["init.W"].T)
            new.init.bias.copy_(p["init.b"])
            Wr = p["readout.W"]
            new.readout.weight.copy_(Wr[: H + E].T)
            new.readout.bias.copy_(p["readout.b"])
            new.readout_c.weight.copy_(Wr[H + E :].T)
            new.out.weight.copy_(p["ffout.W"].T)
            new.out.bias.copy_(p["ffout.b"])
        return new

    def start(self, src):
        _, c = self.encoder(self.src_embed(src))  # (1, B, H)
        return c[0], torch.tanh(self.init(c[0]))[None]

    def logits(self, hs, emb, c):
        return self.out(torch.tanh(self.readout(torch.cat([hs, emb], -1)) + self.readout_c(c)))

    def loss(self, src, tgt):
        """Mean NLL per target token; no padding (nn.GRU would need packed sequences)."""
        c, h0 = self.start(src)
        emb = self.tgt_embed(tgt[:-1])  # (T, B, E)
        x = torch.cat([emb, c.expand(emb.shape[0], -1, -1)], 2)  # (T, B, E + H)
        hs, _ = self.decoder(x, h0)
        logits = self.logits(hs, emb, c[None])
        return torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), tgt[1:].reshape(-1))

    @torch.no_grad()
    def greedy(self, src, max_len):
        """Greedy decoding for max_len steps (no early stop); returns the last ids (B,)."""
        c, state = self.start(src)
        y = torch.ones(src.shape[1], dtype=torch.int64)
        for _ in range(max_len):
            emb = self.tgt_embed(y)
            out, state = self.decoder(torch.cat([emb, c], 1)[None], state)
            y = self.logits(out[0], emb, c).argmax(1)
        return y


class TorchLSTMModel(TorchGRUModel):
    """The same architecture on fused nn.LSTM layers; the decoder starts from
    (tanh(c V + b), 0), as model.Model's LSTM does (Model(cell="lstm"))."""

    RNN = torch.nn.LSTM

    def start(self, src):
        _, (h, _) = self.encoder(self.src_embed(src))  # (1, B, H)
        h0 = torch.tanh(self.init(h[0]))[None]
        return h[0], (h0, torch.zeros_like(h0))


class MGUCell(torch.nn.Module):
    """The minimal gated unit as a PyTorch cell (benchmarks/mgu.py's equations)."""

    def __init__(self, n_in, H):
        super().__init__()
        self.H = H
        self.W = torch.nn.Parameter(torch.empty(n_in, 2 * H).uniform_(-0.05, 0.05))
        self.U = torch.nn.Parameter(torch.empty(H, 2 * H).uniform_(-0.05, 0.05))
        self.b = torch.nn.Parameter(torch.zeros(2 * H))

    def forward(self, x, h):
        return mgu_step(x @ self.W + self.b, h, self.U, self.H)


class MGULayer(MGUCell):
    """The MGU over a whole (T, B, n_in) sequence: its input projection in one matmul, then a
    Python loop; returns the states (T, B, H), reversed in time with `backwards`."""

    def forward(self, x, backwards=False):
        x_proj = x @ self.W + self.b  # (T, B, 2H)
        h = torch.zeros(x.shape[1], self.H)
        states = []
        for t in (range(x.shape[0] - 1, -1, -1) if backwards else range(x.shape[0])):
            h = mgu_step(x_proj[t], h, self.U, self.H)
            states.append(h)
        return torch.stack(states[::-1] if backwards else states)


class TorchAttentionModel(torch.nn.Module):
    """model.Model(bidirectional=True, attention="bahdanau") as a PyTorch user writes it
    (JoeyNMT, OpenNMT-py and fairseq's RNN decoders): a fused bidirectional encoder (nn.GRU,
    nn.LSTM, or a loop of the MGU), then a Python loop of one decoder cell (nn.GRUCell,
    nn.LSTMCell, MGUCell) reading [embedding; context], with additive attention whose keys
    are computed once per batch, and the deep output [h; embedding; context].

    nn.GRUCell applies the reset gate after its recurrent matmul: Model(reset_after=True)
    computes the same function (`from_model`, tests/test_torch_reference.py).

    `coverage` adds the running sum of past weights to the scores through a vector w_cov
    (attention=coverage); `input_feeding` feeds f_{t-1} = tanh(feed([h_{t-1}; ctx_{t-1}]))
    into the cell's input (input_feeding=true). The state is a tuple: the cell's (h, or h
    and c), then the coverage (B, Ts), then f."""

    def __init__(self, E, H, V, A=None, cell="gru", coverage=False, input_feeding=False):
        super().__init__()
        nn, C, A = torch.nn, 2 * H, A or H
        self.H, self.cell, self.coverage, self.input_feeding = H, cell, coverage, input_feeding
        self.n_cell = 2 if cell == "lstm" else 1
        n_in = E + C + (H if input_feeding else 0)
        self.src_embed, self.tgt_embed = nn.Embedding(V, E), nn.Embedding(V, E)
        if cell == "mgu":
            self.encoder, self.encoder_bwd = MGULayer(E, H), MGULayer(E, H)
            self.decoder = MGUCell(n_in, H)
        else:
            self.encoder = {"gru": nn.GRU, "lstm": nn.LSTM}[cell](E, H, bidirectional=True)
            self.decoder = {"gru": nn.GRUCell, "lstm": nn.LSTMCell}[cell](n_in, H)
        self.init = nn.Linear(C, H)
        self.att_query, self.att_keys, self.att_v = nn.Linear(H, A, bias=False), nn.Linear(C, A), nn.Linear(A, 1, bias=False)
        if coverage:
            self.att_cov = nn.Parameter(torch.empty(A).uniform_(-0.05, 0.05))
        if input_feeding:
            self.feed = nn.Linear(H + C, H)
        self.readout = nn.Linear(H + E + C, E)
        self.out = nn.Linear(E, V)

    def encode(self, src):
        """(annotations (Ts, B, 2H), keys (Ts, B, A), source mask (Ts, B), initial state)."""
        x = self.src_embed(src)
        if self.cell == "mgu":
            fwd, bwd = self.encoder(x), self.encoder_bwd(x, backwards=True)
            annotations = torch.cat([fwd, bwd], 2)
        else:
            annotations, _ = self.encoder(x)  # no padding in the benchmark: no packing needed
            fwd, bwd = annotations[..., : self.H], annotations[..., self.H :]
        h = torch.tanh(self.init(torch.cat([fwd[-1], bwd[0]], 1)))
        state = [h, torch.zeros_like(h)] if self.cell == "lstm" else [h]
        if self.coverage:
            state.append(torch.zeros(src.shape[1], src.shape[0]))  # (B, Ts): nothing attended yet
        if self.input_feeding:
            state.append(torch.zeros_like(h))
        return annotations, self.att_keys(annotations), src != PAD_ID, tuple(state)

    def attend(self, h, keys, annotations, src_mask, coverage=None):
        features = keys + self.att_query(h)[None]  # (Ts, B, A)
        if coverage is not None:
            features = features + coverage.T[..., None] * self.att_cov
        scores = self.att_v(torch.tanh(features))[..., 0]  # (Ts, B)
        weights = torch.softmax(scores.masked_fill(~src_mask, float("-inf")), dim=0)
        return (weights[..., None] * annotations).sum(0), weights  # (B, C), (Ts, B)

    def step(self, emb, state, memory):
        """One decoder step: (new state tuple, its h, the context it read)."""
        cell_state, rest = state[: self.n_cell], list(state[self.n_cell :])
        coverage = rest.pop(0) if self.coverage else None
        ctx, weights = self.attend(cell_state[0], *memory, coverage)
        x = torch.cat([emb, ctx, *rest], 1)  # rest: f_{t-1} with input feeding
        new = self.decoder(x, cell_state if self.cell == "lstm" else cell_state[0])
        new = tuple(new) if self.cell == "lstm" else (new,)
        if self.coverage:
            new += (coverage + weights.T,)
        if self.input_feeding:
            new += (torch.tanh(self.feed(torch.cat([new[0], ctx], 1))),)
        return new, new[0], ctx

    def logits(self, h, emb, ctx):
        return self.out(torch.tanh(self.readout(torch.cat([h, emb, ctx], -1))))

    def loss(self, src, tgt):
        """Mean NLL per target token (no padding in the benchmark)."""
        annotations, keys, src_mask, state = self.encode(src)
        emb = self.tgt_embed(tgt[:-1])  # (T, B, E)
        hs, ctxs = [], []
        for t in range(emb.shape[0]):
            state, h, ctx = self.step(emb[t], state, (keys, annotations, src_mask))
            hs.append(h)
            ctxs.append(ctx)
        logits = self.logits(torch.stack(hs), emb, torch.stack(ctxs))
        return torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), tgt[1:].reshape(-1))

    @torch.no_grad()
    def greedy(self, src, max_len):
        """Greedy decoding for max_len steps (no early stop); returns the last ids (B,)."""
        annotations, keys, src_mask, state = self.encode(src)
        y = torch.ones(src.shape[1], dtype=torch.int64)
        for _ in range(max_len):
            emb = self.tgt_embed(y)
            state, h, ctx = self.step(emb, state, (keys, annotations, src_mask))
            y = self.logits(h, emb, ctx).argmax(1)
        return y

    # The interface decode.beam_search asks of a model, so that the benchmark runs the same
    # search, step by step, over this model's steps.
    def memory_names(self):
        return ("annotations", "src_mask", "keys")

    def compile_step(self):
        """(f_init, f_next) on numpy arrays, as decode.compile_step documents."""
        numpy = lambda ts: [t.numpy() for t in ts]  # noqa: E731

        @torch.no_grad()
        def f_init(src):
            annotations, keys, src_mask, state = self.encode(torch.from_numpy(src).long())
            return numpy([annotations, src_mask, keys, *state])

        @torch.no_grad()
        def f_next(y_prev, *args):
            states, (annotations, src_mask, keys) = args[:-3], args[-3:]
            state = tuple(map(torch.from_numpy, states))
            emb = self.tgt_embed(torch.from_numpy(y_prev).long())
            memory = (torch.from_numpy(keys), torch.from_numpy(annotations), torch.from_numpy(src_mask))
            state, h, ctx = self.step(emb, state, memory)
            logp = torch.log_softmax(self.logits(h, emb, ctx), dim=1)
            return numpy([logp, *state])

        return f_init, f_next

    @classmethod
    def from_model(cls, model):
        """Copy a PyTensor Model (reset_after GRU, bidirectional, one layer, Bahdanau or
        coverage attention, with or without input feeding)."""
        cfg = model.config
        E, H, V = cfg.embed_size, cfg.hidden_size, cfg.tgt_vocab_size
        new = cls(E, H, V, cfg.attention_size or H, coverage=cfg.attention == "coverage", input_feeding=cfg.input_feeding)
        p = {q.name: torch.tensor(q.get_value()) for q in model.params}
        gates = lambda w: torch.cat([w[..., H : 2 * H], w[..., :H], w[..., 2 * H :]], -1)  # noqa: E731  [z,r,h] -> [r,z,n]
        with torch.no_grad():
            new.src_embed.weight.copy_(p["src_embed.W"])
            new.tgt_embed.weight.copy_(p["tgt_embed.W"])
            for suffix, name in (("", "encoder"), ("_reverse", "encoder_bwd")):
                getattr(new.encoder, f"weight_ih_l0{suffix}").copy_(gates(p[f"{name}.W"]).T)
                getattr(new.encoder, f"weight_hh_l0{suffix}").copy_(gates(p[f"{name}.U"]).T)
                getattr(new.encoder, f"bias_ih_l0{suffix}").copy_(gates(p[f"{name}.b"]))
                getattr(new.encoder, f"bias_hh_l0{suffix}").zero_()
            feeding = [p["decoder.Wf"]] if cfg.input_feeding else []
            new.decoder.weight_ih.copy_(gates(torch.cat([p["decoder.W"], p["decoder.Wc"], *feeding], 0)).T)
            if cfg.input_feeding:
                new.feed.weight.copy_(p["decoder.feed.W"].T)
                new.feed.bias.copy_(p["decoder.feed.b"])
            if cfg.attention == "coverage":
                new.att_cov.copy_(p["decoder.attention.w_cov"])
            new.decoder.weight_hh.copy_(gates(p["decoder.U"]).T)
            new.decoder.bias_ih.copy_(gates(p["decoder.b"]))
            new.decoder.bias_hh.zero_()
            new.init.weight.copy_(p["init.W"].T)
            new.init.bias.copy_(p["init.b"])
            new.att_query.weight.copy_(p["decoder.attention.W"].T)
            new.att_keys.weight.copy_(p["decoder.attention.U"].T)
            new.att_keys.bias.copy_(p["decoder.attention.b"])
            new.att_v.weight.copy_(p["decoder.attention.v"][None])
            new.readout.weight.copy_(p["readout.W"].T)
            new.readout.bias.copy_(p["readout.b"])
            new.out.weight.copy_(p["ffout.W"].T)
            new.out.bias.copy_(p["ffout.b"])
        return new
