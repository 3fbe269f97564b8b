"""The README.md model card of an export: hub metadata, headline numbers, the global explanation."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from retrofit.concepts.evidence import reliability_sentences

if (
    TYPE_CHECKING
):  # retrofit.model.interpretable imports the export lazily; a runtime import would be circular
    from retrofit.model.interpretable import InterpretableModel

_METRICS = (
    ("accuracy", "accuracy"),
    ("original_accuracy", "original model accuracy"),
    ("agreement", "top-1 agreement with the original"),
)


def hub_base_model(base_model: dict[str, Any]) -> str | None:
    """The Hugging Face Hub id of the base model, when it has one (HF hub ids and timm models)."""
    build = base_model.get("build") or {}
    name = build.get("name")
    if build.get("family") == "transformers" and name and not Path(name).exists():
        return name if "/" in name else None
    if build.get("family") == "timm" and name and "." in name and ":" not in name:
        return f"timm/{name}"
    return None


_MARKDOWN = str.maketrans({c: "\\" + c for c in "\\`*[]|~"})
_HTML = str.maketrans({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;"})
_EDGE_UNDERSCORE = re.compile(r"(?<![A-Za-z0-9])_|_(?![A-Za-z0-9])")  # class_0 stays as is


def _text(text: Any) -> str:
    """`text` (a class or concept name) as inert Markdown on one line: HTML and Markdown
    syntax in it are escaped, so it reads as written and cannot add markup or break a table."""
    plain = " ".join(str(text).split()).translate(_MARKDOWN)
    return _EDGE_UNDERSCORE.sub(r"\\_", plain).translate(_HTML)


def _cell(text: Any) -> str:
    return _text(text)


def _code(text: Any) -> str:
    """`text` inside a Markdown code span (backticks and line breaks cannot end it)."""
    return "`" + " ".join(str(text).split()).replace("`", "'").replace("|", "\\|") + "`"


def loading_needs_trust(base_model: dict[str, Any], files: dict[str, Any]) -> bool:
    """Whether retrofit.load of the export needs trust_remote_code=True: its base model spec
    would run code (a `python:` spec, custom HF code) or read files outside the export."""
    from retrofit.errors import RetrofitError, UntrustedCodeError
    from retrofit.io.specs import ModelSpec
    from retrofit.io.trust import check_spec

    build = base_model.get("build")
    if not build:
        return False
    try:
        spec = ModelSpec.from_dict(build)
        check_spec(spec, False, pretrained="backbone.safetensors" not in files, where="export")
    except UntrustedCodeError:
        return True
    except RetrofitError:
        return False
    return False


def render_model_card(imodel: InterpretableModel, config: dict[str, Any]) -> str:
    """README.md text for an export whose retrofit_config.json content is `config`."""
    method = config["method"]
    base = config["base_model"]
    front = ["---", "library_name: retrofit"]
    hub_id = hub_base_model(base)
    if hub_id:
        front.append(f"base_model: {json.dumps(hub_id)}")
    front += ["tags:", "- interpretability", "- retrofit", f"- {method}", "---", ""]
    spec = (base.get("build") or {}).get("spec")
    source = _code(spec) if spec else f"A {_code(base['class'])} ({_text(base['family'])} model)"
    weights = imodel.head.weight
    nnz = int((weights != 0).sum())
    mixed = imodel.bottleneck.mix is not None
    what = (
        "features (each a learned linear mix of the channels"
        if mixed
        else "features (each one channel"
    )
    lines = [
        f"# Interpretable {_text(base['class'])} ({_text(method)}, retrofit)",
        "",
        f"{source} with its classification head replaced, post hoc, by a globally "
        f"interpretable one: {imodel.num_classes} classes read {imodel.n_features} {what} of "
        f"the backbone's layer {_code(base['layer_name'])}) through {nnz} non-zero weights "
        f"({nnz / max(1, imodel.num_classes):.1f} per class on average).",
        "",
    ]
    metrics = config.get("metrics") or {}
    if metrics:
        lines += [
            "## Results",
            "",
            "| split | " + " | ".join(label for _, label in _METRICS) + " |",
            "|---" * (len(_METRICS) + 1) + "|",
        ]
        for split, values in metrics.items():
            cells = [
                f"{values[key]:.4f}" if isinstance(values.get(key), (int, float)) else "-"
                for key, _ in _METRICS
            ]
            lines.append(f"| {_cell(split)} | " + " | ".join(cells) + " |")
        lines.append("")
    lines += _edit_lines(config.get("edits") or [])
    lines += [
        "## Global explanation",
        "",
        "Each class and the features it uses (+ raises its score, − lowers it), by concept name.",
        "",
        "| class | features |",
        "|---|---|",
    ]
    for name, features in imodel.global_explanation().items():
        parts = [("+" if f["sign"] > 0 else "−") + _text(f["name"]) for f in features]
        lines.append(f"| {_cell(name)} | {', '.join(parts) or '(none)'} |")
    reliability = ((config.get("stats") or {}).get("concepts") or {}).get("naming", {})
    sentences = reliability_sentences(reliability.get("reliability"))
    if sentences:
        lines += [
            "",
            "## How sure the names are",
            "",
            *sentences,
            "Every name is a claim tested on images not used to choose it; a feature or pair "
            'whose name did not hold reads "unexplained".',
        ]
    lines += [
        "",
        "## Features",
        "",
        "| feature | backbone index"
        + (" (where its mix started)" if mixed else "")
        + " | concept | score | held-out q |",
        "|---|---|---|---|---|",
    ]
    for feature in config["features"]:
        best = feature["concepts"][0] if feature["concepts"] else {}
        score = best.get("score")
        q_value = (best.get("held_out") or {}).get("q_value")
        lines.append(
            f"| {feature['feature']} | {feature['backbone_index']} | {_cell(feature['name'])} | "
            f"{f'{score:.3f}' if isinstance(score, (int, float)) else '-'} | "
            f"{f'{q_value:.2g}' if isinstance(q_value, (int, float)) else '-'} |"
        )
    needs_trust = loading_needs_trust(base, config.get("files") or {})
    trust = ", trust_remote_code=True" if needs_trust else ""
    usage = (
        [
            f"Loading rebuilds the backbone from its base model spec {_code(spec)}, which runs "
            "code on your machine (or reads files outside this folder), so `retrofit.load` needs "
            "`trust_remote_code=True` (CLI: `--trust-remote-code`): pass it only if you trust "
            "where this folder came from.",
            "",
        ]
        if needs_trust
        else []
    )
    lines += [
        "",
        "## Usage",
        "",
        *usage,
        "```python",
        "import retrofit",
        "",
        f'imodel = retrofit.load("path/to/this/folder"{trust})  # rebuilds the backbone, '
        "checks its fingerprint",
        "logits = imodel(images)",
        "for explanation in imodel.explain(images):",
        "    print(explanation)",
        "```",
        "",
        f"Made with retrofit {config['retrofit_version']} (seed {config['seed']}).",
        "",
    ]
    return "\n".join(front + lines)


def _edit_lines(records: list[dict[str, Any]]) -> list[str]:
    """A 'Human edits' section: when, what, and the figures before and after each edit."""
    if not records:
        return []
    lines = [
        "## Human edits",
        "",
        "This model was edited by a person after conversion (`retrofit.edit`); every edit is "
        "a constraint the head was re-solved under.",
        "",
        "| when | edits | train accuracy | train fidelity | previous model |",
        "|---|---|---|---|---|",
    ]
    for record in records:
        what = "; ".join(_edit_words(e) for e in record.get("edits", []))
        before = (record.get("before") or {}).get("train", {})
        after = (record.get("after") or {}).get("train", {})
        cells = [_before_after(before.get(key), after.get(key)) for key in ("accuracy", "fidelity")]
        lines.append(
            f"| {_cell(record.get('time', '-'))} | {_cell(what or '-')} | {cells[0]} | "
            f"{cells[1]} | {_code(str(record.get('previous_fingerprint', '-'))[:12])} |"
        )
    return lines + [""]


def _edit_words(edit: dict[str, Any]) -> str:
    target = " ".join(str(edit[key]) for key in ("class_name", "feature_name") if key in edit)
    tail = f" → {edit['name']}" if "name" in edit else ""
    tail += f" = {edit['count']}" if "count" in edit else ""
    return f"{edit.get('op', '?')} {target}{tail}".strip()


def _before_after(old: Any, new: Any) -> str:
    if not isinstance(new, (int, float)):
        return "-"
    return (f"{old:.4f} → " if isinstance(old, (int, float)) else "") + f"{new:.4f}"
