"""JapaneseVowels (UCI; Kudo et al. 1999): 12 LPC cepstrum channels per frame, lengths 7
to 29, 9 speakers. 270 train and 370 test series.

The series ship as .ts text files inside the PyPI wheel of `aeon` 1.6.0. This script
fetches that wheel alone (`pip download --no-deps`, 6 MB, nothing installed and aeon never
imported), reads the two .ts files out of it, and writes train.npz and test.npz beside
itself: `values` (sum of lengths, 12) float32, `lengths` (N,), `speakers` (N,) in 1..9.

    python data/japanese_vowels/prepare.py [--wheel path/to/aeon-1.6.0-py3-none-any.whl]
"""
import argparse
import glob
import os
import subprocess
import sys
import zipfile

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
AEON = "aeon==1.6.0"
MEMBER = "aeon/datasets/data/JapaneseVowels/JapaneseVowels_{}.ts"


def fetch_wheel(folder):
    """The aeon wheel in `folder`, downloaded there first if it is not there yet."""
    found = glob.glob(os.path.join(folder, "aeon-1.6.0-*.whl"))
    if not found:
        cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
               "-d", folder, AEON]
        if subprocess.run(cmd).returncode != 0:
            sys.exit(f"error: could not download {AEON} from PyPI ({' '.join(cmd)})")
        found = glob.glob(os.path.join(folder, "aeon-1.6.0-*.whl"))
    if not found:
        sys.exit(f"error: no aeon 1.6.0 wheel in {folder}")
    return found[0]


def parse_ts(lines, name, channels=12):
    """Series and labels from .ts text: after `@data`, one series per line, channels
    separated by ':', values by ',', the class label last. Returns [(T, channels)], [int]."""
    series, labels, in_data = [], [], False
    for line_no, line in enumerate(lines, 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if not in_data:
            in_data = line.lower() == "@data"
            continue
        *fields, label = line.split(":")
        if len(fields) != channels:
            raise ValueError(f"{name}:{line_no}: {len(fields)} channels, expected {channels}")
        try:
            rows = [np.array(f.split(","), dtype=np.float32) for f in fields]
            labels.append(int(label))
        except ValueError as err:
            raise ValueError(f"{name}:{line_no}: {err}") from None
        if len({len(r) for r in rows}) != 1:
            raise ValueError(f"{name}:{line_no}: channels of different lengths")
        series.append(np.stack(rows, axis=1))  # (T, channels)
    if not series:
        raise ValueError(f"{name}: no series after @data")
    return series, labels


def load(split, folder=HERE):
    """The prepared split as ([(T_i, 12) float32 arrays], speakers (N,) int)."""
    path = os.path.join(folder, f"{split}.npz")
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: run python data/japanese_vowels/prepare.py first")
    with np.load(path, allow_pickle=False) as data:
        values, lengths, speakers = data["values"], data["lengths"], data["speakers"]
    return np.split(values, np.cumsum(lengths)[:-1]), speakers


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--wheel", default=None, help="an aeon 1.6.0 wheel to read (default: download it here)")
    ap.add_argument("--out_dir", default=HERE, help="where to write train.npz and test.npz")
    args = ap.parse_args(argv)
    wheel = args.wheel or fetch_wheel(os.path.join(HERE, "download"))
    os.makedirs(args.out_dir, exist_ok=True)
    try:
        zf = zipfile.ZipFile(wheel)
    except (OSError, zipfile.BadZipFile) as err:
        sys.exit(f"error: {wheel}: {err}")
    with zf:
        for split in ("train", "test"):
            member = MEMBER.format(split.upper())
            try:
                text = zf.read(member).decode("utf-8").splitlines()
                series, labels = parse_ts(text, f"{wheel}!{member}")
            except KeyError:
                sys.exit(f"error: {wheel} has no {member}")
            except ValueError as err:
                sys.exit(f"error: {err}")
            lengths = np.array([len(s) for s in series])
            np.savez(os.path.join(args.out_dir, f"{split}.npz"), values=np.concatenate(series),
                     lengths=lengths, speakers=np.array(labels))
            print(f"{split}: {len(series)} series, lengths {lengths.min()}-{lengths.max()}, "
                  f"{len(set(labels))} speakers")


if __name__ == "__main__":
    main()
