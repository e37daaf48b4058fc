"""The model's regularisers, each an identity unless training with a non-zero rate (the
settings of ModelConfig): dropout, locked dropout (one mask per sequence), word dropout,
weight-drop (DropConnect on a cell's U) and zoneout. Every draw comes from the model's one
layers.Dropout generator, which checkpoints save.
"""
import numpy as np

from flags import FLOATX
import pytensor
import pytensor.tensor as pt
from vocab import EOS_ID, UNK_ID


class Regularisers:
    """The graph pieces Model.encode and Model.token_nll put in, given the model's config and
    its Dropout generator."""

    def __init__(self, config, dropout):
        self.config, self.dropout = config, dropout

    def drop(self, x, rate, train, locked=False):
        """x with dropout at `rate` in training; `locked`: one mask per sequence of x (T, B, D)."""
        if not train or rate <= 0:
            return x
        return self.dropout.locked(x, rate) if locked else self.dropout(x, rate)

    def word_dropout(self, ids, train):
        """ids (T, B) with each word (not PAD, BOS or EOS) replaced by <unk> at word_dropout."""
        if not train or self.config.word_dropout <= 0:
            return ids
        drop = pt.and_(pt.lt(self.dropout.uniform(ids.shape), np.float32(self.config.word_dropout)), pt.gt(ids, EOS_ID))
        return pt.switch(drop, UNK_ID, ids).astype(ids.dtype)

    def dropped_U(self, cell, train):
        """{cell.U: U * mask} for weight-drop in training (one mask per batch), else {}."""
        rate = self.config.weight_drop
        if not train or rate <= 0 or not isinstance(getattr(cell, "U", None), pytensor.compile.SharedVariable):
            return {}
        return {cell.U: self.dropout(cell.U, rate)}

    def zoneout(self, mask, cell, train):
        """Zoneout's update mask (T, B, H) for `cell` over steps `mask` (T, B): 1 where a
        state unit takes its new value, 0 where it keeps its previous one, drawn in training
        outside the loop (cells.Recurrent.scan); 1 - zoneout everywhere, its expectation,
        otherwise. None when zoneout is off."""
        rate = self.config.zoneout
        if rate <= 0:
            return None
        shape = (mask.shape[0], mask.shape[1], cell.hiddenSize)
        if not train:
            return pt.alloc(np.float32(1.0 - rate), *shape)
        return pt.ge(self.dropout.uniform(shape), np.float32(rate)).astype(FLOATX)
