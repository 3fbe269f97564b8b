"""The edits file: a JSON document of edits for one model, as the browser editor exports it.

    {"format": "retrofit-edits", "version": 1, "model_fingerprint": "<head fingerprint>",
     "edits": [{"op": "forbid", "class": 3, "feature": 7}, ...]}

The fingerprint (retrofit.editing.apply.head_fingerprint) names the model the edits were made on, so a
file is never applied to a different model by mistake.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from retrofit.errors import EditError

FORMAT = "retrofit-edits"
VERSION = 1


def edits_document(fingerprint: str, edits: list[dict[str, Any]]) -> dict[str, Any]:
    """The JSON document for `edits` made on the model with head fingerprint `fingerprint`."""
    return {"format": FORMAT, "version": VERSION, "model_fingerprint": fingerprint, "edits": edits}


def read_edits_file(path: str | os.PathLike) -> dict[str, Any]:
    """Read and validate an edits file; every problem is an EditError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise EditError(f"edits file {path} does not exist.")
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise EditError(f"edits file {path} is not valid JSON: {error}.") from error
    return check_edits_document(document, str(path))


def check_edits_document(document: Any, where: str = "the edits document") -> dict[str, Any]:
    """The document itself when it has the edits-file structure, else an EditError."""
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        raise EditError(
            f"{where} is not a retrofit edits file (expected a JSON object with "
            f'"format": "{FORMAT}"); export one from the report\'s editor.'
        )
    if document.get("version") != VERSION:
        raise EditError(
            f"{where} has version {document.get('version')!r}; this retrofit reads version "
            f"{VERSION}."
        )
    if not isinstance(document.get("model_fingerprint"), str):
        raise EditError(f"{where} misses the 'model_fingerprint' of the model it edits.")
    edits = document.get("edits")
    if not isinstance(edits, list) or not edits:
        raise EditError(f"{where} needs a non-empty 'edits' list.")
    return document


def check_fingerprint(document: dict[str, Any], fingerprint: str, where: str) -> None:
    """Refuse edits made on another model."""
    if document["model_fingerprint"] != fingerprint:
        raise EditError(
            f"{where} was made for the model with fingerprint {document['model_fingerprint']}, "
            f"but this export's is {fingerprint}; export the edits again from this model's "
            "report."
        )
