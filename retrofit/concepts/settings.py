"""What `convert(..., concepts=...)` may be, parsed into ConceptSettings, and its JSON form.

Apart from naming so that configs can validate and store concepts without importing the
naming pipeline: this module imports the encoders, the vocabulary and the evidence rules only.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from typing import Any

import torch

from retrofit.concepts.encoders import (
    ConceptEncoder,
    encoder_backend,
    unknown_backend,
    unknown_backend_error,
)
from retrofit.concepts.evidence import DEFAULT_Q, check_procedure, check_q
from retrofit.concepts.scoring import check_method
from retrofit.concepts.stored import (
    SUMMARY_KEY,
    ConceptsNotRestoredWarning,
    ConceptsSummary,
    _as_json,
    _json_data,
    _not_plain,
    _plain_spec,
    _unusable,
)
from retrofit.concepts.vocabulary import Vocabulary
from retrofit.errors import ConfigError


@dataclass
class ConceptSettings:
    """What `convert(..., concepts=...)` asked for, in one validated place.

    encoder + vocabulary: CLIP naming (either may be None for its default); labels (N, K) +
    label_names: annotation naming by Δ-contrast. `align=True` then fine-tunes the bottleneck
    towards the names (needs linear_mix=True). `q` is the false-discovery rate every name is
    accepted under (`procedure` "bh": Benjamini–Hochberg, "by": Benjamini–Yekutieli), also
    the level at which words count as shown on the images. `options` go to `name_features`.
    """

    encoder: ConceptEncoder | str | None = None
    vocabulary: Vocabulary | Sequence[str] | str | os.PathLike | None = None
    labels: torch.Tensor | None = None
    label_names: Sequence[str] | None = None
    method: str | None = None
    top_k: int = 5
    align: bool = False
    max_accuracy_drop: float = 0.01
    q: float = DEFAULT_Q
    procedure: str = "bh"
    input_mean: Sequence[float] | None = None
    input_std: Sequence[float] | None = None
    options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if isinstance(self.encoder, str) and encoder_backend(self.encoder) is None:
            raise unknown_backend_error(self.encoder, self.encoder.partition(":")[0])
        if isinstance(self.vocabulary, str) and unknown_backend(self.vocabulary):
            raise unknown_backend_error(self.vocabulary, unknown_backend(self.vocabulary))
        if self.method is not None:
            check_method(self.method)
        if self.labels is not None and self.method not in (None, "delta"):
            raise ConfigError("Concept labels are scored with method='delta' only.")
        if isinstance(self.top_k, bool) or not isinstance(self.top_k, int) or self.top_k < 1:
            raise ConfigError(f"top_k must be a positive integer, got {self.top_k!r}.")
        check_q(self.q)
        check_procedure(self.procedure)
        if not 0 <= self.max_accuracy_drop < 1:
            raise ConfigError(
                f"max_accuracy_drop must be in [0, 1), got {self.max_accuracy_drop!r}."
            )

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form for a stored config (labels are summarised by their shape)."""
        encoder = self.encoder.spec if isinstance(self.encoder, ConceptEncoder) else self.encoder
        vocab = self.vocabulary
        if isinstance(vocab, Vocabulary):
            vocab = list(vocab.concepts)
        elif isinstance(vocab, os.PathLike):
            vocab = os.fspath(vocab)
        elif vocab is not None and not isinstance(vocab, str):
            vocab = list(vocab)
        return {
            "encoder": encoder,
            "vocabulary": vocab,
            "labels": None if self.labels is None else list(self.labels.shape),
            "label_names": None if self.label_names is None else list(self.label_names),
            "method": self.method,
            "top_k": self.top_k,
            "align": self.align,
            "max_accuracy_drop": self.max_accuracy_drop,
            "q": self.q,
            "procedure": self.procedure,
            "options": dict(self.options),
        }


def _is_encoder_spec(text: str) -> bool:
    """A spec of a registered encoder backend ("tiny", "open_clip:...", "hf:...", ...)."""
    return encoder_backend(text) is not None


def parse_concepts(value: Any) -> ConceptSettings | None:
    """ConceptSettings from what a user passes as `concepts=`:
    None; a ConceptEncoder or encoder spec ("tiny", "open_clip:...", "hf:..."); a vocabulary
    (Vocabulary, list of words, text file, list name like "curated+general"); a (N, K) label
    tensor, or (labels, names); a dict of ConceptSettings fields; or ConceptSettings."""
    if value is None or isinstance(value, ConceptSettings):
        return value
    if isinstance(value, ConceptsSummary):
        raise value.refuse()
    if isinstance(value, ConceptEncoder):
        return ConceptSettings(encoder=value)
    if isinstance(value, str) and _is_encoder_spec(value):
        return ConceptSettings(encoder=value)
    if isinstance(value, str) and unknown_backend(value):
        raise unknown_backend_error(value, unknown_backend(value))
    if isinstance(value, torch.Tensor):
        return ConceptSettings(labels=value)
    if (
        isinstance(value, tuple)
        and len(value) == 2
        and isinstance(value[0], torch.Tensor)
        and not isinstance(value[1], torch.Tensor)
    ):
        return ConceptSettings(labels=value[0], label_names=list(value[1]))
    if isinstance(value, dict):
        known = {f.name for f in fields(ConceptSettings)}
        unknown = sorted(set(value) - known)
        if unknown:
            raise ConfigError(f"Unknown concepts settings {unknown}; known are {sorted(known)}.")
        return ConceptSettings(**value)
    if isinstance(value, (Vocabulary, str, os.PathLike, list, tuple)):
        return ConceptSettings(vocabulary=value)
    raise ConfigError(
        f"concepts= got a {type(value).__name__}; pass an encoder (or spec like 'hf:DIR'), a "
        "vocabulary (list of words, text file), concept labels (N, K), or a dict of settings."
    )


def concepts_to_json(value: Any) -> Any:
    """The JSON form of a `concepts=` value: itself when plain, else a marked summary."""
    if isinstance(value, ConceptsSummary):
        return value.to_dict()
    if value is None or _plain_spec(value):
        return _as_json(value)
    settings = parse_concepts(value)
    reason = _not_plain(settings)
    if reason is None:
        return _as_json(value if _json_data(value) else settings.to_dict())
    return ConceptsSummary(reason, settings.to_dict()).to_dict()


def concepts_from_json(value: Any) -> Any:
    """The `concepts=` value a JSON form stands for; a summary comes back as ConceptsSummary
    (with a ConceptsNotRestoredWarning)."""
    if isinstance(value, dict) and SUMMARY_KEY in value:
        summary = ConceptsSummary(str(value[SUMMARY_KEY]), dict(value.get("settings") or {}))
    elif isinstance(value, dict) and value.get("labels") is not None:
        # written before summaries were marked: labels were stored as their shape
        summary = ConceptsSummary("a concept-label tensor", dict(value))
    else:
        reason = _unusable(value)
        if reason is None:
            return value
        summary = ConceptsSummary(
            reason, dict(value) if isinstance(value, dict) else {"encoder": value}, value
        )
    warnings.warn(
        f"The stored concepts were {summary.reason}; only a summary was kept, so features cannot "
        "be named again from this config without passing concepts= again.",
        ConceptsNotRestoredWarning,
        stacklevel=3,
    )
    return summary
