"""Concept vocabularies: curated offline lists, a general word list, user lists, and the
Label-free CBM filters that keep a vocabulary free of class names, duplicates and concepts no
image shows.

Everything here works offline: the curated lists are in this file and the general list
(`data/general_words.txt`, common English nouns and adjectives by frequency) is built
reproducibly by `scripts/build_vocabulary.py` and committed.
"""

from __future__ import annotations

import difflib
import logging
import os
import re
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import torch

from retrofit.errors import ConfigError

logger = logging.getLogger(__name__)

COLOURS: tuple[str, ...] = (
    "red", "green", "blue", "yellow", "purple", "orange", "white", "pink", "black", "grey",
    "brown", "cyan", "magenta", "beige", "gold", "silver", "turquoise", "navy", "maroon", "olive",
)  # fmt: skip
SHAPES: tuple[str, ...] = (
    "circle", "square", "triangle", "star", "cross", "ring", "diamond", "heart", "hexagon",
    "oval", "rectangle", "pentagon", "crescent", "arrow", "spiral", "sphere", "cube", "cylinder",
    "cone", "zigzag line",
)  # fmt: skip
TEXTURES: tuple[str, ...] = (
    "solid", "striped", "dotted", "checkered", "spotted", "plaid", "woven", "furry", "scaly",
    "smooth", "rough", "wrinkled", "grainy", "glossy", "matte", "marbled", "cracked", "knitted",
    "lacy", "honeycomb",
)  # fmt: skip
MATERIALS: tuple[str, ...] = (
    "wood", "metal", "glass", "plastic", "stone", "fabric", "leather", "paper", "ceramic",
    "rubber", "concrete", "brick", "fur", "feathers", "ice", "wool", "cotton", "steel", "marble",
    "cardboard",
)  # fmt: skip
PARTS: tuple[str, ...] = (
    "wheel", "wing", "leg", "tail", "head", "eye", "beak", "handle", "window", "door", "roof",
    "leaf", "petal", "screen", "button", "ear", "nose", "fin", "horn", "paw",
)  # fmt: skip
BACKGROUNDS: tuple[str, ...] = (
    "dark background", "grass background", "sky background", "sand background",
    "water background", "snow background", "forest background", "indoor background",
    "road background", "white background", "city background", "field background",
)  # fmt: skip
CURATED: dict[str, tuple[str, ...]] = {
    "colours": COLOURS,
    "shapes": SHAPES,
    "textures": TEXTURES,
    "materials": MATERIALS,
    "parts": PARTS,
    "backgrounds": BACKGROUNDS,
}
DEFAULT_TEMPLATES: tuple[str, ...] = ("{}", "a photo of {}", "an image with {}")
GENERAL_WORDS_FILE = "general_words.txt"
MAX_CONCEPT_LENGTH = 30
CLASS_SIMILARITY = 0.85
DUPLICATE_SIMILARITY = 0.9
IMAGE_SUPPORT_TOP = 5


def _normalise(text: str) -> str:
    return " ".join(text.replace("_", " ").replace("-", " ").lower().split())


def curated_concepts(groups: Sequence[str] | None = None) -> list[str]:
    """The curated concepts of `groups` (default: all), in a stable order, without duplicates."""
    groups = list(CURATED) if groups is None else list(groups)
    unknown = [g for g in groups if g not in CURATED]
    if unknown:
        raise ConfigError(f"Unknown curated groups {unknown}; choose from {list(CURATED)}.")
    return list(dict.fromkeys(c for g in groups for c in CURATED[g]))


def general_words(n: int | None = None) -> list[str]:
    """The first `n` (default: all) words of the committed general list, most frequent first."""
    path = Path(str(resources.files("retrofit.concepts") / "data" / GENERAL_WORDS_FILE))
    if not path.is_file():
        raise ConfigError(
            f"The general word list {path} is missing; rebuild it with "
            "`python scripts/build_vocabulary.py`."
        )
    words = [w for w in path.read_text(encoding="utf-8").splitlines() if w.strip()]
    if n is not None:
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ConfigError(f"n must be a non-negative integer or None, got {n!r}.")
        words = words[:n]
    return words


def clean_concepts(concepts: Sequence[Any], source: str = "the vocabulary") -> list[str]:
    """Stripped concepts without blanks or duplicates (case- and spacing-insensitive); warns
    when it had to drop any, since a user list with repeats usually hides a mistake."""
    cleaned: dict[str, str] = {}
    blanks = duplicates = 0
    for item in concepts:
        if not isinstance(item, str):
            raise ConfigError(
                f"Concepts must be strings; {source} contains {item!r} ({type(item).__name__})."
            )
        text = " ".join(item.split())
        if not text:
            blanks += 1
        elif _normalise(text) in cleaned:
            duplicates += 1
        else:
            cleaned[_normalise(text)] = text
    if blanks or duplicates:
        message = (
            f"Cleaned {source}: removed {blanks} blank entries and {duplicates} duplicates; "
            f"{len(cleaned)} concepts remain."
        )
        warnings.warn(message, UserWarning, stacklevel=3)
        logger.warning(message)
    return list(cleaned.values())


