"""Render a check Report as ONE self-contained HTML file: inline CSS, images as data URIs, and
no JS but the editor's (editor_section: edits exported as JSON for `retrofit edit`).

Plots are drawn with matplotlib (Agg backend); image strips with heatmap overlays are composed
with PIL, which is much faster than a figure per image. Sections have stable ids: summary,
assignment, features, explanations, faithfulness, metrics, editor.
assignment, features, explanations, faithfulness, metrics, mas.
"""

from __future__ import annotations

import base64
import io
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from PIL import Image

from retrofit._version import __version__
from retrofit.check.html_parts import esc as _esc
from retrofit.check.html_parts import num as _num
from retrofit.check.html_parts import table as _table

if TYPE_CHECKING:
    from retrofit.check.report import Report

SECTIONS = (
    ("summary", "Summary"),
    ("assignment", "Class–feature assignment"),
    ("features", "Features"),
    ("explanations", "Explanations"),
    ("faithfulness", "Faithfulness"),
    ("metrics", "Metrics"),
    ("truth", "Truth of the explanation"),
    ("mas", "Relevant attributes per class (MAS)"),
)
CONSISTENCY_SECTION = ("consistency", "Explanation consistency")
MAX_MATRIX_CLASSES = 100
MAX_TICK_LABELS = 60
THUMB = 96  # pixels per thumbnail side
METRIC_INFO: dict[str, tuple[str, str, str]] = {
    "features_used": ("Features used", "features at least one class reads", "—"),
    "features_per_class": (
        "Features per class",
        "nnz(W) / C: length of a class explanation",
        "lower",
    ),
    "diversity@5": (
        "Diversity@5",
        "top-5 features of the predicted class look at different places (1/5…1)",
        "higher",
    ),
    "sid@5": (
        "SID@5",
        "Diversity@5 on maps divided by their mean |value| (scale-invariant)",
        "higher",
    ),
    "dependence": ("Dependence", "share of a decision carried by its strongest feature", "lower"),
    "class_independence": (
        "Class-Independence",
        "1 − mean share of a feature's activation on its top class",
        "higher",
    ),
    "contrastiveness": (
        "Contrastiveness",
        "1 − overlap of a 2-component mixture per feature (on/off)",
        "higher",
    ),
    "structural_grounding": (
        "Structural Grounding",
        "head similarity of the classes most similar in attributes",
        "higher (1 ideal)",
    ),
    "correlation": (
        "Correlation",
        "mean largest cosine between two features' activations",
        "lower",
    ),
    "dead_attributes": ("Dead attributes", "share of features constant on the data", "lower"),
    "attribute_entropy": (
        "Attribute entropy",
        "entropy of the mean |activation| share: log of the attributes in use "
        "(max: log n_features)",
        "higher",
    ),
}
STYLE = """
:root{--fg:#1d2330;--muted:#5b6475;--line:#d9dde5;--bg:#f6f7f9;--pos:#2f7d4f;--neg:#b8322c;--accent:#2b5fb4}
*{box-sizing:border-box}
body{margin:0;font:14px/1.45 -apple-system,"Segoe UI",Roboto,"DejaVu Sans",Arial,sans-serif;color:var(--fg);background:var(--bg)}
header{background:#fff;border-bottom:1px solid var(--line);padding:16px 28px;position:sticky;top:0;z-index:2}
header h1{margin:0 0 6px;font-size:20px}
nav a{color:var(--accent);margin-right:14px;text-decoration:none}
main{max-width:1280px;margin:0 auto;padding:8px 28px 40px}
section{background:#fff;border:1px solid var(--line);border-radius:8px;padding:16px 20px;margin:18px 0}
h2{margin:0 0 12px;font-size:18px}
h3{margin:14px 0 8px;font-size:15px}
.badge{display:inline-block;padding:2px 10px;border-radius:12px;color:#fff;font-weight:600;font-size:13px}
.pass{background:var(--pos)}.fail{background:var(--neg)}
.kpis{display:grid;grid-template-columns:repeat(auto-fill,minmax(180px,1fr));gap:10px}
.kpi{border:1px solid var(--line);border-radius:6px;padding:8px 10px}
.kpi b{display:block;font-size:20px}
.kpi span{color:var(--muted);font-size:12px}
table{border-collapse:collapse;width:100%;margin:6px 0}
th,td{text-align:left;padding:5px 8px;border-bottom:1px solid var(--line);vertical-align:top}
th{background:var(--bg);font-weight:600}
td.num,th.num{text-align:right;font-variant-numeric:tabular-nums}
.muted{color:var(--muted)}
.cards{display:grid;grid-template-columns:repeat(auto-fill,minmax(300px,1fr));gap:12px}
.card{border:1px solid var(--line);border-radius:6px;padding:10px}
.card h3{margin:0 0 6px}
.chip{display:inline-block;background:#eef2fa;border-radius:10px;padding:1px 8px;margin:1px 3px 1px 0;font-size:12px}
.chip.neg{background:#fbeceb}
img{max-width:100%;height:auto;image-rendering:auto}
.bars{margin-top:6px}
.bar{display:grid;grid-template-columns:140px 1fr 64px;gap:6px;align-items:center;font-size:12px;margin:2px 0}
.bar .track{background:var(--bg);height:12px;border-radius:3px;position:relative}
.bar .fill{position:absolute;top:0;bottom:0;border-radius:3px}
.bar .fill.pos{background:var(--pos)}.bar .fill.neg{background:var(--neg)}
.name{overflow:hidden;text-overflow:ellipsis;white-space:nowrap}
footer{color:var(--muted);text-align:center;font-size:12px;padding:12px}
"""


