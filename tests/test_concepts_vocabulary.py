"""Concept vocabularies: curated and general lists, user lists and files, cleaning, filters."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from retrofit.concepts import (
    CURATED,
    Vocabulary,
    curated_concepts,
    filter_vocabulary,
    general_words,
    load_vocabulary,
)
from retrofit.datasets import concept_world
from retrofit.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]


def test_curated_lists_cover_the_synthetic_world() -> None:
    assert set(CURATED) == {"colours", "shapes", "textures", "materials", "parts", "backgrounds"}
    curated = curated_concepts()
    assert len(curated) == len(set(curated))
    assert set(concept_world(50, 0).concept_names) <= set(curated)
    assert load_vocabulary(None).concepts == tuple(curated)
    assert load_vocabulary("colours").concepts == CURATED["colours"]
    with pytest.raises(ConfigError, match="Unknown curated groups"):
        curated_concepts(["smells"])


def test_general_list_is_a_few_thousand_clean_words() -> None:
    words = general_words()
    assert 3000 <= len(words) <= 20000
    assert len(set(words)) == len(words)
    assert all(w.isalpha() and w.islower() and 3 <= len(w) <= 20 for w in words)
    assert general_words(10) == words[:10]
    mixed = load_vocabulary("curated+general")
    assert len(mixed) > len(words) and mixed.concepts[0] == curated_concepts()[0]


@pytest.mark.skipif(
    importlib.util.find_spec("wordfreq") is None or importlib.util.find_spec("lemminflect") is None,
    reason="the build script's word-list packages are not installed",
)
def test_general_list_is_reproducible_from_its_script() -> None:
    spec = importlib.util.spec_from_file_location(
        "build_vocabulary", ROOT / "scripts" / "build_vocabulary.py"
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules["build_vocabulary"] = module
    spec.loader.exec_module(module)
    assert module.build() == general_words()


def test_user_lists_are_cleaned_with_a_warning(tmp_path) -> None:
    with pytest.warns(UserWarning, match="1 blank entries and 2 duplicates"):
        vocab = load_vocabulary(["red", " Red ", "", "striped  cat", "striped cat"])
    assert vocab.concepts == ("red", "striped cat")
    path = tmp_path / "words.txt"
    path.write_text("# my concepts\nred\n\nblue\nblue\n")
    with pytest.warns(UserWarning, match="duplicates"):
        assert load_vocabulary(path).concepts == ("red", "blue")
    assert load_vocabulary(["a", "b"], templates=["photo of {}"]).templates == ("photo of {}",)


def test_bad_vocabularies_fail_clearly(tmp_path) -> None:
    with pytest.raises(ConfigError, match="empty"):
        load_vocabulary([])
    with pytest.raises(ConfigError, match="empty"), pytest.warns(UserWarning):
        load_vocabulary(["", "  "])
    with pytest.raises(ConfigError, match="strings"):
        load_vocabulary(["red", 3])
    with pytest.raises(ConfigError, match="neither a file"):
        load_vocabulary(str(tmp_path / "missing.txt"))
    with pytest.raises(ConfigError, match="exactly once"):
        load_vocabulary(["red"], templates=["no placeholder"])
    with pytest.raises(ConfigError):
        load_vocabulary(42)


def _embeddings(rows: list[list[float]]) -> torch.Tensor:
    return F.normalize(torch.tensor(rows), dim=1)


def test_filters_long_class_like_duplicate_and_unsupported_concepts() -> None:
    vocab = Vocabulary(
        (
            "red",
            "crimson",
            "a very long concept description over thirty chars",
            "golden retriever",
            "canine",
            "ghost",
        )
    )
    text = _embeddings(
        [
            [1, 0, 0, 0],
            [0.95, 0.05, 0, 0],  # near-duplicate of red
            [0, 1, 0, 0],
            [0, 0, 1, 0],
            [0, 0.05, 0.99, 0],  # embedding-similar to the class "dog"
            [0, 0, 0, 1],  # no image looks like it
        ]
    )
    classes = ["n02099601_golden_retriever", "dog"]
    class_emb = _embeddings([[0, 0.2, 1, 0], [0, 0.03, 1, 0]])
    # Red images lean away from crimson's extra direction, so red is the better shown duplicate.
    images = _embeddings([[1, 0, 0.1, 0], [0, 1, 0.1, 0], [0.1, 0, 1, 0]] * 3)
    result = filter_vocabulary(
        vocab,
        text_embeddings=text,
        class_names=classes,
        class_embeddings=class_emb,
        image_embeddings=images,
        min_image_similarity=0.5,
    )
    assert result.vocabulary.concepts == ("red",)
    assert result.index.tolist() == [0]
    reasons = result.removed
    assert "near-duplicate of 'red'" in reasons["crimson"]
    assert "longer than 30" in reasons["a very long concept description over thirty chars"]
    assert "text similarity" in reasons["golden retriever"]
    assert "embedding similarity" in reasons["canine"]
    assert "weak image support" in reasons["ghost"]


def test_of_two_near_duplicates_the_better_shown_one_stays() -> None:
    """Images decide between near-duplicates; without images the earlier concept stays."""
    vocab = Vocabulary(("stripes", "striped"))
    text = _embeddings([[1, 0.3, 0], [1, 0, 0.3]])
    images = _embeddings([[1, 0, 0.5]])
    with_images = filter_vocabulary(vocab, text_embeddings=text, image_embeddings=images)
    assert with_images.vocabulary.concepts == ("striped",)
    assert "near-duplicate of 'striped'" in with_images.removed["stripes"]
    assert filter_vocabulary(vocab, text_embeddings=text).vocabulary.concepts == ("stripes",)


def test_filters_skip_what_they_cannot_check_and_never_return_nothing() -> None:
    vocab = Vocabulary(("red", "blue"))
    assert filter_vocabulary(vocab).vocabulary == vocab  # no embeddings: only the length filter
    with pytest.raises(ConfigError, match="filtered out"):
        filter_vocabulary(Vocabulary(("x" * 40,)))
