"""How sure the names are: naming's own evidence, as a check metric with a threshold.

The figures come from the held-out tests naming ran (retrofit.concepts.evidence), not from the
check's images: with no ground truth they are the only honest estimate of how many shown names
are true. `retrofit check --min-name-precision 0.9` fails a model whose estimate is lower, or
that has no tested names at all.
"""

from __future__ import annotations

from typing import Any

from retrofit.check.registry import MetricInputs, register_metric


@register_metric(
    "names",
    title="How sure the names are",
    thresholds={"min_name_precision": ("estimated_precision", ">=")},
    meanings={
        "estimated_precision": "Storey's estimate of the share of shown names that are true",
        "named": "names that held on held-out images, under FDR control",
        "tested": "candidate names tested",
        "q": "the false-discovery rate names were accepted under",
        "words_shown": "share of the vocabulary the encoder detectably shows on the images",
        "encoder_class_accuracy": "held-out accuracy of the encoder's embeddings on the classes",
    },
)
def names(inputs: MetricInputs) -> dict[str, Any]:
    reliability = inputs.imodel.naming_reliability
    if not reliability:
        return {
            "skipped": "no tested names: convert with concepts=... (older exports lack the tests)"
        }
    part = reliability.get("pairs") or reliability.get("features") or {}
    words = reliability.get("vocabulary") or {}
    fit = reliability.get("encoder_fit") or {}
    return {
        "estimated_precision": reliability.get("estimated_precision"),
        "named": part.get("named"),
        "tested": part.get("tested"),
        "q": reliability.get("q"),
        "words_shown": words.get("share"),
        "encoder_class_accuracy": fit.get("class_accuracy"),
    }