def _data_uri(data: bytes, mime: str) -> str:
    return f"data:{mime};base64," + base64.b64encode(data).decode("ascii")


def _img(data: bytes, alt: str, mime: str = "image/png") -> str:
    return f'<img src="{_data_uri(data, mime)}" alt="{_esc(alt)}">'


def _figure_png(figure: Any) -> bytes:
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100, bbox_inches="tight", metadata={"Software": None})
    plt.close(figure)
    return buffer.getvalue()


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def _display(image: torch.Tensor) -> np.ndarray:
    """(C, H, W) tensor -> (H, W, 3) floats in [0, 1]; other ranges are min-max scaled."""
    array = image.detach().float().cpu().numpy()
    if array.shape[0] == 1:
        array = np.repeat(array, 3, axis=0)
    array = array[:3].transpose(1, 2, 0)
    low, high = float(array.min()), float(array.max())
    if low < 0 or high > 1:
        array = (array - low) / (high - low) if high > low else np.zeros_like(array)
    return np.clip(array, 0, 1)


def _overlay(image: np.ndarray, heat: torch.Tensor | None) -> np.ndarray:
    if heat is None:
        return image
    from matplotlib import colormaps

    values = heat.detach().float().cpu().clamp_min(0).numpy()
    peak = float(values.max())
    values = values / peak if peak > 0 else values
    coloured = colormaps["jet"](values)[..., :3]
    return 0.55 * image + 0.45 * coloured


def _tile(array: np.ndarray, size: int = THUMB) -> Image.Image:
    tile = Image.fromarray((array * 255 + 0.5).astype(np.uint8))
    return tile.resize((size, size), Image.Resampling.BILINEAR)


def _grid_jpeg(rows: list[list[np.ndarray]], size: int = THUMB, gap: int = 3) -> bytes:
    """Tiles laid out in rows with white gaps, as JPEG bytes (photos compress badly as PNG)."""
    n_cols = max(len(r) for r in rows)
    canvas = Image.new(
        "RGB",
        (n_cols * size + (n_cols - 1) * gap, len(rows) * size + (len(rows) - 1) * gap),
        "white",
    )
    for r, row in enumerate(rows):
        for c, array in enumerate(row):
            canvas.paste(_tile(array, size), (c * (size + gap), r * (size + gap)))
    buffer = io.BytesIO()
    canvas.save(buffer, format="JPEG", quality=85)
    return buffer.getvalue()


def _assignment_png(weight: torch.Tensor, classes: list[str], features: list[str]) -> bytes:
    plt = _pyplot()
    shown = weight[:MAX_MATRIX_CLASSES].numpy()
    n_c, n_f = shown.shape
    limit = float(np.abs(shown).max()) or 1.0
    figure, axis = plt.subplots(
        figsize=(min(18, 3 + 0.28 * n_f), min(24, 1.5 + 0.24 * n_c)), layout="constrained"
    )
    image = axis.imshow(
        shown, cmap="RdBu_r", vmin=-limit, vmax=limit, aspect="auto", interpolation="nearest"
    )
    if n_f <= MAX_TICK_LABELS:
        axis.set_xticks(range(n_f), features, rotation=90, fontsize=8)
    if n_c <= MAX_TICK_LABELS:
        axis.set_yticks(range(n_c), classes[:n_c], fontsize=8)
    axis.set_xlabel("feature")
    axis.set_ylabel("class")
    figure.colorbar(image, ax=axis, shrink=0.6, label="head weight")
    return _figure_png(figure)


