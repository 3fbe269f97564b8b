"""What `retrofit reveal` and `retrofit reveal-import` do, callable from Python too."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from torch import nn

from retrofit.concepts.guard import resolve_encoder
from retrofit.errors import ConfigError
from retrofit.inv.answers import read_answers, score_answers
from retrofit.inv.explanation import auto_label_records, layer_explanation
from retrofit.inv.labels import auto_labels
from retrofit.inv.maps import cluster_maps
from retrofit.inv.reveal import reveal_curves
from retrofit.io.files import atomic_write_bytes
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
    concepts: Any = None,
    encoder: Any = None,
    overwrite: bool = False,
    progress: bool = True,
) -> tuple[Path, Path]:
    """Cluster maps of the first `images` images, the game page at `out` and, next to it, a
    JSON summary of the maps and their reveal curves (OUT with suffix .json). With `concepts`
    (a vocabulary as concept naming takes it) the maps also get automatic labels, and their
    explanation by layer goes into the summary and OUT-layers.html. `encoder` names them
    (default: the tiny CLIP, on the synthetic world only; retrofit.concepts.guard)."""
    out = Path(out)
    summary = out.with_suffix(".json")
    report = out.with_name(out.stem + "-layers.html")
    _check_free([out, summary, *([report] if concepts is not None else [])], overwrite)
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
    content = {**result.to_dict(), "reveal": curves}
    section = None
    if concepts is not None:
        labels = auto_labels(result, concepts, resolve_encoder(encoder, data), mean, std)
        explanation = layer_explanation(auto_label_records(result, labels))
        content.update(auto_labels=labels, by_layer=explanation)
        section = layer_explanation_section(explanation, result, input_mean=mean, input_std=std)
    write_reveal_game(result, out, mean, std, max_maps=max_maps, seed=seed)
    atomic_write_bytes(summary, json.dumps(content, indent=1).encode())
    if section is not None:
        write_layer_report(report, section)
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
