"""What every module shares: named float32 parameters, `getUpdates(cost, lr)`, the weight
initialisers, the affine map over several inputs, and the lookup of a module class by name
(`--cell=mycells:MGU`, `--attention=...`)."""
import importlib

import numpy as np

from flags import FLOATX
import optim
import pytensor
import pytensor.tensor as pt


def shared_param(name, value):
    value = np.asarray(value, dtype=FLOATX)
    return pytensor.shared(value, name=name, shape=value.shape)


def uniform(rng, shape, scale):
    return rng.uniform(-scale, scale, size=shape)


def glorot(rng, n_in, n_out):
    return uniform(rng, (n_in, n_out), np.sqrt(6.0 / (n_in + n_out)))


def orthogonal(rng, n):
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
        param = shared_param(f"{self.name}.{short_name}", value)
        self.params.append(param)
        return param

    def getUpdates(self, cost, lr, grads=None, optimizer=optim.sgd):
        """Update pairs `(shared, new value)` for this module's params: by default plain SGD,
        `(p, p - lr * dcost/dp)`, as in the original example. Training passes the clipped `grads` (one
        per param) and the configured optimizer (optim.py). A frozen module returns []."""
        if self.frozen or not self.params:
            return []
        grads = pytensor.grad(cost, self.params) if grads is None else grads
        return optimizer(self.params, grads, lr * np.float32(self.lr_scale), owner=self.name)


def widths_of(inputSize):
    """`inputSize` is an int, or a list of widths of inputs used as their concatenation."""
    widths = [int(inputSize)] if np.isscalar(inputSize) else [int(w) for w in inputSize]
    if not widths or min(widths) < 1:
        raise ValueError(f"input sizes must be positive, got {inputSize!r}")
    return widths


def affine(inputs, widths, W, b):
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