def _curve_axes(axis: Any, curves: dict[str, list[float]], title: str, ylabel: str) -> None:
    for name, values in curves.items():
        if not values:
            continue
        x = np.linspace(0, 1, len(values))
        style = "--" if "random" in name else "-"
        axis.plot(x, values, style, label=name, linewidth=1.6)
    axis.set_title(title, fontsize=10)
    axis.set_xlabel("fraction removed / inserted")
    axis.set_ylabel(ylabel)
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)


def _concept_curves_png(concept: dict[str, Any]) -> bytes:
    plt = _pyplot()
    curves = concept["curves"]
    figure, axes = plt.subplots(1, 2, figsize=(10, 3.4), layout="constrained")
    _curve_axes(
        axes[0],
        {"explanation order": curves["deletion"], "random order": curves["deletion_random"]},
        "Concept deletion (lower is better)",
        "p(predicted class)",
    )
    _curve_axes(
        axes[1],
        {"explanation order": curves["insertion"], "random order": curves["insertion_random"]},
        "Concept insertion (higher is better)",
        "p(predicted class)",
    )
    return _figure_png(figure)


def _pixel_curves_png(pixel: dict[str, Any]) -> bytes | None:
    levels = [lvl for lvl in ("class", "feature") if pixel.get(lvl)]
    if not levels:
        return None
    plt = _pyplot()
    figure, axes = plt.subplots(
        len(levels), 2, figsize=(10, 3.4 * len(levels)), layout="constrained", squeeze=False
    )
    for row, level in enumerate(levels):
        ylabel = "p(predicted class)" if level == "class" else "feature activation (standardised)"
        for col, mode in enumerate(("deletion", "insertion")):
            curves = {
                (f"{m} (random)" if m == "random" else m): entry["curves"][mode]
                for m, entry in pixel[level].items()
            }
            better = "lower" if mode == "deletion" else "higher"
            _curve_axes(
                axes[row][col], curves, f"Pixel {mode}, {level} ({better} is better)", ylabel
            )
    return _figure_png(figure)


def _cns_png(cns: dict[str, float]) -> bytes:
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(4.2, 2.6), layout="constrained")
    taus = [float(t) for t in cns]
    axis.plot(taus, [cns[t] if cns[t] is not None else np.nan for t in cns], "o-")
    axis.set_xlabel("τ")
    axis.set_ylabel("features with r > 1/τ")
    axis.set_title("Conciseness CNS(τ)", fontsize=10)
    axis.grid(alpha=0.3)
    return _figure_png(figure)


def _section(section_id: str, body: str) -> str:
    title = dict(SECTIONS)[section_id]
    return f'<section id="{section_id}"><h2>{_esc(title)}</h2>{body}</section>'


def _summary(report: Report) -> str:
    meta, fid, concept = report.meta, report.fidelity, report.concept_deletion
    metrics = report.metrics
    kpis = [
        ("Accuracy", fid.get("accuracy"), f"reference {_num(fid.get('reference_accuracy'))}"),
        (
            "Agreement with reference",
            fid.get("agreement"),
            f"top-1 fidelity; fidelity@5 {_num(fid.get('fidelity@5'))}",
        ),
        (
            "Agreement on reference mistakes",
            fid.get("agreement_on_reference_mistakes"),
            f"{_num(fid.get('n_reference_mistakes'))} mistakes",
        ),
        (
            "Concept deletion AUC",
            concept.get("deletion_auc"),
            f"random order {_num(concept.get('deletion_auc_random'))}",
        ),
        (
            "Features used",
            metrics.get("features_used"),
            f"{_num(metrics.get('features_per_class'), 2)} per class",
        ),
        ("Diversity@5", metrics.get("diversity@5"), f"SID@5 {_num(metrics.get('sid@5'))}"),
    ]
    cards = "".join(
        f'<div class="kpi"><span>{_esc(name)}</span><b>{_num(value)}</b><span>{_esc(note)}</span></div>'
        for name, value, note in kpis
    )
    facts = (
        f'<p class="muted">{_num(meta.get("n_images"))} images, pixel-level checks on '
        f"{_num(meta.get('n_pixel_images'))}; {_num(meta.get('n_classes'))} classes, "
        f"{_num(meta.get('n_features'))} features; method {_esc(meta.get('method'))}; "
        + (f"layer {_esc(meta['layer'])}; " if meta.get("layer") else "")
        + f"seed {_esc(meta.get('seed'))}.</p>"
    )
    if report.thresholds:
        rows = [
            [
                _esc(t.name),
                _esc(t.metric),
                f"{_esc(t.op)} {_num(t.limit)}",
                _num(t.value),
                '<span class="badge pass">pass</span>'
                if t.passed
                else '<span class="badge fail">fail</span>',
            ]
            for t in report.thresholds
        ]
        thresholds = "<h3>Thresholds</h3>" + _table(
            ["threshold", "metric", "limit", "value", "verdict"], rows, {3}
        )
    else:
        thresholds = '<p class="muted">No thresholds were set.</p>'
    return _section("summary", f'<div class="kpis">{cards}</div>{facts}{thresholds}')


