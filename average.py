"""Average the weights of a run's last checkpoints into one: an average of the last few
snapshots is often a little better than any one of them (Vaswani et al. 2017).

    python average.py --dataset=kjv_es                     # every ckpt_step<N>.npz of out/kjv_es
    python average.py --out_dir=out/kjv_es --last=3        # the newest 3 snapshots only
    python evaluate.py --dataset=kjv_es --ckpt=avg         # score the average
    python sample.py --dataset=kjv_es --ckpt=avg --start="And God said"

The snapshots are those train.py keeps (--keep_last=N: the checkpoints of the last N
evaluations). Writes <out_dir>/ckpt_<output>.npz (ckpt_avg.npz): each parameter the mean of
theirs; the vocabularies, settings and run state those of the newest; no optimizer state, so
it is for decoding and scoring, not for resuming.
"""
import json
import os
import re
import sys
from dataclasses import dataclass

import numpy as np

from checkpoint import CheckpointError, checkpoint_path, read_arrays, save_arrays
from configurator import ConfigError, configure, require, setting
from runs import SNAPSHOT, run_dir


@dataclass
class AverageConfig:
    dataset: str = setting("kjv", "the run of this dataset (out/<dataset>), unless out_dir is given")
    out_dir: str = setting("", "run folder holding the snapshots; empty = out/<dataset>")
    last: int = setting(0, "average the newest N snapshots; 0 = all of them")
    output: str = setting("avg", "written as <out_dir>/ckpt_<output>.npz")


def snapshots(folder, last=0):
    """The paths of the folder's ckpt_step<N>.npz, oldest first; the newest `last` if > 0."""
    found = sorted((int(m.group(1)), m.group(0)) for m in map(SNAPSHOT.fullmatch, os.listdir(folder)) if m)
    paths = [os.path.join(folder, name) for _, name in found]
    return paths[-last:] if last else paths


def average(paths):
    """The arrays of the newest checkpoint in `paths`, each param/ array replaced by the mean
    over all of them (accumulated in float64), without optimizer state. Checkpoints of
    different models (another config or another parameter set) are refused, naming both."""
    newest = read_arrays(paths[-1])
    names = sorted(k for k in newest if k.startswith("param/"))
    total = {k: newest[k].astype(np.float64) for k in names}
    meta = json.loads(str(newest["meta"]))
    for path in paths[:-1]:
        arrays = read_arrays(path)
        if json.loads(str(arrays["meta"]))["model_config"] != meta["model_config"] or sorted(
                k for k in arrays if k.startswith("param/")) != names:
            raise CheckpointError(f"{path} and {paths[-1]} are checkpoints of different models; not averaged")
        for k in names:
            if arrays[k].shape != total[k].shape:
                raise CheckpointError(f"{path}: {k} has shape {arrays[k].shape}, {paths[-1]} {total[k].shape}")
            total[k] += arrays[k]
    out = {k: v for k, v in newest.items() if not k.startswith("opt/")}
    out.update({k: (total[k] / len(paths)).astype(newest[k].dtype) for k in names})
    meta["state"]["averaged"] = [os.path.basename(p) for p in paths]
    out["meta"] = np.array(json.dumps(meta))
    return out


def main(argv):
    cfg = AverageConfig()
    configure([cfg], argv, __doc__.strip())
    require(cfg.last >= 0, f"last={cfg.last}: must not be negative (0 = every snapshot)")
    require(re.fullmatch(r"[\w.-]+", cfg.output) is not None and not SNAPSHOT.fullmatch(f"ckpt_{cfg.output}.npz")
            and cfg.output not in ("latest", "best"), f"output={cfg.output!r}: a plain name other than latest, best "
                                                      "or step<N> (those are train.py's)")
    folder = run_dir(cfg.out_dir, cfg.dataset)
    require(os.path.isdir(folder), f"{folder}: no such run folder")
    paths = snapshots(folder, cfg.last)
    require(paths, f"{folder}: no ckpt_step<N>.npz snapshots to average (train.py keeps the last --keep_last=N)")
    target = checkpoint_path(folder, cfg.output)
    save_arrays(target, average(paths))
    print(f"{target}: the mean of {len(paths)} checkpoints ({', '.join(os.path.basename(p) for p in paths)})")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except (ConfigError, CheckpointError) as err:
        sys.exit(f"error: {err}")
