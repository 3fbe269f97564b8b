"""Import the reveal game's answers and turn them into labels (ALGORITHMS.md section 9.3).

Answer texts are embedded with a text encoder (CLIP's), clustered by cosine distance
(complete linkage, k by silhouette) and each text cluster is named by its representative word:
the non-stopword, lemmatised, whose embedding has the highest summed similarity to the
cluster's phrases. A map's score for a label is INV's: frequency x (1 - 0.1 x mean reveal
step), with each wrong class guess counting a quarter. Each map keeps its best label; maps of
one image and layer that share a label merge.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import re
import warnings
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.cluster import AgglomerativeClustering
from sklearn.metrics import silhouette_score

from retrofit.concepts.encoders import ConceptEncoder, load_encoder
from retrofit.errors import DataError
from retrofit.inv.reveal import REVEAL_FRACTIONS

logger = logging.getLogger(__name__)

ANSWER_COLUMNS = ("map", "image", "layer", "depth", "predicted", "guess", "step", "text")
STEP_PENALTY = 0.1
WRONG_GUESS_FACTOR = 0.25
MAX_TEXT_CLUSTERS = 12
STOPWORDS = frozenset(
    [
        "a",
        "an",
        "the",
        "and",
        "or",
        "of",
        "on",
        "in",
        "at",
        "to",
        "with",
        "without",
        "is",
        "are",
        "was",
        "were",
        "be",
        "it",
        "its",
        "this",
        "that",
        "these",
        "those",
        "i",
        "see",
        "some",
        "something",
        "thing",
        "things",
        "like",
        "looks",
        "look",
        "kind",
        "sort",
        "very",
        "maybe",
        "there",
        "here",
        "one",
        "two",
        "part",
        "parts",
        "bit",
        "of's",
        "not",
        "no",
    ]
)


class AnswersError(DataError):
    """The answers file cannot be imported (missing, empty, wrong columns, unknown maps)."""


def _read_rows(path: Path) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
    if not path.is_file():
        raise AnswersError(f"The answers file {path} does not exist.")
    text = path.read_text(encoding="utf-8-sig")
    if not text.strip():
        raise AnswersError(f"The answers file {path} is empty; play the game and save again.")
    if path.suffix.lower() == ".csv":
        return list(csv.DictReader(text.splitlines())), None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise AnswersError(
            f"{path} is neither CSV (by its suffix) nor valid JSON: {error}"
        ) from error
    if isinstance(data, list):
        return data, None
    if not isinstance(data, dict) or not isinstance(data.get("answers"), list):
        raise AnswersError(
            f"{path} has no 'answers' list; use the JSON or CSV the reveal game downloads."
        )
    return data["answers"], data


def _as_bool(value: Any) -> bool:
    return value is True or str(value).strip().lower() in ("true", "1", "yes")


def _clean(rows: list[Any], path: Path, known: dict[str, dict[str, Any]] | None) -> list[dict]:
    if not rows:
        raise AnswersError(f"The answers file {path} has no answers; play the game and save again.")
    answers = []
    for number, row in enumerate(rows, start=1):
        if not isinstance(row, dict):
            raise AnswersError(f"Answer {number} in {path} is not a record of columns.")
        missing = [c for c in ANSWER_COLUMNS if row.get(c) in (None, "") and c != "text"]
        missing += ["text"] if "text" not in row else []
        if missing:
            raise AnswersError(
                f"Answer {number} in {path} lacks column(s) {missing}; the game writes "
                f"{list(ANSWER_COLUMNS)} (plus 'correct' and 'ms')."
            )
        try:
            step, depth, image = int(row["step"]), int(row["depth"]), int(row["image"])
        except (TypeError, ValueError) as error:
            raise AnswersError(
                f"Answer {number} in {path}: step, depth and image must be integers."
            ) from error
        if not 0 <= step < len(REVEAL_FRACTIONS):
            raise AnswersError(
                f"Answer {number} in {path}: step {step} is outside 0..{len(REVEAL_FRACTIONS) - 1}."
            )
        map_id = str(row["map"])
        if known is not None and map_id not in known:
            raise AnswersError(
                f"Answer {number} in {path} is about map {map_id!r} (image {image}), which is not "
                "in the game; pass the game page these answers were played on."
            )
        if known is not None and int(known[map_id]["image"]) != image:
            raise AnswersError(
                f"Answer {number} in {path}: map {map_id!r} shows image "
                f"{known[map_id]['image']}, not image {image}."
            )
        guess, predicted = str(row["guess"]), str(row["predicted"])
        correct = _as_bool(row["correct"]) if "correct" in row else guess == predicted
        answers.append(
            {
                "map": map_id,
                "image": image,
                "layer": str(row["layer"]),
                "depth": depth,
                "predicted": predicted,
                "guess": guess,
                "correct": correct,
                "step": step,
                "text": str(row["text"] or "").strip(),
            }
        )
    return answers


def read_answers(
    path: str | os.PathLike, game: dict[str, Any] | None = None
) -> list[dict[str, Any]]:
    """Validated answers from the game's JSON or CSV download.

    The maps they may refer to come from `game` (the manifest of the page played), else from
    the JSON file's own 'maps' list; a CSV without a game is checked for columns only.
    """
    path = Path(path)
    rows, data = _read_rows(path)
    manifest = game if game is not None else data
    known = None
    if manifest is not None and isinstance(manifest.get("maps"), list):
        known = {str(m["id"]): m for m in manifest["maps"]}
    return _clean(rows, path, known)


def lemma(word: str) -> str:
    """A light English lemmatiser for answer words (plural nouns to singular)."""
    word = word.lower()
    if len(word) > 4 and word.endswith("ies"):
        return word[:-3] + "y"
    if len(word) > 4 and word.endswith(("ches", "shes", "xes", "sses")):
        return word[:-2]
    if len(word) > 3 and word.endswith("s") and not word.endswith(("ss", "us", "is")):
        return word[:-1]
    return word


def content_words(text: str) -> list[str]:
    return [lemma(w) for w in re.findall(r"[a-zA-Z]+", text) if w.lower() not in STOPWORDS]


def cluster_texts(embeddings: torch.Tensor) -> np.ndarray:
    """Cluster ids of L2-normalised text embeddings: cosine, complete linkage, k by silhouette."""
    n = embeddings.shape[0]
    if n < 3:
        return np.arange(n)
    points = embeddings.double().numpy()
    distances = np.clip(1 - points @ points.T, 0, 2)
    np.fill_diagonal(distances, 0)
    if distances.max() <= 1e-9:
        return np.zeros(n, dtype=int)
    best: tuple[float, np.ndarray] | None = None
    for k in range(2, min(MAX_TEXT_CLUSTERS, n - 1) + 1):
        labels = AgglomerativeClustering(
            n_clusters=k, metric="precomputed", linkage="complete"
        ).fit_predict(distances)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            score = float(silhouette_score(distances, labels, metric="precomputed"))
        if best is None or score > best[0] + 1e-12:
            best = (score, labels)
    return best[1] if best is not None else np.zeros(n, dtype=int)


def representative_words(
    phrases: list[str],
    clusters: np.ndarray,
    phrase_embeddings: torch.Tensor,
    encoder: ConceptEncoder,
) -> dict[int, str]:
    """Per text cluster, its word with the highest summed similarity to the cluster's phrases."""
    names = {}
    for cluster in sorted(set(clusters.tolist())):
        members = np.flatnonzero(clusters == cluster)
        words = sorted({w for i in members for w in content_words(phrases[i])})
        if not words:
            names[cluster] = phrases[members[0]].lower() or "(nothing)"
            continue
        similarity = encoder.encode_texts(words) @ phrase_embeddings[members].T
        names[cluster] = words[int(similarity.sum(dim=1).argmax())]
    return names


