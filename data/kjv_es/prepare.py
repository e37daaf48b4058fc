"""English -> Spanish verse translation: KJV and Reina-Valera 1909, aligned verse by verse.

Both Bibles come from Debian's SWORD modules (sword-text-kjv, sword-text-sparv; public
domain), read with PyPI `pysword`. If /usr/share/sword lacks them, this script fetches the
two packages with `apt-get download` and unpacks them with `dpkg-deb -x` into
data/kjv_es/sword/ (no root needed; as root, `apt-get install sword-text-kjv
sword-text-sparv` puts them in /usr/share/sword instead): it needs Debian's tools (Debian,
Ubuntu). Markup is removed with a space kept between adjacent words (clean_verse). Pairs
with an empty side are dropped. Verses are split at random with a fixed seed (each pair stands alone, so nothing
leaks between splits), then data/text/prepare.py's write_dataset cleans pilcrows, lowercases
and word-tokenises (vocab.tokenize), skips training pairs longer than --max_len tokens on
either side (counted in meta.json; val and test keep every pair) and writes train/val/test.npz,
meta.json and {val,test}.ref.txt (one tokenised reference per line, what BLEU is scored
against).

    python data/kjv_es/prepare.py [--src_vocab 8000] [--tgt_vocab 8000] [--max_len 60]

--pairs_tsv reads a "source<TAB>target" file instead with this script's random split; for
your own parallel text, data/text/prepare.py (contiguous splits, SentencePiece) is the tool.
"""
import argparse
import glob
import os
import re
import shutil
import subprocess
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(os.path.dirname(HERE)))  # the repository root

from data.text import prepare as text_dataset  # noqa: E402  (the shared tokenise-and-write step)

MODULES = {"en": "engKJV2006eb", "es": "spaRV1909eb"}
PACKAGES = ("sword-text-kjv", "sword-text-sparv")
SYSTEM_SWORD = "/usr/share/sword"


def has_modules(sword_dir):
    return all(os.path.exists(os.path.join(sword_dir, "mods.d", f"{m}.conf")) for m in MODULES.values())


def find_sword(local_root):
    """A SWORD folder holding both modules: the system one, or one unpacked here."""
    if has_modules(SYSTEM_SWORD):
        return SYSTEM_SWORD
    local = os.path.join(local_root, "usr", "share", "sword")
    if not has_modules(local):
        tools = [tool for tool in ("apt-get", "dpkg-deb") if shutil.which(tool) is None]
        if tools:
            raise text_dataset.PrepareError(
                f"the Bibles come from Debian's packages {' and '.join(PACKAGES)}, and this machine has no "
                f"{' or '.join(tools)} to fetch them; on another machine, copy {SYSTEM_SWORD} here, or give your "
                "own parallel text with --pairs_tsv (or data/text/prepare.py --src/--tgt)")
        debs = os.path.join(local_root, "debs")
        os.makedirs(debs, exist_ok=True)
        if subprocess.run(["apt-get", "download", *PACKAGES], cwd=debs).returncode != 0:
            raise text_dataset.PrepareError(f"`apt-get download {' '.join(PACKAGES)}` failed; as root, "
                                             f"`apt-get install {' '.join(PACKAGES)}` also works")
        for deb in glob.glob(os.path.join(debs, "*.deb")):
            subprocess.run(["dpkg-deb", "-x", deb, local_root], check=True)
    if not has_modules(local):
        raise text_dataset.PrepareError(f"{local} lacks the modules {', '.join(MODULES.values())}")
    return local


# Reina-Valera marks the words its translators added (<transChange>) between Strong's-tagged
# words (<w>) with no space between the elements: "para siempre</w><transChange>es</transChange>
# <w>su" loses its spaces when the tags are stripped ("siempreessu"). Where an element closes
# and the next opens between two letters, the words are two, except a pronoun added after a
# verb, which is the verb's enclitic ("poniéndo</w><transChange>le" is "poniéndole"; so is a
# tag inside a word, "preguntándo<transChange>le", or KJV's "tha</w>t"). After a name or a
# word that takes its pronoun before the verb ("no lo hizo", "Josué los circuncidó") the
# pronoun stays a word of its own.
_ADJACENT_ELEMENTS = re.compile(r"(\w+)((?:</(?:w|transChange)>)+)((?:<(?:w|transChange)\b[^>]*>)+)(?=\w)")
_ADDED_PRONOUN = re.compile(r"<transChange\b[^>]*>(le|lo|la|les|los|las|me|te|se|nos|os)</transChange>")
_BEFORE_VERBS = {"no", "que", "y", "como", "cuánto", "cuanto", "ellos", "gentes", "os", "ya", "nunca"}


