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
from model import Model, ModelConfig  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))
from torch_reference import TorchSeq2Seq  # noqa: E402


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
