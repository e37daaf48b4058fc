"""Beam search over a Model's compiled single step, batched over sentences.

Each sentence keeps up to `beam_size` live hypotheses. At every step all live rows of all
sentences go through one call of the compiled step; each sentence then keeps its best
`beam_size - n_finished` extensions, and a hypothesis that emits EOS is finished (so the
beam narrows, as in dl4mt-tutorial and Nematus). A sentence is done when all its hypotheses
have finished; the search stops when every sentence is done, or at max_len, where live
hypotheses are finished as they are. The answer per sentence is the finished hypothesis with
the best score / length**length_norm (length counts EOS): 0 ranks by total log-probability,
1 by log-probability per token. With beam_size 1 this is greedy decoding.
"""
import numpy as np

from vocab import BOS_ID, EOS_ID, PAD_ID


def beam_search(model, src, beam_size=5, max_len=60, length_norm=1.0):
    """src (Ts, B) int32 -> (outputs, scores): for each sentence, the best hypothesis as a
    list of ids (EOS excluded) and its total log-probability."""
    if beam_size < 1:
        raise ValueError(f"beam_size must be at least 1, got {beam_size}")
    f_init, f_next = model.compile_step()
    mem_keys = model.memory_keys()
    n_mem = len(mem_keys)
    init = f_init(src)
    memory, states = init[:n_mem], init[n_mem:]
    B = src.shape[1]
    # One row per sentence to start with; `rows[i]` lists sentence i's live hypotheses as
    # (row index into the step's batch, tokens, total log-probability).
    rows = [[(i, [], 0.0)] for i in range(B)]
    finished = [[] for _ in range(B)]
    sentence_of_row = np.arange(B)
    y_prev = np.full(B, BOS_ID, dtype=np.int32)
    for t in range(max_len):
        if not any(rows):
            break
        # c is (B, C); the time-major entries (annotations, keys, src_mask) have B on axis 1.
        mem = [m[sentence_of_row] if key == "c" else m[:, sentence_of_row] for key, m in zip(mem_keys, memory)]
        out = f_next(y_prev, *states, *mem)
        logp, new_states = out[0], out[1:]
        logp[:, [PAD_ID, BOS_ID]] = -np.inf  # never targets in training; never emitted
        next_rows, next_sentence, next_y, keep = [], [], [], []
        for i in range(B):
            live = rows[i]
            if not live:
                next_rows.append([])
                continue
            width = beam_size - len(finished[i])
            V = logp.shape[1]
            cand = np.stack([score + logp[r] for r, _, score in live])  # (n_live, V)
            flat = cand.ravel()
            best = np.argsort(-flat, kind="stable")[:width]
            extended = []
            for index in best:
                k, token, score = index // V, int(index % V), float(flat[index])
                tokens = live[k][1] + [token]
                if token == EOS_ID:
                    finished[i].append((tokens, score))
                else:
                    extended.append((len(keep), tokens, score))
                    keep.append(live[k][0])
                    next_sentence.append(i)
                    next_y.append(token)
            next_rows.append(extended)
        rows = next_rows
        if not keep:
            break
        keep = np.array(keep)
        states = [s[keep] for s in new_states]
        sentence_of_row = np.array(next_sentence)
        y_prev = np.array(next_y, dtype=np.int32)
    for i in range(B):  # max_len reached: live hypotheses finish as they are
        finished[i] += [(tokens, score) for _, tokens, score in rows[i]]
    outputs, scores = [], []
    for hyps in finished:
        tokens, score = max(hyps, key=lambda h: h[1] / len(h[0]) ** length_norm)
        outputs.append([w for w in tokens if w != EOS_ID])
        scores.append(score)
    return outputs, np.array(scores)