def _join_or_space(match):
    word, closing, opening = match.groups()
    before = re.sub(r"<[^>]*>", "", match.string[: match.start()])
    name = word[0].isupper() and not re.search(r"(^|[.:;?!¿¡]\s*)$", before)  # capitalised mid-sentence
    enclitic = (_ADDED_PRONOUN.match(match.string, match.start(3)) is not None and not name
                and word.lower() not in _BEFORE_VERBS)
    return word + closing + ("" if enclitic else " ") + opening


def clean_verse(osis, cleaner):
    """A verse's OSIS markup -> its text, adjacent words kept apart by a space."""
    return cleaner.clean(_ADJACENT_ELEMENTS.sub(_join_or_space, osis))


def read_pairs(sword_dir):
    """[(english, spanish)] verse texts in canonical order, both sides non-empty."""
    from pysword.cleaner import OSISCleaner
    from pysword.modules import SwordModules

    modules = SwordModules(sword_dir)
    modules.parse_modules()
    bibles = {lang: modules.get_bible_from_module(name) for lang, name in MODULES.items()}
    structure = bibles["en"].get_structure().get_books()
    pairs = []
    for book in structure["ot"] + structure["nt"]:
        for chapter in range(1, book.num_chapters + 1):
            n_verses = book.chapter_lengths[chapter - 1]
            verses = list(range(1, n_verses + 1))
            texts = {
                lang: [clean_verse(v, OSISCleaner()) for v in bible.get(
                    books=[book.osis_name], chapters=[chapter], verses=verses, clean=False, join="\x00").split("\x00")]
                for lang, bible in bibles.items()
            }
            for en, es in zip(texts["en"], texts["es"]):
                en, es = text_dataset.clean(en), text_dataset.clean(es)
                if en and es:
                    pairs.append((en, es))
    return pairs


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=text_dataset.HelpFormatter)
    ap.add_argument("--out_dir", default=HERE, help="where to write the splits (default: beside this script)")
    ap.add_argument("--src_vocab", type=int, default=8000, help="English vocabulary cap, specials included")
    ap.add_argument("--tgt_vocab", type=int, default=8000, help="Spanish vocabulary cap, specials included")
    ap.add_argument("--max_len", type=int, default=60, help="skip training pairs longer than this (tokens)")
    ap.add_argument("--n_val", type=int, default=500, help="verses held out for validation")
    ap.add_argument("--n_test", type=int, default=1000, help="verses held out for test")
    ap.add_argument("--seed", type=int, default=1234, help="seed of the split")
    ap.add_argument("--pairs_tsv", default=None, help="read source<TAB>target lines from this file instead")
    ap.add_argument("--overwrite", action="store_true", help="write into an --out_dir that holds files no prepare "
                                                             "script wrote (those the dataset names are replaced)")
    args = ap.parse_args(argv)
    if min(args.src_vocab, args.tgt_vocab) < 5 or args.max_len < 1 or min(args.n_val, args.n_test) < 1:
        ap.error("vocabularies need at least 5 entries; --max_len, --n_val, --n_test must be positive")

    try:
        raw = text_dataset.read_tsv(args.pairs_tsv) if args.pairs_tsv else read_pairs(find_sword(os.path.join(HERE, "sword")))
        if len(raw) <= args.n_val + args.n_test:
            raise text_dataset.PrepareError(f"{len(raw)} pairs leave none for training after --n_val and --n_test")
        order = np.random.default_rng(args.seed).permutation(len(raw))
        held = {"val": order[: args.n_val], "test": order[args.n_val : args.n_val + args.n_test]}
        splits = {name: [raw[i] for i in sorted(idx)] for name, idx in held.items()}
        splits["train"] = [raw[i] for i in sorted(order[args.n_val + args.n_test :])]
        summary = text_dataset.write_dataset(
            args.out_dir, splits, vocab_size=args.src_vocab, tgt_vocab_size=args.tgt_vocab, shared_vocab=False,
            max_len=args.max_len, long="skip", references=True, task="translation", source_lang="en",
            target_lang="es", corpus=args.pairs_tsv or MODULES, n_pairs=len(raw), exact_match=False,
            overwrite=args.overwrite)
    except text_dataset.PrepareError as err:
        sys.exit(f"error: {err}")
    print(f"{len(raw)} verse pairs; training pairs over {args.max_len} tokens skipped: "
          f"{summary['n_over_max_len']['train']}; removed from train as in val or test: {summary['removed_from_train']}; "
          f"pairs {summary['pairs']}; vocab en/es {summary['vocab_sizes']}; "
          f"target <unk> rate {summary['tgt_unk_rate']}; wrote {args.out_dir}")


if __name__ == "__main__":
    main()
