"""Cells that break what every slot needs from a cell (cells.check_cell): the bad-input
campaign (bad_inputs.py) and tests/test_cells.py check that each is refused in one line."""
import numpy as np

import cells
import pytensor.tensor as pt


class Wide(cells.Recurrent):
    """recur returns a (B, 2H) state."""

    def recur(self, x_t, h):
        return pt.concatenate([h, h], axis=1)


class Float64(cells.Recurrent):
    """recur returns a float64 state (a float64 constant upcasts it)."""

    def recur(self, x_t, h):
        return pt.tanh(x_t + pt.dot(h, self.U)) * np.float64(0.5)


class TwoStates(cells.Recurrent):
    """recur returns two states for n_states 1."""

    def recur(self, x_t, h):
        return [h, h]
