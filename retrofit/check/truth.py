"""Is the global explanation true? Precision, recall and distinctness against ground truth.

Ground truth is a class–concept matrix (C, K): given directly (CUB's class–attribute matrix)
or derived from per-image concept labels (a concept belongs to a class when at least half of
its images show it). For every class c and every feature j it uses with a positive weight, the
shown name (the class-conditional pair name, or the feature's global name) is

- *named* unless naming abstained ("unexplained");
- *correct* when it is one of c's true concepts and, where per-image labels are known, the
  feature really responds to it: AUC ≥ `min_auc` of φ_j against the concept's presence.

precision = correct / named pairs; recall = share of a class's true concepts that a correct
pair names (mean over classes); distinct = distinct names / named pairs of a class (mean);
coverage = named / positive pairs.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from retrofit.concepts.pairs import MIN_AUC, auc_matrix
from retrofit.errors import DataError

ABSTAINED = ("unexplained",)


def class_truth_from_labels(
    concept_labels: torch.Tensor, labels: torch.Tensor, num_classes: int
) -> torch.Tensor:
    """(C, K) bool: concepts shown by at least half of each class's images."""
    concept_labels = torch.as_tensor(concept_labels)
    labels = torch.as_tensor(labels).long()
    if concept_labels.ndim != 2 or concept_labels.shape[0] != labels.shape[0]:
        raise DataError(
            f"concept labels must be (N, K) with one row per image (N = {labels.shape[0]}), got "
            f"shape {tuple(concept_labels.shape)}."
        )
    onehot = torch.nn.functional.one_hot(labels, num_classes).float()
    counts = onehot.sum(dim=0).clamp_min(1)
    return (onehot.T @ concept_labels.float()) / counts[:, None] >= 0.5


def _normalise(name: str) -> str:
    return " ".join(str(name).replace("_", " ").lower().split())


def explanation_truth(
    weight: torch.Tensor,
    names: dict[tuple[int, int], tuple[str, str]],
    class_truth: torch.Tensor,
    concept_names: Sequence[str],
    class_names: Sequence[str],
    activations: torch.Tensor | None = None,
    concept_labels: torch.Tensor | None = None,
    min_auc: float = MIN_AUC,
) -> dict[str, Any]:
    """Truth of one explanation. `names` maps each (class, feature) pair to (name, status);
    `activations` (N, F) with `concept_labels` (N, K) of the same images enable grounding."""
    weight = weight.detach().float().cpu()
    num_classes = weight.shape[0]
    class_truth = torch.as_tensor(class_truth).bool()
    if class_truth.shape != (num_classes, len(concept_names)):
        raise DataError(
            f"The class–concept matrix must be ({num_classes} classes, {len(concept_names)} "
            f"concepts), got shape {tuple(class_truth.shape)}."
        )
    column = {_normalise(n): k for k, n in enumerate(concept_names)}
    shown = {_normalise(name) for name, _ in names.values()} - set(ABSTAINED)
    if shown and not shown & set(column):  # every name abstaining is an answer, not a mismatch
        raise DataError(
            "None of the explanation's concept names is among the ground-truth concepts "
            f"(e.g. {sorted(shown)[:3]} vs {list(concept_names)[:3]}): name the features with a "
            "vocabulary that contains the annotated concepts."
        )
    auc = None
    if activations is not None and concept_labels is not None:
        if concept_labels.shape != (activations.shape[0], len(concept_names)):
            raise DataError(
                f"concept labels must be ({activations.shape[0]} images, {len(concept_names)} "
                f"concepts), got shape {tuple(concept_labels.shape)}."
            )
        auc = auc_matrix(activations, concept_labels.bool())
    per_class, named_total, correct_total, positive_total = [], 0, 0, 0
    for c in range(num_classes):
        truth = set(torch.nonzero(class_truth[c]).flatten().tolist())
        used = [j for j in torch.nonzero(weight[c] > 0).flatten().tolist()]
        shown_names, correct_concepts, correct = [], set(), 0
        for j in used:
            name, status = names.get((c, j), (f"feature_{j}", "unnamed"))
            if status in ABSTAINED:
                continue
            shown_names.append(_normalise(name))
            k = column.get(_normalise(name))
            grounded = auc is None or (k is not None and float(auc[j, k]) >= min_auc)
            if k in truth and grounded:
                correct += 1
                correct_concepts.add(k)
        named = len(shown_names)
        per_class.append(
            {
                "class": class_names[c],
                "positive": len(used),
                "named": named,
                "precision": correct / named if named else None,
                "recall": len(correct_concepts) / len(truth) if truth else None,
                "distinct": len(set(shown_names)) / named if named else None,
                "names": shown_names,
                "truth": [concept_names[k] for k in sorted(truth)],
            }
        )
        named_total += named
        correct_total += correct
        positive_total += len(used)

    def mean(key: str) -> float | None:
        values = [row[key] for row in per_class if row[key] is not None]
        return sum(values) / len(values) if values else None

    return {
        "precision": correct_total / named_total if named_total else None,
        "recall": mean("recall"),
        "distinct": mean("distinct"),
        "coverage": named_total / positive_total if positive_total else None,
        "pairs": positive_total,
        "grounded": auc is not None,
        "min_auc": min_auc,
        "per_class": per_class,
    }


