"""Decoding: greedy, sampled (temperature, top-k, nucleus) and beam search, the compiled
single step, and a guard against loops.

`generate` is the one entry point sample.py, evaluate.py, train.py and the benchmarks use:
beam_size > 1 runs beam search; otherwise temperature 0 is greedy and > 0 samples. Plain
greedy and temperature sampling run in the model's compiled scan (Model.decode); with the
guard, top-k, top-p or a finite <unk> penalty they run here, one compiled step per token.

One rule for the candidates in every decoder (`candidate_scores`): PAD and BOS are never
emitted, and <unk>'s log-probability is lowered by `unk_penalty` (infinite by default: <unk>
is never emitted, so a beam of 1 is greedy decoding). Reported log-probabilities are the
model's own, without the penalty.

The guard, no_repeat_ngram_size = n as in fairseq: an output never contains the same n-gram
twice (n = 1: no token twice). Sampling draws from softmax(log p / temperature) over the
top_k most probable tokens (0 = all) and the nucleus (Holtzman et al. 2020): the fewest most
probable tokens whose probability sums to at least top_p (1 = all).

Beam search: each sentence keeps up to `beam_size` live hypotheses. At every step all live
rows of all sentences go through one call of the compiled step, and every sentence's best
extensions are chosen at once; each sentence keeps its best `beam_size - n_finished`, and a
hypothesis that emits EOS is finished (so the beam narrows, as in dl4mt-tutorial and
Nematus). A sentence is done when all its hypotheses have finished; the search stops when
every sentence is done, or at max_len, where live hypotheses are finished as they are.
Hypotheses rank by score / length**length_norm (length counts EOS): 0 ranks by total
log-probability, 1 by log-probability per token. With beam_size 1 this is greedy decoding."""
import math

import numpy as np

from flags import FLOATX
import compiled
import pytensor
import pytensor.tensor as pt
from pytensor.scan.utils import until
import softmax_kernel
from vocab import BOS_ID, EOS_ID, PAD_ID, UNK_ID


# Temperatures below this decode greedily: softmax(log p / T) then puts all its mass on the
# most probable token, and float32 (the compiled decoder's) overflows long before T = 0.
MIN_TEMPERATURE = 1e-6
# Bounds of the scripts' decoding settings: an output of MAX_LEN tokens takes minutes on a CPU
# at the benchmark's size, and a beam of MAX_BEAM over a 10,000-word vocabulary scores 10M
# candidates per sentence and step.
MAX_LEN, MAX_BEAM = 1000, 1000


def generate(model, src, max_len=60, temperature=0.0, rng=None, beam_size=1, length_norm=1.0,
             no_repeat_ngram_size=0, top_k=0, top_p=1.0, unk_penalty=math.inf):
    """src (Ts, B) int32 -> (outputs, log-probabilities): one list of ids (EOS excluded) and
    its total log-probability per sentence. Beam search does not sample: with beam_size > 1,
    a temperature, top_k or top_p is a ValueError."""
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    temperature = 0.0 if temperature < MIN_TEMPERATURE else temperature
    if beam_size > 1 and (temperature or top_k or top_p < 1):
        raise ValueError(f"beam search (beam_size={beam_size}) does not sample: temperature={temperature}, "
                         f"top_k={top_k} and top_p={top_p} need beam_size=1")
    if beam_size > 1:
        return beam_search(model, src, beam_size, max_len, length_norm, no_repeat_ngram_size, unk_penalty)
    if no_repeat_ngram_size or top_k or top_p < 1 or unk_penalty != math.inf:
        return step_decode(model, src, max_len, temperature, rng, no_repeat_ngram_size, top_k, top_p, unk_penalty)
    ys, logps = model.decode(src, max_len=max_len, temperature=temperature, rng=rng)
    return [until_eos(row) for row in ys], logps


def until_eos(ids):
    ids = [int(w) for w in ids]
    return ids[: ids.index(EOS_ID)] if EOS_ID in ids else [w for w in ids if w != PAD_ID]


