"""INV's reveal game as one self-contained HTML file (images as data URIs, no server).

A person sees each cluster map revealed in six steps (its top 2 .. 30 % of pixels, the rest
grey), guesses the class and types what they see; the page offers the answers as JSON and CSV
downloads for `retrofit reveal-import`.
"""

from __future__ import annotations

import base64
import io
import json
import os
import random
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from retrofit.concepts.encoders import to_unit_range
from retrofit.errors import ConfigError
from retrofit.inv.maps import ClusterMaps
from retrofit.inv.reveal import REVEAL_FRACTIONS, reveal_masks
from retrofit.io.files import atomic_write_bytes

GAME_FORMAT = "retrofit-reveal-game"
PLACEHOLDER = "/*GAME_DATA*/"
HIDDEN_GREY = 0.5


def png_data_uri(image: torch.Tensor) -> str:
    """A (3, H, W) image in [0, 1] as a PNG data URI."""
    array = (image.clamp(0, 1).permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def reveal_steps(image: torch.Tensor, saliency: torch.Tensor) -> list[str]:
    """The six reveal steps of one map as PNG data URIs (hidden pixels grey)."""
    return [
        png_data_uri(torch.where(mask[None], image, torch.full_like(image, HIDDEN_GREY)))
        for mask in reveal_masks(saliency)
    ]


def game_data(
    result: ClusterMaps,
    input_mean: Sequence[float] | None = None,
    input_std: Sequence[float] | None = None,
    max_maps: int | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """The game's manifest: class names, reveal fractions and every map with its steps, in a
    seeded shuffled order (so a player does not see one image's maps in a row)."""
    if not result.maps:
        raise ConfigError("There are no cluster maps to play; cluster more images or layers.")
    images = to_unit_range(result.images, input_mean, input_std)
    maps = list(result.maps)
    random.Random(seed).shuffle(maps)
    if max_maps is not None:
        maps = maps[:max_maps]
    n_classes = max(len(result.class_names or []), int(result.predictions.max()) + 1)
    return {
        "format": GAME_FORMAT,
        "version": 1,
        "classes": [result.class_name(c) for c in range(n_classes)],
        "fractions": list(REVEAL_FRACTIONS),
        "maps": [
            {
                **m.to_dict(),
                "predicted": int(result.predictions[m.image]),
                "predicted_name": result.class_name(int(result.predictions[m.image])),
                "steps": reveal_steps(images[m.image], m.saliency),
            }
            for m in maps
        ],
    }


def render_game(data: dict[str, Any]) -> str:
    template = (resources.files("retrofit.web") / "reveal_game.html").read_text(encoding="utf-8")
    payload = json.dumps(data).replace("</", "<\\/")
    return template.replace(PLACEHOLDER, payload)


def write_reveal_game(
    result: ClusterMaps,
    path: str | os.PathLike,
    input_mean: Sequence[float] | None = None,
    input_std: Sequence[float] | None = None,
    max_maps: int | None = None,
    seed: int = 0,
) -> Path:
    """Write the game page to `path` (atomically) and return the path."""
    html = render_game(game_data(result, input_mean, input_std, max_maps, seed))
    path = Path(path)
    atomic_write_bytes(path, html.encode("utf-8"))
    return path


def read_game_manifest(path: str | os.PathLike) -> dict[str, Any]:
    """The manifest embedded in a game page (maps without their images)."""
    if not Path(path).is_file():
        raise ConfigError(f"The game page {path} does not exist.")
    text = Path(path).read_text(encoding="utf-8")
    start = text.find('<script id="game-data" type="application/json">')
    end = text.find("</script>", start)
    if start < 0 or end < 0:
        raise ConfigError(f"{path} is not a reveal game page written by retrofit.")
    data = json.loads(text[text.index(">", start) + 1 : end].replace("<\\/", "</"))
    if data.get("format") != GAME_FORMAT:
        raise ConfigError(f"{path} is not a reveal game page written by retrofit.")
    for entry in data["maps"]:
        entry.pop("steps", None)
    return data
