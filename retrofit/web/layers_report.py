"""INV's global explanation by layer as a self-contained HTML section or page: per class, the
label scores in each layer with the depth trend, and sample images' cluster maps per layer."""

from __future__ import annotations

import html
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from retrofit.concepts.encoders import to_unit_range
from retrofit.inv.maps import ClusterMaps
from retrofit.io.files import atomic_write_bytes
from retrofit.web.game import png_data_uri

STYLE = """<style>
.inv table { border-collapse: collapse; margin: .5rem 0 1.5rem; }
.inv th, .inv td { border: 1px solid #ccc; padding: .2rem .5rem; text-align: right; }
.inv td.label, .inv th.label { text-align: left; }
.inv figure { display: inline-block; margin: .2rem; text-align: center; font-size: .8rem; }
.inv img { width: 96px; height: 96px; image-rendering: pixelated; }
</style>"""


def _overlay(image: torch.Tensor, saliency: torch.Tensor) -> str:
    """The image dimmed where the map is low."""
    return png_data_uri(image * (0.25 + 0.75 * saliency[None]))


def _class_table(layers: list[str], entry: dict[str, Any], top: int) -> str:
    head = "".join(f"<th>{html.escape(layer)}</th>" for layer in layers)
    rows = []
    for row in entry["labels"][:top]:
        cells = "".join(f"<td>{v:.2f}</td>" for v in row["by_layer"])
        trend = "deeper" if row["slope"] > 0 else "shallower" if row["slope"] < 0 else "flat"
        rows.append(
            f'<tr><td class="label">{html.escape(row["label"])}</td>{cells}'
            f"<td>{row['total']:.2f}</td><td>{row['slope']:+.3f} ({trend})</td></tr>"
        )
    return (
        f'<table><tr><th class="label">label</th>{head}<th>total</th><th>depth slope</th></tr>'
        + "".join(rows)
        + "</table>"
    )


def layer_explanation_section(
    explanation: dict[str, Any],
    result: ClusterMaps | None = None,
    sample_images: int = 3,
    top_labels: int = 8,
    input_mean: Sequence[float] | None = None,
    input_std: Sequence[float] | None = None,
) -> str:
    """An HTML fragment: sample images' cluster maps per layer, then one table per class."""
    parts = ['<section class="inv" id="inv-layers"><h2>Concepts by layer (INV)</h2>']
    if result is not None and result.maps:
        images = to_unit_range(result.images, input_mean, input_std)
        parts.append("<h3>Cluster maps of sample images</h3>")
        for image in sorted({m.image for m in result.maps})[:sample_images]:
            name = html.escape(result.class_name(int(result.predictions[image])))
            parts.append(f"<h4>image {image} (predicted {name})</h4>")
            for layer in result.layers:
                figures = "".join(
                    f'<figure><img alt="{html.escape(m.id)}" src="{_overlay(images[image], m.saliency)}">'
                    f"<figcaption>{html.escape(layer)} #{m.rank} ({m.weight:.2f})</figcaption></figure>"
                    for m in result.of_image(image, layer)
                )
                parts.append(f"<div>{figures}</div>")
    parts.append("<h3>Label scores per class and layer</h3>")
    for name, entry in explanation["classes"].items():
        parts.append(f"<h4>{html.escape(name)} ({entry['n_images']} images)</h4>")
        parts.append(_class_table(explanation["layers"], entry, top_labels))
    parts.append("</section>")
    return "\n".join(parts)


def write_layer_report(path: str | os.PathLike, section: str) -> Path:
    """A standalone page around `layer_explanation_section` (atomic write)."""
    page = (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        f"<title>retrofit: concepts by layer</title>{STYLE}</head><body>{section}</body></html>"
    )
    path = Path(path)
    atomic_write_bytes(path, page.encode("utf-8"))
    return path