def _assignment(report: Report) -> str:
    visuals = report.visuals
    if "weight" not in visuals:
        return _section("assignment", '<p class="muted">The head is not part of this report.</p>')
    weight = visuals["weight"]
    note = ""
    if weight.shape[0] > MAX_MATRIX_CLASSES:
        note = f'<p class="muted">Showing the first {MAX_MATRIX_CLASSES} of {weight.shape[0]} classes.</p>'
    figure = _img(
        _assignment_png(weight, visuals["class_names"], visuals["feature_names"]),
        "class-feature assignment matrix",
    )
    rows = []
    for c, name in enumerate(visuals["class_names"]):
        row = weight[c]
        used = torch.nonzero(row).flatten()
        used = used[torch.argsort(row[used].abs(), descending=True, stable=True)]
        pair_names = visuals.get("pair_names", {})
        chips = "".join(
            f'<span class="chip{" neg" if row[j] < 0 else ""}">{"+" if row[j] > 0 else "−"}'
            f"{_esc(pair_names.get((c, j), visuals['feature_names'][j]))}</span>"
            for j in used.tolist()
        )
        rows.append([_esc(name), chips or '<span class="muted">(no features)</span>'])
    table = _table(["class", "features (by |weight|)"], rows)
    body = (
        f"{note}{figure}<details><summary>Global explanation as a table</summary>{table}</details>"
    )
    return _section("assignment", body)


def _features(report: Report) -> str:
    cards = []
    for card in report.visuals.get("cards", []):
        concepts = (
            "".join(
                f'<span class="chip">{_esc(c.get("concept"))} {_num(c.get("score"), 2)}</span>'
                for c in card["concepts"][:5]
            )
            or '<span class="muted">no concept names</span>'
        )
        classes = (
            "".join(
                f'<span class="chip{" neg" if sign < 0 else ""}">{"+" if sign > 0 else "−"}{_esc(name)}</span>'
                for name, sign in card["classes"][:12]
            )
            or '<span class="muted">no class uses it</span>'
        )
        if len(card["classes"]) > 12:
            classes += f'<span class="muted"> and {len(card["classes"]) - 12} more</span>'
        picture = ""
        if card["images"]:
            plain = [_display(im) for im in card["images"]]
            rows = [plain]
            if card["heatmaps"] is not None:
                rows.append([_overlay(im, h) for im, h in zip(plain, card["heatmaps"])])
            picture = _img(_grid_jpeg(rows, size=64), f"top images of {card['name']}", "image/jpeg")
            picture += (
                '<div class="muted">activations: '
                + ", ".join(_num(a, 2) for a in card["activations"])
                + ("; second row: Grad-CAM" if card["heatmaps"] is not None else "")
                + "</div>"
            )
        cards.append(
            f'<div class="card" id="feature-{card["index"]}"><h3>{_esc(card["name"])}</h3>'
            f'<div class="muted">position {card["index"]}, backbone feature {card["backbone_index"]}</div>'
            f"<div>{concepts}</div><div>classes: {classes}</div>{picture}</div>"
        )
    body = (
        f'<div class="cards">{"".join(cards)}</div>'
        if cards
        else '<p class="muted">No features.</p>'
    )
    return _section("features", body)


def _bars(contributions: list[tuple[str, float]], bias: float, logit: float) -> str:
    shown = contributions[:10]
    peak = max([abs(v) for _, v in shown] + [1e-12])
    rows = []
    for name, value in shown:
        width = 100 * abs(value) / peak
        kind = "pos" if value >= 0 else "neg"
        rows.append(
            f'<div class="bar"><span class="name" title="{_esc(name)}">{_esc(name)}</span>'
            f'<span class="track"><span class="fill {kind}" style="left:0;width:{width:.1f}%"></span></span>'
            f'<span class="num">{value:+.3f}</span></div>'
        )
    more = len(contributions) - len(shown)
    tail = f'<div class="muted">{more} more features</div>' if more > 0 else ""
    return (
        f'<div class="bars">{"".join(rows)}{tail}<div class="muted">bias {bias:+.3f} → logit '
        f"{logit:+.3f}</div></div>"
    )


