"""A cell written only as `recur`, in a file of its own: the README's "Adding your own cell"
example, and the benchmark's user-cell row. Use it with `--cell=benchmarks.mgu:MGU`, or
import this file and use `--cell=mgu` / `Cell = MGU` in `initModules()`."""
import cells
import pytensor.tensor as pt


@cells.register_cell("mgu")
class MGU(cells.Recurrent):
    """Minimal gated unit (Zhou et al. 2016, arXiv:1603.09420), one gate:

        f  = sigmoid(x W_f + h U_f + b_f)
        h~ = tanh(x W_h + (f * h) U_h + b_h)
        h' = (1 - f) * h + f * h~

    W (I, 2H), U (H, 2H), b (2H,), gate blocks in the order [f, h].
    """

    n_gates = 2

    # recur(x_proj_t, h_prev): x_proj_t (B, 2H) is this step's input projection.
    def recur(self, x_t, h_prev):
        H = self.hiddenSize
        f = pt.sigmoid(x_t[:, :H] + pt.dot(h_prev, self.U[:, :H]))
        h_tilde = pt.tanh(x_t[:, H:] + pt.dot(f * h_prev, self.U[:, H:]))
        return (1.0 - f) * h_prev + f * h_tilde
