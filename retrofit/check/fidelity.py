"""Fidelity: does the interpretable model still decide like the original?

Accuracy alone hides whether the new head reproduces the original's decisions; agreement
(FLINT's fidelity) and agreement on the original's mistakes show whether it imitates the model
rather than merely solving the task.
"""

from __future__ import annotations

import torch

from retrofit.errors import DataError


def fidelity(
    logits: torch.Tensor,
    labels: torch.Tensor,
    reference_logits: torch.Tensor | None = None,
) -> dict[str, float | int | None]:
    """Accuracy of both models, top-1 agreement and agreement on the reference's mistakes.

    `agreement_on_reference_mistakes` is the share of images the reference gets wrong on which
    the interpretable model predicts the same wrong class (None when the reference makes none).
    """
    if logits.ndim != 2 or labels.shape != (logits.shape[0],):
        raise DataError(
            f"logits must be (N, C) and labels (N,), got {tuple(logits.shape)} and "
            f"{tuple(labels.shape)}."
        )
    if reference_logits is not None and reference_logits.shape != logits.shape:
        raise DataError(
            f"the reference's logits {tuple(reference_logits.shape)} do not match the "
            f"interpretable model's {tuple(logits.shape)}; pass the model it was converted from."
        )
    return fidelity_of_predictions(
        logits.argmax(dim=1),
        labels,
        reference_logits.argmax(dim=1) if reference_logits is not None else None,
    )


def fidelity_of_predictions(
    predicted: torch.Tensor, labels: torch.Tensor, reference: torch.Tensor | None = None
) -> dict[str, float | int | None]:
    """`fidelity` from the per-image top-1 classes alone (what check keeps, not the logits)."""
    labels = labels.to(predicted.device)
    result: dict[str, float | int | None] = {
        "n_images": int(labels.numel()),
        "accuracy": float((predicted == labels).float().mean()),
        "reference_accuracy": None,
        "agreement": None,
        "accuracy_drop": None,
        "n_reference_mistakes": None,
        "agreement_on_reference_mistakes": None,
    }
    if reference is None:
        return result
    reference = reference.to(predicted.device)
    mistakes = reference != labels
    result["reference_accuracy"] = float((reference == labels).float().mean())
    result["agreement"] = float((predicted == reference).float().mean())
    result["accuracy_drop"] = result["reference_accuracy"] - result["accuracy"]
    result["n_reference_mistakes"] = int(mistakes.sum())
    if mistakes.any():
        result["agreement_on_reference_mistakes"] = float(
            (predicted[mistakes] == reference[mistakes]).float().mean()
        )
    return result