def _explanations(report: Report) -> str:
    cards = []
    for i, item in enumerate(report.visuals.get("explanations", [])):
        image = _display(item["image"])
        row = [image]
        captions = ["image"]
        if item["heatmap"] is not None:
            row.append(_overlay(image, item["heatmap"]))
            captions.append("class Grad-CAM")
        for name, heat in item["feature_maps"]:
            row.append(_overlay(image, heat))
            captions.append(name)
        verdict = "correct" if item["label"] == item["predicted"] else "wrong"
        reference = (
            f", reference: {_esc(item['reference'])}" if item["reference"] is not None else ""
        )
        cards.append(
            f'<div class="card" id="explanation-{i}">'
            f'<h3>predicted {_esc(item["predicted"])} <span class="muted">({verdict}; label '
            f"{_esc(item['label'])}{reference})</span></h3>"
            f"{_img(_grid_jpeg([row]), f'explanation of image {i}', 'image/jpeg')}"
            f'<div class="muted">{" · ".join(_esc(c) for c in captions)}</div>'
            f"{_bars(item['contributions'], item['bias'], item['logit'])}</div>"
        )
    body = (
        '<p class="muted">Each bar is a feature\'s exact contribution (activation × weight) to '
        "the predicted class's logit.</p>" + f'<div class="cards">{"".join(cards)}</div>'
        if cards
        else '<p class="muted">No images were kept for explanations (max_pixel_images=0).</p>'
    )
    return _section("explanations", body)


def _faithfulness(report: Report) -> str:
    concept = report.concept_deletion
    parts = []
    if concept:
        parts.append("<h3>Concept level (exact for the linear head)</h3>")
        if concept.get("n_total", 0) > concept.get("n_images", 0):
            parts.append(
                f'<p class="muted">Measured on a seeded random {concept["n_images"]:,} of the '
                f"{concept['n_total']:,} images (CheckConfig.deletion_images).</p>"
            )
        parts.append(_img(_concept_curves_png(concept), "concept deletion and insertion curves"))
        parts.append(
            _table(
                ["quantity", "explanation", "random"],
                [
                    [
                        "deletion AUC (lower is better)",
                        _num(concept["deletion_auc"]),
                        _num(concept["deletion_auc_random"]),
                    ],
                    [
                        "insertion AUC (higher is better)",
                        _num(concept["insertion_auc"]),
                        _num(concept["insertion_auc_random"]),
                    ],
                    [
                        f"logit drop when the class's {_num(concept['mean_assigned_features'], 1)} features are removed",
                        _num(concept["logit_drop_assigned"]),
                        _num(concept["logit_drop_random"]),
                    ],
                    [
                        "probability drop, same removal",
                        _num(concept["probability_drop_assigned"]),
                        _num(concept["probability_drop_random"]),
                    ],
                ],
                {1, 2},
            )
        )
    pixel = report.pixel
    if pixel:
        parts.append(f"<h3>Pixel level (Captum, {_num(pixel.get('n_images'))} images)</h3>")
        png = _pixel_curves_png(pixel)
        if png is not None:
            parts.append(_img(png, "pixel deletion and insertion curves"))
        rows = []
        for level in ("class", "feature"):
            for method, entry in pixel.get(level, {}).items():
                rows.append(
                    [
                        _esc(level),
                        _esc(method),
                        _num(entry.get("deletion_auc")),
                        _num(entry.get("insertion_auc")),
                        _num(entry.get("deletion_auc_gain")),
                        _num(entry.get("insertion_auc_gain")),
                        _num(entry.get("infidelity")),
                        _num(entry.get("sensitivity")),
                    ]
                )
        parts.append(
            _table(
                [
                    "target",
                    "method",
                    "deletion AUC",
                    "insertion AUC",
                    "deletion gain",
                    "insertion gain",
                    "infidelity",
                    "sensitivity",
                ],
                rows,
                {2, 3, 4, 5, 6, 7},
            )
        )
        for method, why in pixel.get("skipped", {}).items():
            parts.append(f'<p class="muted">{_esc(method)} skipped: {_esc(why)}.</p>')
    if not parts:
        parts.append('<p class="muted">No faithfulness checks were run.</p>')
    return _section("faithfulness", "".join(parts))