def model_names(imodel: Any, conditional: bool = True) -> dict[tuple[int, int], tuple[str, str]]:
    """(name, status) of every used pair: the pair names, or the features' global names."""
    weight = imodel.head.weight.detach().cpu()
    out = {}
    for c, j in torch.nonzero(weight).tolist():
        pair = imodel.pair_concepts.get((c, j)) if conditional else None
        if pair:
            out[(c, j)] = (pair["concept"], pair.get("status", "explained"))
        else:
            out[(c, j)] = (imodel.feature_name(j), "global")
    return out


def truth_check(
    imodel: Any,
    z: torch.Tensor,
    labels: torch.Tensor,
    attributes: torch.Tensor | None,
    concept_labels: torch.Tensor | None,
    concept_names: Sequence[str] | None,
    explicit: bool = True,
) -> dict[str, Any]:
    """The truth section of a check report: pair names and global names side by side, or a
    one-line reason why it was skipped (never a number made up without ground truth).
    Ground truth the user passed (`explicit`) that shares no concept with the names is an
    error; ground truth found on the dataset is then skipped with the reason."""
    if attributes is None and concept_labels is None:
        return {"skipped": "no ground truth: pass concept_labels (N, K) or attributes (C, K)"}
    if concept_names is None:
        return {"skipped": "no concept_names for the ground-truth columns"}
    if not imodel.pair_concepts and not any(imodel.concepts):
        return {"skipped": "the features have no concept names (convert with concepts=...)"}
    if concept_labels is not None:
        concept_labels = torch.as_tensor(concept_labels).bool()
        if concept_labels.shape != (len(labels), len(concept_names)):
            raise DataError(
                f"concept_labels must be ({len(labels)} images, {len(concept_names)} concepts) "
                f"in loader order, got shape {tuple(concept_labels.shape)}."
            )
    truth = (
        torch.as_tensor(attributes).bool()
        if attributes is not None
        else class_truth_from_labels(concept_labels, labels, imodel.num_classes)
    )
    out: dict[str, Any] = {}
    for kind, conditional in (("pair", True), ("global", False)):
        try:
            out[kind] = explanation_truth(
                imodel.head.weight,
                model_names(imodel, conditional),
                truth,
                concept_names,
                imodel.class_names,
                activations=z if concept_labels is not None else None,
                concept_labels=concept_labels,
            )
        except DataError as error:
            if explicit:
                raise
            return {"skipped": str(error)}
    return out