def candidate_scores(logp, unk_penalty=math.inf):
    """The scores decoders choose from, given log-probabilities (R, V): PAD and BOS at -inf,
    <unk> lowered by unk_penalty. A new float64 array."""
    scores = logp.astype(np.float64)
    scores[:, [PAD_ID, BOS_ID]] = -np.inf
    scores[:, UNK_ID] -= unk_penalty
    return scores


def top_k_columns(x, k, block=64):
    """Column indices (R, min(k, V)) of the k largest entries of each row of x (R, V), in no
    order. Each row's best k lie in its k blocks of `block` columns with the largest maxima,
    so one pass of block maxima narrows the search to k * block columns a row (a full
    argpartition of the (R, V) scores was most of a beam search step)."""
    R, V = x.shape
    k, n_blocks = min(k, V), V // block
    if n_blocks <= k:  # narrow rows: searched whole
        return np.argpartition(-x, k - 1, axis=1)[:, :k]
    full = n_blocks * block  # the last V - full columns (under one block) are always searched
    blocks = np.argpartition(-x[:, :full].reshape(R, n_blocks, block).max(axis=2), k - 1, axis=1)[:, :k]
    cols = (blocks[:, :, None] * block + np.arange(block)).reshape(R, k * block)
    cols = np.concatenate([cols, np.broadcast_to(np.arange(full, V), (R, V - full))], axis=1)
    best = np.argpartition(-np.take_along_axis(x, cols, axis=1), k - 1, axis=1)[:, :k]
    return np.take_along_axis(cols, best, axis=1)


def banned_tokens(tokens, n):
    """The tokens that would repeat an n-gram of `tokens` if emitted next: those that would
    complete an n-gram already in it."""
    if n <= 0 or len(tokens) < n - 1:
        return []
    if n == 1:
        return list(set(tokens))
    prefix = tokens[len(tokens) - n + 1 :]
    return [tokens[i + n - 1] for i in range(len(tokens) - n + 1) if tokens[i : i + n - 1] == prefix]


def sampling_probabilities(scores, temperature, top_k=0, top_p=1.0):
    """softmax(scores / temperature) over each row's top_k tokens and top_p nucleus, the rest 0."""
    z = scores / temperature
    probs = np.exp(z - z.max(axis=1, keepdims=True))
    probs /= probs.sum(axis=1, keepdims=True)
    if top_k or top_p < 1:
        order = np.argsort(-probs, axis=1, kind="stable")  # most probable first
        ranked = np.take_along_axis(probs, order, axis=1)
        keep = np.ones_like(ranked, dtype=bool)
        if top_k:
            keep[:, top_k:] = False
        if top_p < 1:  # a token stays while the mass before it is below top_p: the top one always
            keep &= np.cumsum(ranked, axis=1) - ranked < top_p
        np.put_along_axis(probs, order, np.where(keep, ranked, 0.0), axis=1)
        probs /= probs.sum(axis=1, keepdims=True)
    return probs


def step_decode(model, src, max_len=60, temperature=0.0, rng=None, no_repeat_ngram_size=0, top_k=0, top_p=1.0,
                unk_penalty=math.inf):
    """Greedy (temperature 0) or sampled decoding, one compiled step per token, with the
    n-gram guard, top-k, top-p and the <unk> penalty. Without them it follows
    Model.decode's scan: the same candidates and, given the same rng, the same uniform
    draw per step."""
    rng = rng if rng is not None else np.random.default_rng(0)
    noise = rng.random((max_len, src.shape[1]), dtype=np.float32)  # drawn as Model.decode does
    f_init, f_next = model.compile_step()
    n_mem, B = len(model.memory_names()), src.shape[1]
    init = f_init(src)
    memory, states = init[:n_mem], init[n_mem:]
    outputs, logps, done = [[] for _ in range(B)], np.zeros(B), np.zeros(B, dtype=bool)
    y_prev = np.full(B, BOS_ID, dtype=np.int32)
    for t in range(max_len):
        out = f_next(y_prev, *states, *memory)
        logp, states = out[0], out[1:]
        scores = candidate_scores(logp, unk_penalty)
        for i in range(B):
            scores[i, banned_tokens(outputs[i], no_repeat_ngram_size)] = -np.inf
        if temperature == 0:
            y = np.argmax(scores, axis=1)
        else:
            probs = sampling_probabilities(scores, temperature, top_k, top_p)
            y = np.minimum(np.sum(np.cumsum(probs, axis=1) < noise[t][:, None], axis=1), probs.shape[1] - 1)
            y = np.where(probs[np.arange(B), y] > 0, y, np.argmax(probs, axis=1))  # rounding at the cumsum's end
        y = y.astype(np.int32)
        for i in np.flatnonzero(~done):
            logps[i] += logp[i, y[i]]
            if y[i] == EOS_ID:
                done[i] = True
            else:
                outputs[i].append(int(y[i]))
        if done.all():
            break
        y_prev = y
    return outputs, logps