def answer_score(steps: Sequence[int], correct: Sequence[bool], n_answers: int) -> float:
    """INV's score of one label on one map: frequency x (1 - 0.1 x step), each answer with a
    wrong class guess counting a quarter (so without wrong guesses it is
    frequency x (1 - 0.1 x mean step))."""
    return sum(
        (1 - STEP_PENALTY * s) * (1.0 if ok else WRONG_GUESS_FACTOR)
        for s, ok in zip(steps, correct)
    ) / max(1, n_answers)


def score_answers(
    answers: list[dict[str, Any]], encoder: ConceptEncoder | str | None = None
) -> dict[str, Any]:
    """Labels per map (best one kept, same-label maps of one image and layer merged) and the
    text clusters they come from."""
    labelled = [a for a in answers if a["text"]]
    if not labelled:
        raise AnswersError("No answer says what the person saw (every 'text' is empty).")
    encoder = load_encoder(encoder)
    phrases = [a["text"] for a in labelled]
    embeddings = encoder.encode_texts(phrases)
    clusters = cluster_texts(embeddings)
    names = representative_words(phrases, clusters, embeddings, encoder)
    by_map: dict[str, list[tuple[dict[str, Any], str]]] = defaultdict(list)
    for answer, cluster in zip(labelled, clusters.tolist()):
        by_map[answer["map"]].append((answer, names[cluster]))
    maps = []
    for map_id, entries in by_map.items():
        first = entries[0][0]
        per_label: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for answer, name in entries:
            per_label[name].append(answer)
        scores = {
            name: answer_score(
                [a["step"] for a in group], [a["correct"] for a in group], len(entries)
            )
            for name, group in per_label.items()
        }
        best = max(sorted(scores), key=lambda name: scores[name])
        maps.append(
            {
                "maps": [map_id],
                "image": first["image"],
                "layer": first["layer"],
                "depth": first["depth"],
                "predicted": first["predicted"],
                "label": best,
                "score": scores[best],
                "scores": dict(sorted(scores.items(), key=lambda item: -item[1])),
                "n_answers": len(entries),
            }
        )
    return {
        "labels": merge_same_labels(maps),
        "text_clusters": [
            {
                "label": names[c],
                "phrases": sorted({phrases[i] for i in np.flatnonzero(clusters == c)}),
            }
            for c in sorted(names)
        ],
        "n_answers": len(answers),
    }


def merge_same_labels(labels: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Merge maps of one image and layer whose best label is the same (score: the best one)."""
    merged: dict[tuple[int, str, str], dict[str, Any]] = {}
    for entry in labels:
        key = (entry["image"], entry["layer"], entry["label"])
        if key not in merged:
            merged[key] = {**entry, "maps": list(entry["maps"])}
            continue
        target = merged[key]
        target["maps"] += entry["maps"]
        target["n_answers"] += entry["n_answers"]
        target["score"] = max(target["score"], entry["score"])
    return sorted(merged.values(), key=lambda e: (e["image"], e["depth"], -e["score"]))
