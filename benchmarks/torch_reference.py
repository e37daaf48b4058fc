"""A PyTorch copy of model.Model (GRU encoder, Cho GRU decoder), for checking and benchmarking.

`TorchSeq2Seq.from_model(model)` copies a PyTensor Model's parameters, so both compute the
same function; `tests/test_torch_reference.py` checks losses and gradients agree. PyTorch is
a benchmark-only dependency: pip install torch==2.13.0 (CPU).
"""
import torch

PAD_ID = 0


def cho_gru_step(x_proj, h, U, H):
    """One Cho GRU step (reset before the recurrent matmul), as layers.GRU documents."""
    zr = torch.sigmoid(x_proj[:, : 2 * H] + h @ U[:, : 2 * H])
    z, r = zr[:, :H], zr[:, H:]
    h_tilde = torch.tanh(x_proj[:, 2 * H :] + (r * h) @ U[:, 2 * H :])
    return z * h + (1 - z) * h_tilde


class TorchSeq2Seq(torch.nn.Module):
    def __init__(self, params, hidden_size, embed_size):
        super().__init__()
        self.H, self.E = hidden_size, embed_size
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
            h = m * cho_gru_step(x_proj[t], h, self["encoder.U"], H) + (1 - m) * h
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
            h = m * cho_gru_step(x_proj[t], h, self["decoder.U"], H) + (1 - m) * h
            states.append(h)
        hs = torch.stack(states)  # (T, B, H)
        Wr = self["readout.W"]
        readout = torch.tanh(hs @ Wr[:H] + emb @ Wr[H : H + E] + (c @ Wr[H + E :])[None] + self["readout.b"])
        logits = readout @ self["ffout.W"] + self["ffout.b"]  # (T, B, V)
        nll = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), tgt_out.reshape(-1), reduction="none")
        return (nll * tgt_mask.reshape(-1)).sum() / tgt_mask.sum()