def _metrics(report: Report) -> str:
    metrics = report.metrics
    rows = [
        [_esc(name), _num(metrics.get(key)), _esc(meaning), _esc(better)]
        for key, (name, meaning, better) in METRIC_INFO.items()
    ]
    parts = [_table(["metric", "value", "meaning", "better"], rows, {1})]
    cns = metrics.get("conciseness")
    if cns:
        parts.append("<h3>Conciseness (FLINT)</h3>")
        parts.append(
            _table(
                ["τ", *cns.keys()],
                [["CNS(τ)", *(_num(v, 2) for v in cns.values())]],
                set(range(1, len(cns) + 1)),
            )
        )
        parts.append(_img(_cns_png(cns), "conciseness curve"))
    localisation = metrics.get("localisation")
    if localisation:
        parts.append("<h3>Localisation against ground-truth masks</h3>")
        rows = [[_esc(k.replace("_", " ")), _num(v)] for k, v in localisation.items()]
        parts.append(
            '<p class="muted">Share of positive attribution mass inside the masks; the "area" rows '
            "are what a uniform map would score.</p>" + _table(["quantity", "value"], rows, {1})
        )
    timings = report.meta.get("timings", {})
    if timings:
        rows = [[_esc(k), f"{v:.2f}"] for k, v in timings.items()]
        parts.append(
            "<details><summary>Time per part (seconds)</summary>"
            + _table(["part", "s"], rows, {1})
            + "</details>"
        )
    return _section("metrics", "".join(parts))


def _truth(report: Report) -> str:
    truth = report.results.get("truth") or {}
    if "skipped" in truth or not truth:
        why = truth.get("skipped", "not measured")
        return _section("truth", f'<p class="muted">Skipped: {_esc(why)}.</p>')
    keys = ("precision", "recall", "distinct", "coverage")
    rows = [
        [_esc(label), *(_num(truth[kind].get(k)) for k in keys)]
        for kind, label in (("pair", "class-conditional names"), ("global", "global names"))
        if kind in truth
    ]
    grounded = truth.get("pair", {}).get("grounded")
    parts = [
        '<p class="muted">Each class\'s named features against its true concepts'
        + (
            " (a name counts only where the feature responds to that concept, AUC ≥ "
            f"{_num(truth['pair'].get('min_auc'), 2)})"
            if grounded
            else ""
        )
        + ". precision = correct / named pairs; recall = share of a class's true concepts named; "
        "distinct = distinct names / named features; coverage = named / used pairs "
        "(the rest say “unexplained”).</p>",
        _table(["names", *keys], rows, {1, 2, 3, 4}),
    ]
    per_class = [
        [
            _esc(row["class"]),
            _esc(", ".join(row["names"]) or "—"),
            _esc(", ".join(row["truth"])),
            _num(row["precision"], 2),
            _num(row["recall"], 2),
        ]
        for row in truth.get("pair", {}).get("per_class", [])
    ]
    if per_class:
        parts.append(
            "<details><summary>Per class (class-conditional names)</summary>"
            + _table(["class", "named", "true concepts", "precision", "recall"], per_class, {3, 4})
            + "</details>"
        )
    return _section("truth", "".join(parts))


EDITOR_STYLE = """
.editor-wrap{overflow:auto;max-height:640px}
table.editor{width:auto;font-size:12px}
table.editor td.cell{text-align:center;cursor:pointer;min-width:22px;user-select:none}
table.editor td.pos{color:var(--pos)}table.editor td.neg{color:var(--neg)}
table.editor td[data-edit=forbid]{background:#fbeceb;text-decoration:line-through}
table.editor td[data-edit=pin]{background:#e3f1e7;outline:2px solid var(--pos)}
table.editor input.rename{width:90px;font-size:11px}
#edits-json{width:100%;height:90px;font:12px monospace}
"""
EDITOR_SCRIPT = """(() => {
  const table = document.getElementById("edit-table");
  const out = document.getElementById("edits-json");
  const count = document.getElementById("edit-count");
  const marks = new Map();
  const cycle = {"": "forbid", forbid: "pin", pin: ""};
  function edits() {
    const list = [];
    for (const [key, op] of marks) {
      const [c, j] = key.split(",").map(Number);
      list.push({op: op, "class": c, feature: j});
    }
    for (const box of table.querySelectorAll("input.drop:checked")) {
      list.push({op: "drop", feature: Number(box.dataset.feature)});
    }
    for (const input of table.querySelectorAll("input.rename")) {
      const name = input.value.trim();
      if (name && name !== input.defaultValue) {
        list.push({op: "rename", feature: Number(input.dataset.feature), name: name});
      }
    }
    return list;
  }
  function update() {
    const list = edits();
    out.textContent = JSON.stringify({format: "retrofit-edits", version: 1,
      model_fingerprint: table.dataset.fingerprint, edits: list}, null, 1);
    count.textContent = list.length + (list.length === 1 ? " edit" : " edits");
  }
  table.addEventListener("click", (event) => {
    const cell = event.target.closest("td.cell");
    if (!cell) return;
    const key = cell.dataset.class + "," + cell.dataset.feature;
    const next = cycle[marks.get(key) || ""];
    if (next) marks.set(key, next); else marks.delete(key);
    cell.dataset.edit = next;
    update();
  });
  table.addEventListener("input", update);
  table.addEventListener("change", update);
  document.getElementById("export-edits").addEventListener("click", () => {
    update();
    const link = document.createElement("a");
    link.href = URL.createObjectURL(new Blob([out.textContent], {type: "application/json"}));
    link.download = "edits.json";
    document.body.appendChild(link);
    link.click();
    link.remove();
  });
  update();
})();"""