def beam_search(model, src, beam_size=5, max_len=60, length_norm=1.0, no_repeat_ngram_size=0,
                unk_penalty=math.inf, nbest=1):
    """src (Ts, B) int32 -> (outputs, scores): for each sentence, the best hypothesis as a
    list of ids (EOS excluded) and its total log-probability. With nbest > 1, each entry is
    instead the list of the nbest best hypotheses (best first) and an array of their
    log-probabilities. With no_repeat_ngram_size, extensions that repeat an n-gram of their
    hypothesis are not candidates."""
    if beam_size < 1:
        raise ValueError(f"beam_size must be at least 1, got {beam_size}")
    if not 1 <= nbest <= beam_size:
        raise ValueError(f"nbest must be between 1 and beam_size ({beam_size}), got {nbest}")
    f_init, f_next = model.compile_step()
    mem_keys, B = model.memory_names(), src.shape[1]
    init = f_init(src)
    memory, states = init[: len(mem_keys)], init[len(mem_keys) :]
    # live[i]: sentence i's live hypotheses as (tokens, rank score, log-probability), in the
    # order of their rows in the step's batch; rows go sentence by sentence.
    live, finished = [[([], 0.0, 0.0)] for _ in range(B)], [[] for _ in range(B)]
    sentence_of_row = np.arange(B)
    y_prev = np.full(B, BOS_ID, dtype=np.int32)
    for t in range(max_len):
        # Under JAX each row count is a compilation: every step gets B * beam_size rows, the
        # extra ones copies of row 0, cut off again below.
        R = len(y_prev)
        padded = np.r_[np.arange(R), np.zeros(B * beam_size - R, int)] if model.mode_name == "JAX" else np.arange(R)
        # c is (B, C); the time-major entries (annotations, keys, src_mask) have B on axis 1.
        sentences = sentence_of_row[padded]
        if t == 0 or not np.array_equal(sentences, gathered):  # (most steps keep every row's sentence)
            # (np.take: numpy lays m[:, sentences] out transposed, 2-3x slower for the step to read)
            mem = [np.take(m, sentences, axis=0 if key == "c" else 1) for key, m in zip(mem_keys, memory)]
            gathered = sentences
        out = f_next(y_prev[padded], *(s[padded] for s in states), *mem)
        logp, new_states = out[0][:R], [s[:R] for s in out[1:]]
        V = logp.shape[1]
        rows = [(i, k, hyp) for i in range(B) for k, hyp in enumerate(live[i])]
        cand = candidate_scores(logp, unk_penalty)  # (R, V)
        if no_repeat_ngram_size:
            for r, (_, _, (tokens, _, _)) in enumerate(rows):
                cand[r, banned_tokens(tokens, no_repeat_ngram_size)] = -np.inf
        cand += np.array([score for _, _, (_, score, _) in rows])[:, None]
        # A sentence's best beam_size candidates are among its rows' best beam_size each: those
        # side by side, (B, beam * k), as ids hypothesis * V + token; -inf where it has fewer rows.
        tokens_r = top_k_columns(cand, beam_size)  # (R, k)
        slot = np.array([i * beam_size + k for i, k, _ in rows])
        table = np.full((B * beam_size, tokens_r.shape[1]), -np.inf)  # (B * beam, k)
        ids = np.zeros(table.shape, dtype=np.int64)
        table[slot], ids[slot] = np.take_along_axis(cand, tokens_r, axis=1), (slot % beam_size)[:, None] * V + tokens_r
        table, ids = table.reshape(B, -1), ids.reshape(B, -1)  # (B, beam * k)
        order = np.lexsort((ids, -table), axis=1)[:, :beam_size]  # (B, beam): by score, then id
        best, best_scores = np.take_along_axis(ids, order, axis=1), np.take_along_axis(table, order, axis=1)
        row_of = {(i, k): r for r, (i, k, _) in enumerate(rows)}
        keep, next_live, next_y = [], [[] for _ in range(B)], []
        for i in range(B):
            n = beam_size - len(finished[i]) if live[i] else 0
            for index, score in zip(best[i, :n].tolist(), best_scores[i, :n].tolist()):
                if score == -np.inf:
                    break
                r = row_of[(i, index // V)]
                token, (tokens, _, total) = index % V, rows[r][2]
                hyp = (tokens + [token], float(score), total + float(logp[r, token]))
                if token == EOS_ID:
                    finished[i].append(hyp)
                else:
                    next_live[i].append(hyp)
                    keep.append(r)
                    next_y.append(token)
        live = next_live
        if not keep:
            break
        keep = np.array(keep)
        states = [s[keep] for s in new_states]
        sentence_of_row = np.array([i for i in range(B) for _ in live[i]])
        y_prev = np.array(next_y, dtype=np.int32)
    outputs, scores = [], []
    for i in range(B):  # max_len reached: live hypotheses finish as they are
        hyps = sorted(finished[i] + live[i], key=lambda h: -h[1] / max(1, len(h[0])) ** length_norm)[:nbest]
        texts = [[w for w in tokens if w != EOS_ID] for tokens, _, _ in hyps]
        totals = np.array([total for _, _, total in hyps])
        outputs.append(texts[0] if nbest == 1 else texts)
        scores.append(totals[0] if nbest == 1 else totals)
    return outputs, (np.array(scores) if nbest == 1 else scores)


# ---- one-scan greedy and sampled decoding, and the compiled single step ---------------------


def decode_graph(model, src, noise, temperature=None):
    """Greedy (temperature None) or sampled decoding in one scan, as a graph.

    src (Ts, B); noise (T_max, B) uniform [0, 1) draws, one per step and sentence, which also
    fix the longest output. Returns ids (T, B) and their log-probabilities (T, B) under the
    model at temperature 1; PAD and 0 after a sentence's EOS. The scan stops early once every
    sentence has produced EOS. PAD, <unk> and BOS are never emitted."""
    memory = model.encode(src)
    keys = model.memory_names()
    B = src.shape[1]
    init = model.decoder_init(memory)
    n_states = len(init)
    first = BOS_ID + 1  # ids below are PAD, <unk> and BOS

    # scan's order: sequences (u_t), previous outputs (states..., y_prev, done),
    # then non-sequences (the memory entries, then temperature when sampling).
    def step(u_t, *args):
        states, (y_prev, done), rest = args[:n_states], args[n_states : n_states + 2], args[n_states + 2 :]
        mem = dict(zip(keys, rest))
        new, logits, _ = model.decoder_step(y_prev, states, mem)  # logits (B, V)
        # y (B,) and log p(y) as trained; greedy: both from one fused op over the logits
        if temperature is None:
            y, y_logp = softmax_kernel.greedy_pick(logits, first)
        else:
            probs = pt.special.softmax(logits[:, first:] / rest[-1], axis=1)  # (B, V - first)
            y = pt.sum(pt.lt(pt.cumsum(probs, axis=1), u_t[:, None]), axis=1)
            y = (pt.minimum(y, probs.shape[1] - 1) + first).astype("int32")
            y_logp = -softmax_kernel.softmax_cross_entropy(logits, y)  # one fused pass
        y_logp = pt.switch(done, np.float32(0.0), y_logp)  # (B,)
        y = pt.switch(done, PAD_ID, y).astype("int32")
        done_new = pt.or_(done, pt.eq(y, EOS_ID))
        if model.mode_name == "JAX":  # lax.scan has no early exit: finished rows emit PAD
            return [*new, y, done_new, y_logp]
        return [*new, y, done_new, y_logp], until(pt.all(done_new))

    y0, done0 = pt.full((B,), BOS_ID, dtype="int32"), pt.zeros((B,), dtype="bool")
    extra = [] if temperature is None else [temperature]
    outputs = pytensor.scan(step, sequences=[noise], outputs_info=[*init, y0, done0, None],
                            non_sequences=[*(memory[k] for k in keys), *extra], name="decode.scan",
                            return_updates=False, mode=model.mode)
    return outputs[-3], outputs[-1]


def compile_decode(model, greedy=True):
    """`f(src, noise) -> (ids, logps)` (greedy) or `f(src, noise, temperature)`; see
    decode_graph. Greedy decoding has its own graph: softmax_kernel.greedy_pick, no cumsum."""
    def build():
        src, noise = pt.imatrix("src"), pt.matrix("noise", dtype=FLOATX)
        inputs = [src, noise] if greedy else [src, noise, pt.scalar("temperature", dtype=FLOATX)]
        return compiled.function(inputs, list(decode_graph(model, *inputs)), model.mode, pad=True)

    return compiled.cached(model.functions, ("decode", greedy), build)


def scan_decode(model, src, max_len=50, temperature=0.0, rng=None):
    """Decode a (Ts, B) int32 batch in one scan. Returns ids (B, T) with PAD after EOS, and
    the summed log-probability of each output (B,). temperature 0 is greedy."""
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    temperature = 0.0 if temperature < MIN_TEMPERATURE else temperature
    rng = rng if rng is not None else np.random.default_rng(0)
    noise = rng.random((max_len, src.shape[1]), dtype=np.float32)
    if temperature == 0:
        ys, logps = compile_decode(model, greedy=True)(src, noise)
    else:
        ys, logps = compile_decode(model, greedy=False)(src, noise, np.float32(temperature))
    # Under JAX the batch and the steps were padded to bucket sizes (compiled.function).
    ys, logps = ys[:max_len, : src.shape[1]], logps[:max_len, : src.shape[1]]
    return ys.T, logps.sum(axis=0)


def compile_step(model):
    """Two functions for searches run step by step from Python (beam search, the guard):

        f_init(src) -> [*memory (memory_names() order), *initial decoder states]
        f_next(y_prev, *states, *memory) -> [log-probabilities (B, V), *new states]

    Rows of y_prev, states and memory (batch axis 0 for c and states, 1 for the time-major
    rest) are hypotheses, so a beam is a batch of B * beam_size rows.
    """
    def build():
        src = pt.imatrix("src")
        memory = model.encode(src)
        keys = model.memory_names()
        init = model.decoder_init(memory)
        axes = [0 if k == "c" else 1 for k in keys]  # each memory entry's batch axis
        f_init = compiled.function([src], [*(memory[k] for k in keys), *init], model.mode,
                                  batch_axes=([1], axes + [0] * len(init)))
        y_prev = pt.ivector("y_prev")
        states = [s.type(f"state{i}") for i, s in enumerate(init)]
        mem_in = {k: memory[k].type(k) for k in keys}
        new, logits, _ = model.decoder_step(y_prev, states, mem_in)
        logp = softmax_kernel.log_softmax(logits)  # (B, V)
        f_next = compiled.function([y_prev, *states, *(mem_in[k] for k in keys)], [logp, *new], model.mode,
                                  batch_axes=([0] * (1 + len(states)) + axes, [0] * (1 + len(new))))
        return f_init, f_next

    return compiled.cached(model.functions, "step", build)