@dataclass(frozen=True)
class Vocabulary:
    """A cleaned list of concepts and the prompt templates averaged when embedding them."""

    concepts: tuple[str, ...]
    templates: tuple[str, ...] = DEFAULT_TEMPLATES

    def __post_init__(self) -> None:
        if not self.concepts:
            raise ConfigError(
                "The concept vocabulary is empty. Pass a list of concept words, a text file with "
                "one concept per line, or None for the curated default vocabulary."
            )
        bad = [t for t in self.templates if not isinstance(t, str) or t.count("{}") != 1]
        if not self.templates or bad:
            raise ConfigError(
                f"Prompt templates must be strings containing '{{}}' exactly once, got {bad or '()'}."
            )

    def __len__(self) -> int:
        return len(self.concepts)

    def __iter__(self) -> Iterator[str]:
        return iter(self.concepts)

    def __getitem__(self, index: int) -> str:
        return self.concepts[index]

    def subset(self, index: Sequence[int] | torch.Tensor) -> Vocabulary:
        return Vocabulary(tuple(self.concepts[int(i)] for i in index), self.templates)

    def to_dict(self) -> dict[str, Any]:
        return {"concepts": list(self.concepts), "templates": list(self.templates)}


def _read_text_file(path: Path) -> list[str]:
    """One concept per line; lines starting with '#' are comments."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(f"Cannot read the vocabulary file {path}: {error}") from error
    return [line for line in lines if not line.lstrip().startswith("#")]


def load_vocabulary(
    source: Vocabulary | Sequence[str] | str | os.PathLike | None = None,
    templates: Sequence[str] | None = None,
) -> Vocabulary:
    """A Vocabulary from a list, a text file (one concept per line), a named list or None.

    Names: "curated" (the default: colours, shapes, textures, materials, parts, backgrounds),
    a curated group such as "colours", "general" (the general word list), or a "+"-joined mix
    like "curated+general". Blank lines and duplicates are removed with a warning.
    """
    if isinstance(source, Vocabulary):
        return source if templates is None else Vocabulary(source.concepts, tuple(templates))
    templates = DEFAULT_TEMPLATES if templates is None else tuple(templates)
    if source is None:
        return Vocabulary(tuple(curated_concepts()), templates)
    if isinstance(source, (str, os.PathLike)):
        text = os.fspath(source)
        parts = text.split("+")
        if all(p == "curated" or p == "general" or p in CURATED for p in parts):
            words: list[str] = []
            for part in parts:
                if part == "curated":
                    words += curated_concepts()
                elif part == "general":
                    words += general_words()
                else:
                    words += list(CURATED[part])
            return Vocabulary(tuple(dict.fromkeys(words)), templates)
        path = Path(text)
        if not path.is_file():
            raise ConfigError(
                f"Vocabulary {text!r} is neither a file nor a known list; pass a text file with one "
                f"concept per line, a list of strings, or one of 'curated', 'general', "
                f"{list(CURATED)} (joined with '+')."
            )
        return Vocabulary(tuple(clean_concepts(_read_text_file(path), f"file {path}")), templates)
    if isinstance(source, Sequence):
        return Vocabulary(tuple(clean_concepts(source, "the concept list")), templates)
    raise ConfigError(
        f"A vocabulary must be a list of strings, a file path, a list name or None; got "
        f"{type(source).__name__}."
    )


@dataclass
class FilterResult:
    """The kept vocabulary, the kept rows of the input (to slice embeddings) and why others went."""

    vocabulary: Vocabulary
    index: torch.Tensor
    removed: dict[str, str] = field(default_factory=dict)


def _text_similarity(a: str, b: str) -> float:
    """Character similarity in [0, 1] (difflib's ratio) of the normalised strings."""
    return difflib.SequenceMatcher(None, _normalise(a), _normalise(b)).ratio()


def _class_label(name: str) -> str:
    """A class name as text, without dataset ids like 'n01440764' or 'class_03_'."""
    text = _normalise(name)
    text = re.sub(r"^(class \d+ |n\d{8} )", "", text)
    return text


def _image_support(text_embeddings: torch.Tensor, image_embeddings: torch.Tensor) -> torch.Tensor:
    """Mean of each concept's top-5 image similarities: how clearly some probe image shows it."""
    top = min(IMAGE_SUPPORT_TOP, image_embeddings.shape[0])
    return (image_embeddings @ text_embeddings.T).topk(top, dim=0).values.mean(dim=0)


def _drop_long(concepts: list[str], keep: list[bool], removed: dict[str, str], limit: int) -> None:
    for i, concept in enumerate(concepts):
        if len(concept) > limit:
            keep[i] = False
            removed[concept] = f"longer than {limit} characters"


def _drop_class_like(
    concepts: list[str],
    keep: list[bool],
    removed: dict[str, str],
    class_names: Sequence[str],
    threshold: float,
    text_embeddings: torch.Tensor | None,
    class_embeddings: torch.Tensor | None,
) -> None:
    labels = [_class_label(c) for c in class_names]
    for i, concept in enumerate(concepts):
        if not keep[i]:
            continue
        score, name = max((_text_similarity(concept, lab), lab) for lab in labels)
        if score >= threshold:
            keep[i] = False
            removed[concept] = f"text similarity {score:.2f} to class name {name!r}"
    if text_embeddings is None or class_embeddings is None:
        return
    best, which = (text_embeddings @ class_embeddings.T).max(dim=1)
    for i, concept in enumerate(concepts):
        if keep[i] and best[i] >= threshold:
            keep[i] = False
            removed[concept] = (
                f"embedding similarity {float(best[i]):.2f} to class name "
                f"{class_names[int(which[i])]!r}"
            )


def _drop_duplicates(
    concepts: list[str],
    keep: list[bool],
    removed: dict[str, str],
    text_embeddings: torch.Tensor,
    threshold: float,
    support: torch.Tensor | None,
) -> None:
    """Greedy: visit concepts best image support first (vocabulary order without images) and
    drop each that is a near-duplicate of one already kept. Of two concepts the encoder cannot
    tell apart, the one some probe image shows more clearly is the one worth naming features
    after; the vocabulary's order only breaks ties."""
    order = [i for i in range(len(concepts)) if keep[i]]
    if support is not None:
        order.sort(key=lambda i: -float(support[i]))
    kept_rows: list[int] = []
    for i in order:
        if kept_rows:
            sims = text_embeddings[kept_rows] @ text_embeddings[i]
            best = int(sims.argmax())
            if sims[best] >= threshold:
                keep[i] = False
                removed[concepts[i]] = (
                    f"near-duplicate of {concepts[kept_rows[best]]!r} "
                    f"(similarity {float(sims[best]):.2f})"
                )
                continue
        kept_rows.append(i)


def filter_vocabulary(
    vocabulary: Vocabulary,
    *,
    text_embeddings: torch.Tensor | None = None,
    class_names: Sequence[str] | None = None,
    class_embeddings: torch.Tensor | None = None,
    image_embeddings: torch.Tensor | None = None,
    max_length: int = MAX_CONCEPT_LENGTH,
    class_similarity: float = CLASS_SIMILARITY,
    duplicate_similarity: float = DUPLICATE_SIMILARITY,
    min_image_similarity: float | None = None,
) -> FilterResult:
    """Label-free CBM's concept filters, in order; each is skipped when its inputs are missing.

    1. longer than `max_length` characters;
    2. too similar to a class name: text similarity, or cosine of `text_embeddings` with
       `class_embeddings`, ≥ `class_similarity` (naming a feature after a class explains nothing);
    3. near-duplicate of a kept concept: embedding cosine ≥ `duplicate_similarity`; with
       `image_embeddings` the concept with the higher top-5 image similarity is kept, without
       them the earlier one;
    4. weak image support: mean of the top-5 image similarities below `min_image_similarity`.
    """
    concepts = list(vocabulary.concepts)
    v = len(concepts)
    if text_embeddings is not None and text_embeddings.shape[0] != v:
        raise ConfigError(f"text_embeddings has {text_embeddings.shape[0]} rows for {v} concepts.")
    removed: dict[str, str] = {}
    keep = [True] * v
    _drop_long(concepts, keep, removed, max_length)
    if class_names:
        _drop_class_like(
            concepts, keep, removed, class_names, class_similarity, text_embeddings,
            class_embeddings,
        )  # fmt: skip
    if text_embeddings is not None:
        support = (
            _image_support(text_embeddings, image_embeddings)
            if image_embeddings is not None
            else None
        )
        _drop_duplicates(concepts, keep, removed, text_embeddings, duplicate_similarity, support)
        if support is not None and min_image_similarity is not None:
            top = min(IMAGE_SUPPORT_TOP, image_embeddings.shape[0])
            for i in range(v):
                if keep[i] and support[i] < min_image_similarity:
                    keep[i] = False
                    removed[concepts[i]] = (
                        f"weak image support: top-{top} similarity {float(support[i]):.3f} < "
                        f"{min_image_similarity}"
                    )
    index = torch.tensor([i for i in range(v) if keep[i]], dtype=torch.long)
    if index.numel() == 0:
        raise ConfigError(
            f"Every concept was filtered out ({len(removed)} removed, e.g. "
            f"{dict(list(removed.items())[:3])}). Loosen the filters or pass a larger vocabulary."
        )
    if removed:
        logger.info("concept filters removed %d of %d concepts", len(removed), v)
    return FilterResult(vocabulary.subset(index), index, removed)
