"""The feed-forward modules: FF, Embedding, TiedOutput, Dropout. Time is axis 0 everywhere.

Every module owns named shared variables (`ffout.W`, `src_embed.W`, ...) and exposes `params`
and `getUpdates(cost, lr)`, which is how training updates it (`module.frozen = True` or
`module.lr_scale = 0.1` in `initModules()` freeze it or slow it); see module.Module. The
recurrent cells are in cells.py and attention in attention.py; `cells.GRU` and `cells.LSTM`
name the cells too, as the original example's initModules() writes them.
"""
import numpy as np

from flags import FLOATX
import pytensor
import pytensor.tensor as pt
from cells import GRU, LSTM  # noqa: F401  (cells.GRU, cells.LSTM: the original example's names)
from module import Module, glorot, widths_of, affine


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
        self.widths = widths_of(inputSize)
        self.inputSize, self.outputSize = sum(self.widths), outputSize
        self.W = self.add_param("W", glorot(rng, self.inputSize, outputSize))
        self.b = self.add_param("b", np.zeros(outputSize))

    def __call__(self, *inputs):
        return self.activation(affine(inputs, self.widths, self.W, self.b))

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