def _suggested_drops(report: Report) -> dict[int, str]:
    """Per feature the background-reliance check suggests dropping, a note for the editor."""
    reliance = report.results.get("background_reliance") or {}
    return {
        edit["feature"]: (
            f'<br><span class="suggested" title="{_esc(edit["why"])}">drop suggested: reads the '
            f"background (R {_num(reliance['reliance'][edit['feature']], 1)})</span>"
        )
        for edit in reliance.get("suggested_edits", [])
    }


def editor_section(report: Report) -> str:
    """The editing mode: click a class-feature cell to forbid or pin it, rename or drop a
    feature, export edits.json for `retrofit edit`. Plain inline JS, no server."""
    visuals = report.visuals
    fingerprint = visuals.get("model_fingerprint")
    if "weight" not in visuals or not fingerprint:
        return ""
    weight = visuals["weight"][:MAX_MATRIX_CLASSES]
    names = visuals["feature_names"]
    suggested = _suggested_drops(report)
    head = "".join(
        f'<th><input class="rename" data-feature="{j}" value="{_esc(name)}" '
        f'title="rename feature {j}"><br><label><input type="checkbox" class="drop" '
        f'data-feature="{j}"> drop</label>{suggested.get(j, "")}</th>'
        for j, name in enumerate(names)
    )
    rows = []
    for c, class_name in enumerate(visuals["class_names"][: weight.shape[0]]):
        cells = "".join(
            f'<td class="cell{" pos" if w > 0 else " neg" if w < 0 else ""}" data-class="{c}" '
            f'data-feature="{j}" title="{_esc(class_name)} × {_esc(names[j])}">'
            f"{'+' if w > 0 else '−' if w < 0 else '·'}</td>"
            for j, w in enumerate(weight[c].tolist())
        )
        rows.append(f"<tr><th>{_esc(class_name)}</th>{cells}</tr>")
    body = (
        '<p class="muted">Click a class–feature cell to forbid the link, again to pin it, again '
        "to clear; rename a feature in its box or tick drop. Export the edits and apply them "
        "with <code>retrofit edit EXPORT --apply edits.json --out EDITED --train DATA</code>: "
        "the head is re-solved under every edit and checked again.</p>"
        f'<div class="editor-wrap"><table class="editor" id="edit-table" '
        f'data-fingerprint="{_esc(fingerprint)}"><thead><tr><th>class</th>{head}</tr></thead>'
        f"<tbody>{''.join(rows)}</tbody></table></div>"
        '<p><button id="export-edits" type="button">Export edits.json</button> '
        '<span id="edit-count" class="muted"></span></p>'
        '<textarea id="edits-json" readonly aria-label="edits.json"></textarea>'
        f"<style>{EDITOR_STYLE}</style><script>{EDITOR_SCRIPT}</script>"
    )
    return f'<section id="editor"><h2>Edit the model</h2>{body}</section>'


