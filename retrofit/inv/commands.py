"""What `retrofit reveal` and `retrofit reveal-import` do, callable from Python too."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from torch import nn

from retrofit.cache import atomic_write_bytes
from retrofit.errors import ConfigError
from retrofit.inv.answers import read_answers, score_answers
from retrofit.inv.explanation import layer_explanation
from retrofit.inv.maps import cluster_maps
from retrofit.inv.reveal import reveal_curves
from retrofit.web.game import read_game_manifest, write_reveal_game
from retrofit.web.layers_report import layer_explanation_section, write_layer_report


def normalisation_of(transform: Any) -> tuple[Sequence[float] | None, Sequence[float] | None]:
    """(mean, std) of the Normalize inside a torchvision transform, or (None, None)."""
    for step in getattr(transform, "transforms", [transform]):
        if type(step).__name__ == "Normalize":
            return tuple(step.mean), tuple(step.std)
    return None, None


def _check_free(paths: Sequence[Path], overwrite: bool) -> None:
    taken = [str(p) for p in paths if p.exists()]
    if taken and not overwrite:
        raise ConfigError(f"{taken} already exist; pass --overwrite to replace them.")


def make_reveal_game(
    model: nn.Module,
    data: Any,
    out: str | os.PathLike,
    transform: Any = None,
    images: int = 16,
    layers: Sequence[str] | None = None,
    max_maps: int | None = None,
    seed: int = 0,
    overwrite: bool = False,
    progress: bool = True,
) -> tuple[Path, Path]:
    """Cluster maps of the first `images` images, the game page at `out` and, next to it, a
    JSON summary of the maps and their reveal curves (OUT with suffix .json)."""
    out = Path(out)
    summary = out.with_suffix(".json")
    _check_free([out, summary], overwrite)
    result = cluster_maps(
        model,
        data,
        layers=layers,
        seed=seed,
        max_images=images,
        class_names=getattr(model, "class_names", None),
        progress=progress,
    )
    mean, std = normalisation_of(transform)
    curves = reveal_curves(model, result, seed=seed)
    write_reveal_game(result, out, mean, std, max_maps=max_maps, seed=seed)
    atomic_write_bytes(
        summary, json.dumps({**result.to_dict(), "reveal": curves}, indent=1).encode()
    )
    return out, summary


def import_reveal_answers(
    answers: str | os.PathLike,
    game: str | os.PathLike | None = None,
    out: str | os.PathLike | None = None,
    html: str | os.PathLike | None = None,
    encoder: Any = None,
    overwrite: bool = False,
) -> tuple[dict[str, Any], Path, Path]:
    """Labels from the game's answers, written as JSON (default: ANSWERS.labels.json) with the
    per-class, per-layer explanation, and as an HTML page (default: ANSWERS.labels.html).
    Nothing is written when the answers cannot be imported."""
    answers = Path(answers)
    out = Path(out) if out is not None else answers.with_suffix(".labels.json")
    html = Path(html) if html is not None else answers.with_suffix(".labels.html")
    _check_free([out, html], overwrite)
    manifest = read_game_manifest(game) if game is not None else None
    scored = score_answers(read_answers(answers, manifest), encoder)
    result = {**scored, "by_layer": layer_explanation(scored["labels"])}
    atomic_write_bytes(out, json.dumps(result, indent=1).encode())
    write_layer_report(html, layer_explanation_section(result["by_layer"]))
    return result, out, html
