"""The NDS2SAEFactory example's own toy: sin and cos in (2 dims), sin + cos out (1 dim), lengths 20-40.

    import sys; sys.path.insert(0, "data/sincos")
    from sincos import make_generator
    train_gen = make_generator(n_samples=2000, seed=0)
    in_seq, out_seq, last_batch = train_gen(100)

Each sequence samples t = phase + step * k for k < length, with a random phase, step
and length; it is generated, so there is nothing to prepare.
"""
import numpy as np


def make_sequences(n_samples, seed, min_len=20, max_len=40):
    """n_samples (in, out) pairs: in (T, 2) = [sin t, cos t], out (T, 1) = sin t + cos t."""
    rng = np.random.default_rng(seed)
    in_seq, out_seq = [], []
    for _ in range(n_samples):
        length = rng.integers(min_len, max_len + 1)
        t = rng.uniform(0, 2 * np.pi) + rng.uniform(0.1, 0.3) * np.arange(length)
        x = np.stack([np.sin(t), np.cos(t)], axis=1).astype(np.float32)  # (T, 2)
        in_seq.append(x)
        out_seq.append(x.sum(axis=1, keepdims=True))  # (T, 1)
    return in_seq, out_seq


def make_generator(n_samples, seed, min_len=20, max_len=40):
    """A generator with NDS2SAEFactory's signature, `gen(batch_size) -> (in_seq, out_seq,
    last_batch)`, cycling through a fixed set of n_samples pairs; last_batch is True on the
    batch that ends a pass."""
    in_seq, out_seq = make_sequences(n_samples, seed, min_len, max_len)
    position = 0

    def generate_samples(batch_size):
        nonlocal position
        end = min(position + batch_size, n_samples)
        batch = in_seq[position:end], out_seq[position:end], end == n_samples
        position = 0 if end == n_samples else end
        return batch

    return generate_samples
