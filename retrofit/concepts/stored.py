"""How a config's `concepts=` setting is written to JSON and read back.

Plain data round-trips exactly: an encoder spec string, a vocabulary (list of words, file
path, list name), a dict of ConceptSettings fields (with plain values). What JSON cannot hold
(an encoder object, a concept-label tensor, a Vocabulary with its own prompt templates) is
stored as a summary under an explicit marker, and read back as a `ConceptsSummary` that says
what is missing: a config holding one refuses to convert until concepts= is passed again.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any

from retrofit.errors import ConfigError

# the key that marks a stored summary (no ConceptSettings field has this name)
SUMMARY_KEY = "summary_only"


class ConceptsNotRestoredWarning(UserWarning):
    """A stored config's concepts were only summarised; naming cannot be re-run from them."""


@dataclass(frozen=True)
class ConceptsSummary:
    """What was stored of concepts that JSON cannot hold: why, and the settings as a summary."""

    reason: str
    settings: dict[str, Any] = field(default_factory=dict)
    # plain settings this session could not use (their encoder plugin is not imported): they
    # are written back unchanged, so a session with the plugin reads them in full again
    stored: Any = None

    def to_dict(self) -> Any:
        if self.stored is not None:
            return self.stored
        return {SUMMARY_KEY: self.reason, "settings": dict(self.settings)}

    def refuse(self) -> ConfigError:
        return ConfigError(
            f"This config's concepts were {self.reason}, which a stored config cannot hold (only "
            "a summary was kept). Pass them again: convert(model, loader, config=config, "
            "concepts=...)."
        )


def _unusable(value: Any) -> str | None:
    """Why stored concepts cannot be used in this session: their encoder backend is not
    registered (its plugin is not imported). Reading a config or an export does not fail on
    that; malformed values still do (RetrofitConfig validates them)."""
    from retrofit.concepts.encoders import unknown_backend

    spec = value.get("encoder") if isinstance(value, dict) else value
    if isinstance(spec, str) and unknown_backend(spec):
        return f"an encoder this session has not registered ({spec!r}; import its plugin)"
    return None


def _plain_spec(value: Any) -> bool:
    """A string, path or list of words: what the user passed is itself the stored form."""
    if isinstance(value, (str, os.PathLike)):
        return True
    return isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value)


def _not_plain(settings: Any) -> str | None:
    """Why these ConceptSettings cannot be stored exactly; None when they can."""
    from retrofit.concepts.encoders import ConceptEncoder
    from retrofit.concepts.vocabulary import DEFAULT_TEMPLATES, Vocabulary

    if isinstance(settings.encoder, ConceptEncoder):
        return f"an encoder object ({settings.encoder.spec})"
    if settings.labels is not None:
        return "a concept-label tensor"
    vocabulary = settings.vocabulary
    if isinstance(vocabulary, Vocabulary) and tuple(vocabulary.templates) != DEFAULT_TEMPLATES:
        return "a Vocabulary with its own prompt templates"
    if not _json_data(settings.options):
        return "options that are not JSON data"
    return None


def _json_data(value: Any) -> bool:
    try:
        json.dumps(_as_json(value), allow_nan=False)
    except (TypeError, ValueError):
        return False
    return True


def _as_json(value: Any) -> Any:
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, tuple):
        return [_as_json(v) for v in value]
    if isinstance(value, list):
        return [_as_json(v) for v in value]
    if isinstance(value, dict):
        return {k: _as_json(v) for k, v in value.items()}
    return value