def _mas(report: Report) -> str:
    """FLINT's MAS: per relevant class–feature pair (r_{j,c} > 1/2), the 3 images of the class
    on which the feature is largest."""
    pairs = report.visuals.get("mas")
    if not pairs:
        return _section(
            "mas", '<p class="muted">No class–feature pair is relevant (or mas_pairs=0).</p>'
        )
    cards = []
    for pair in pairs:
        picture = ""
        tiles = [_display(im) for im in pair["images"]]
        if pair.get("am_pi") is not None:
            tiles.append(_display(pair["am_pi"]))
            values = pair["am_pi_values"]
            picture = (
                f'<div class="muted">last image: AM+PI from the first, activation '
                f"{_num(values['start'], 2)} → {_num(values['end'], 2)}</div>"
            )
        if tiles:
            strip = _grid_jpeg([tiles], size=64)
            picture = (
                _img(strip, f"MAS of {pair['feature']} for {pair['class']}", "image/jpeg") + picture
            )
        cards.append(
            f'<div class="card"><h3>{_esc(pair["class"])} · {_esc(pair["feature"])}</h3>'
            f'<div class="muted">relevance r = {_num(pair["relevance"], 2)}; activations '
            + ", ".join(_num(a, 2) for a in pair["activations"])
            + f"</div>{picture}</div>"
        )
    note = (
        '<p class="muted">Pairs whose mean relevance over the images predicted as the class '
        "exceeds 1/2, most relevant first; each shows the class's images on which the feature "
        "is largest.</p>"
    )
    return _section("mas", note + f'<div class="cards">{"".join(cards)}</div>')


def _consistency(report: Report) -> str:
    """Mean E and flip rate per model, the least consistent classes, before/after heatmaps."""
    measured = report.results.get("consistency")
    if not measured:
        return ""
    rows = [
        [
            _esc(name),
            _num(entry.get("mean")),
            _num(entry.get("flip_rate")),
            _num(entry.get("n_images")),
            _esc(entry.get("heatmap", "")),
            ", ".join(
                f"{_esc(w['class'])} ({_num(w['consistency'])})"
                for w in entry.get("worst_classes", [])
            ),
        ]
        for name, entry in measured.items()
    ]
    perturbation = next(iter(measured.values())).get("perturbation", "PGD")
    parts = [
        '<p class="muted">E = similarity of the predicted class\'s heatmap before and after a '
        f"perturbation of the background only, here {_esc(perturbation)}; 1 means the "
        "explanation ignores the background. Flip rate: share of predictions the perturbation "
        "changed.</p>",
        _table(
            ["model", "E", "flip rate", "images", "heatmap", "least consistent classes"],
            rows,
            {1, 2, 3},
        ),
    ]
    for name, examples in report.visuals.get("consistency", {}).items():
        if not examples:
            continue
        grid = []
        for example in examples:
            image, after = _display(example["image"]), _display(example["perturbed"])
            change = (example["perturbed"] - example["image"]).abs().amax(dim=0)
            peak = float(change.max())
            change = (change / peak if peak > 0 else change).numpy()
            grid.append(
                [
                    image,
                    _overlay(image, example["heatmap"]),
                    np.repeat(change[..., None], 3, axis=2),
                    _overlay(after, example["heatmap_after"]),
                ]
            )
        scores = ", ".join(
            f"{_esc(e['predicted'])}: E {_num(e['consistency'])}"
            + (" (flipped)" if e["flipped"] else "")
            for e in examples
        )
        parts.append(
            f"<h3>{_esc(name)} model</h3>"
            + _img(_grid_jpeg(grid), f"consistency examples of the {name} model", "image/jpeg")
            + '<div class="muted">per row: image · heatmap · perturbation (scaled to its peak) · '
            f"heatmap after; {scores}</div>"
        )
    section_id, title = CONSISTENCY_SECTION
    return f'<section id="{section_id}"><h2>{_esc(title)}</h2>{"".join(parts)}</section>'


def render_report(report: Report) -> str:
    """The whole report as one HTML string."""
    from retrofit.check.metric_html import metric_sections, render_metric_sections

    verdict = (
        '<span class="badge pass">PASSED</span>'
        if report.passed
        else '<span class="badge fail">FAILED</span>'
    )
    sections = SECTIONS + ((CONSISTENCY_SECTION,) if report.results.get("consistency") else ())
    sections += tuple(metric_sections(report))
    nav = "".join(f'<a href="#{sid}">{_esc(title)}</a>' for sid, title in sections)
    body = "".join(
        (
            _summary(report),
            _assignment(report),
            _features(report),
            _explanations(report),
            _faithfulness(report),
            _metrics(report),
            _truth(report),
            editor_section(report),
            _mas(report),
            _consistency(report),
            render_metric_sections(report),
        )
    )
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>retrofit check report</title><style>{STYLE}</style></head><body>"
        f"<header><h1>retrofit check report {verdict}</h1><nav>{nav}</nav></header>"
        f"<main>{body}</main><footer>retrofit {_esc(__version__)}</footer></body></html>\n"
    )
