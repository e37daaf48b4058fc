"""Our Model against an independent PyTorch implementation of the same equations, from the
same weights: the loss and every gradient agree. Skipped where torch is not installed (it
is a benchmark-only dependency: pip install torch==2.13.0)."""
import os
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import pytensor  # noqa: E402
import pytensor.tensor as pt  # noqa: E402
from dataset import make_batch  # noqa: E402
from vocab import BOS_ID  # noqa: E402
from model import Model, ModelConfig  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))
from torch_reference import TorchGRUModel, TorchSeq2Seq  # noqa: E402


def test_loss_and_gradients_match_pytorch():
    V = 30
    model = Model(ModelConfig(src_vocab_size=V, tgt_vocab_size=V, embed_size=6, hidden_size=9))
    rng = np.random.default_rng(0)
    pairs = [(rng.integers(4, V, rng.integers(1, 8)), rng.integers(4, V, rng.integers(1, 8))) for _ in range(5)]
    src, tgt = make_batch(pairs)
    s, t = pt.imatrix(), pt.imatrix()
    loss, _ = model.loss(s, t)
    f = pytensor.function([s, t], [loss] + pytensor.grad(loss, model.params), mode=model.mode)
    ours = f(src, tgt)

    reference = TorchSeq2Seq.from_model(model)
    torch_loss = reference.loss(torch.tensor(src).long(), torch.tensor(tgt).long())
    torch_loss.backward()
    assert float(ours[0]) == pytest.approx(torch_loss.item(), abs=1e-5)
    for p, grad in zip(model.params, ours[1:]):
        np.testing.assert_allclose(grad, reference[p.name].grad.numpy(), atol=1e-5, err_msg=p.name)


def test_reset_after_model_matches_fused_nn_gru():
    """The benchmark's nn.GRU model computes the same function as Model(reset_after=True)."""
    V, E, H, T, B = 30, 6, 9, 5, 4
    model = Model(ModelConfig(src_vocab_size=V, tgt_vocab_size=V, embed_size=E, hidden_size=H, reset_after=True))
    rng = np.random.default_rng(1)
    src = rng.integers(4, V, size=(T, B)).astype("int32")  # no padding: nn.GRU has no mask
    tgt = rng.integers(4, V, size=(T + 1, B)).astype("int32")
    tgt[0] = BOS_ID
    s, t = pt.imatrix(), pt.imatrix()
    loss, _ = model.loss(s, t)
    names = ["encoder.U", "decoder.W", "ffout.W"]
    params = [p for p in model.params if p.name in names]
    ours = pytensor.function([s, t], [loss] + pytensor.grad(loss, params), mode=model.mode)(src, tgt)

    reference = TorchGRUModel.from_model(model)
    torch_loss = reference.loss(torch.tensor(src).long(), torch.tensor(tgt).long())
    torch_loss.backward()
    assert float(ours[0]) == pytest.approx(torch_loss.item(), abs=1e-5)
    perm = lambda g: torch.cat([g[..., H : 2 * H], g[..., :H], g[..., 2 * H :]], -1)  # [r,z,n] -> [z,r,h]
    torch_grads = {
        "encoder.U": perm(reference.encoder.weight_hh_l0.grad.T),
        "decoder.W": perm(reference.decoder.weight_ih_l0.grad.T),
        "ffout.W": reference.out.weight.grad.T,
    }
    for p, grad in zip(params, ours[1:]):
        np.testing.assert_allclose(grad, torch_grads[p.name].numpy(), atol=1e-5, err_msg=p.name)


@pytest.mark.parametrize("attention, feeding", [("bahdanau", False), ("coverage", True)])
def test_attention_model_matches_the_pytorch_loop_of_cells(attention, feeding):
    """The benchmark's attention model (bidirectional nn.GRU, a loop of nn.GRUCell with
    additive attention, and with coverage and input feeding) computes the same loss and
    gradients as Model(reset_after=True, bidirectional=True, attention=..., input_feeding=...):
    the benchmark rows do the same work, and coverage and input feeding are the same
    equations written twice."""
    from torch_reference import TorchAttentionModel

    V, E, H, T, B = 30, 6, 9, 5, 4
    model = Model(ModelConfig(src_vocab_size=V, tgt_vocab_size=V, embed_size=E, hidden_size=H, reset_after=True,
                              bidirectional=True, attention=attention, attention_size=7, input_feeding=feeding))
    rng = np.random.default_rng(2)
    src = rng.integers(4, V, size=(T, B)).astype("int32")
    tgt = rng.integers(4, V, size=(T + 1, B)).astype("int32")
    tgt[0] = BOS_ID
    s, t = pt.imatrix(), pt.imatrix()
    loss, _ = model.loss(s, t)
    params = {p.name: p for p in model.params}
    names = ["encoder_bwd.U", "decoder.Wc", "decoder.attention.v", "decoder.attention.U", "readout.W"]
    names += ["decoder.attention.w_cov", "decoder.Wf", "decoder.feed.W"] if feeding else []
    ours = pytensor.function([s, t], [loss] + pytensor.grad(loss, [params[n] for n in names]), mode=model.mode)(src, tgt)

    reference = TorchAttentionModel.from_model(model)
    torch_loss = reference.loss(torch.tensor(src).long(), torch.tensor(tgt).long())
    torch_loss.backward()
    assert float(ours[0]) == pytest.approx(torch_loss.item(), abs=1e-5)
    perm = lambda g: torch.cat([g[..., H : 2 * H], g[..., :H], g[..., 2 * H :]], -1)  # noqa: E731  [r,z,n] -> [z,r,h]
    torch_grads = {
        "encoder_bwd.U": perm(reference.encoder.weight_hh_l0_reverse.grad.T),
        "decoder.Wc": perm(reference.decoder.weight_ih.grad.T)[E : E + 2 * H],
        "decoder.attention.v": reference.att_v.weight.grad[0],
        "decoder.attention.U": reference.att_keys.weight.grad.T,
        "readout.W": reference.readout.weight.grad.T,
    }
    if feeding:
        torch_grads.update({"decoder.attention.w_cov": reference.att_cov.grad,
                            "decoder.Wf": perm(reference.decoder.weight_ih.grad.T)[E + 2 * H :],
                            "decoder.feed.W": reference.feed.weight.grad.T})
    for name, grad in zip(names, ours[1:]):
        np.testing.assert_allclose(grad, torch_grads[name].numpy(), atol=2e-5, err_msg=name)
