"""Build retrofit/concepts/data/general_words.txt: a general English concept list, reproducibly.

The list is the most frequent English nouns and adjectives (in their base form), ordered by
frequency. It pads concept vocabularies the way CLIP-Dissect pads with the 20k most common
English words, without a download at run time: the library only reads the committed text file.

Sources, both shipped inside their wheels (no download when run):
  wordfreq==3.1.1     word frequencies (`top_n_list("en", ...)`, msgpack data in the wheel)
  lemminflect==0.2.3  a lemma table (lemma_lu.csv.gz: word, part of speech, lemma); read as CSV

Run from the repository root (only this script needs the two packages):
    pip install wordfreq==3.1.1 lemminflect==0.2.3
    python scripts/build_vocabulary.py
"""

from __future__ import annotations

import argparse
import csv
import gzip
import hashlib
import logging
import re
import sys
from importlib import metadata, resources
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from retrofit.io.files import atomic_write_bytes  # noqa: E402

logger = logging.getLogger("build_vocabulary")

OUTPUT = ROOT / "retrofit" / "concepts" / "data" / "general_words.txt"
PINNED = {"wordfreq": "3.1.1", "lemminflect": "0.2.3"}
CANDIDATES = 40_000
KEEP = 5_000
MIN_LENGTH, MAX_LENGTH = 3, 20
WORD = re.compile(r"^[a-z]+$")
# Offensive words kept out of a list that ends up in user-facing explanations: prefixes that
# start no innocent common word, and whole words (substrings would drop "grass", "grape").
BLOCKED_PREFIXES = ("fuck", "shit", "cunt", "bitch", "whore", "slut", "nigg", "porn", "dildo")
BLOCKED_WORDS = frozenset((
    "fag", "faggot", "rape", "rapist", "penis", "vagina", "dick", "cock", "pussy", "tits", "boob",
    "boobs", "anal", "sex", "sexy", "nazi", "retard", "retarded", "hooker", "bastard", "damn",
    "crap", "piss", "ass", "asshole", "idiot", "stupid", "moron", "dumb", "nude", "naked",
))  # fmt: skip


def _base_forms() -> tuple[set[str], set[str]]:
    """(nouns and adjectives in base form, words also used as adverbs or function_words).

    Words with an adverb or auxiliary use ("back", "well", "just") are mostly function words
    in frequency lists, so they are left out even when they are nouns too.
    """
    table = resources.files("lemminflect") / "resources" / "lemma_lu.csv.gz"
    keep: set[str] = set()
    function_words: set[str] = set()
    with table.open("rb") as raw, gzip.open(raw, "rt", encoding="utf-8") as text:
        for word, upos, lemma in csv.reader(text):
            if upos in ("aux", "adv"):
                function_words.add(word)
            elif upos in ("noun", "adj") and word == lemma:
                keep.add(word)
    return keep, function_words


def build(keep: int = KEEP) -> list[str]:
    from wordfreq import top_n_list

    for package, version in PINNED.items():
        found = metadata.version(package)
        if found != version:
            logger.warning(
                "%s %s installed; the committed list was built with %s", package, found, version
            )
    base, function_words = _base_forms()
    words: list[str] = []
    for word in top_n_list("en", CANDIDATES):
        if (
            WORD.match(word)
            and MIN_LENGTH <= len(word) <= MAX_LENGTH
            and word in base
            and word not in function_words
            and word not in BLOCKED_WORDS
            and not word.startswith(BLOCKED_PREFIXES)
        ):
            words.append(word)
            if len(words) == keep:
                break
    return words


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--keep", type=int, default=KEEP, help="number of words to keep")
    parser.add_argument("--output", type=Path, default=OUTPUT)
    args = parser.parse_args()
    words = build(args.keep)
    data = ("\n".join(words) + "\n").encode()
    args.output.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(args.output, data)
    logger.info(
        "wrote %d words to %s (blake2b %s)",
        len(words),
        args.output,
        hashlib.blake2b(data, digest_size=16).hexdigest(),
    )


if __name__ == "__main__":
    main()
