"""Feature-level background reliance (ALGORITHMS §12): which features read the background.

For feature j, R_j = mean |a_j(x on b) − a_j(x on b')| over background swaps (the same object
on two other clean backgrounds) divided by mean |a_j(x on b_x) − a_j(x'' on b_x)| over object
swaps (another object of the same class on the image's own clean background). a_j is the
bottleneck output the head reads. R_j ≫ 1: the feature moves with the background and hardly
with the object; it reads the background, and dropping it (`retrofit edit`) is the suggestion.

It is a registered check metric: `check(..., masks=...)` measures it on the first
`reliance_images` checked images and stores it under "background_reliance".
"""

from __future__ import annotations

from typing import Any

import torch

from retrofit.check.background_swap import fill_foreground, load_backgrounds
from retrofit.check.consistency import foreground_masks, take_images
from retrofit.check.registry import MetricInputs, register_metric
from retrofit.errors import DataError
from retrofit.extraction.hooks import FeatureCapture

RELIANCE_IMAGES = 256  # checked images the reliance is measured on
RELIES = 2.0  # R_j above this: the background moves the feature twice as far as the object
BATCH = 64


def checked_foregrounds(masks: Any, images: torch.Tensor) -> torch.Tensor:
    """(N, H, W) foregrounds for `images`, refusing masks that cannot separate object and
    background (no object pixel, or no background pixel)."""
    foreground = foreground_masks(masks, len(images), tuple(images.shape[2:]))
    area = foreground.flatten(1).float().mean(dim=1)
    for kind, rows in (("no object pixel", area == 0), ("no background pixel", area == 1)):
        if bool(rows.any()):
            first = int(rows.nonzero()[0, 0])
            raise DataError(
                f"{int(rows.sum())} of the {len(images)} masks have {kind} (the first is image "
                f"{first}); swapping a background keeps the object and replaces the rest, so "
                "each mask must mark the object (True) and leave some background (False)."
            )
    return foreground


@torch.no_grad()
def feature_activations(imodel: Any, images: torch.Tensor) -> torch.Tensor:
    """(N, n_features) bottleneck outputs of `images`, batch by batch."""
    device = imodel.head.weight.device
    capture = FeatureCapture(imodel.backbone, imodel.spec, with_maps=False)
    out = []
    with capture.attached():
        for start in range(0, len(images), BATCH):
            imodel.backbone(images[start : start + BATCH].to(device))
            out.append(imodel.bottleneck(capture.features()).float().cpu())
            capture.clear()
    return torch.cat(out)


def _other(index: torch.Tensor, n: int, generator: torch.Generator) -> torch.Tensor:
    """A random index other than each entry of `index` (n > 1)."""
    shift = torch.randint(1, n, (len(index),), generator=generator)
    return (index + shift) % n


def _same_class_partner(labels: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """For each image another image of its class (itself when it is its class's only one)."""
    partner = torch.arange(len(labels))
    for c in labels.unique().tolist():
        rows = (labels == c).nonzero()[:, 0]
        if len(rows) > 1:
            partner[rows] = rows[_other(torch.arange(len(rows)), len(rows), generator)]
    return partner


def background_reliance(
    imodel: Any,
    images: torch.Tensor,
    labels: torch.Tensor,
    masks: Any,
    backgrounds: Any = None,
    seed: int = 0,
) -> dict[str, Any]:
    """R_j for every feature, its two halves, the ranking and the suggested edits."""
    if len(images) < 2:
        raise DataError("background reliance needs at least two images with masks.")
    foreground = checked_foregrounds(masks, images)
    clean = (
        load_backgrounds(backgrounds, len(images), tuple(images.shape[1:]))
        if backgrounds is not None
        else fill_foreground(images, ~foreground)
    )
    generator = torch.Generator().manual_seed(seed)
    index = torch.arange(len(images))
    first, second = _other(index, len(clean), generator), _other(index, len(clean), generator)
    on = lambda objects, mask, donors: torch.where(mask[:, None], objects, donors)  # noqa: E731
    partner = _same_class_partner(labels, generator)
    own = fill_foreground(images, ~foreground)
    shift_background = (
        feature_activations(imodel, on(images, foreground, clean[first]))
        - feature_activations(imodel, on(images, foreground, clean[second]))
    ).abs()
    shift_object = (
        feature_activations(imodel, on(images, foreground, own))
        - feature_activations(imodel, on(images[partner], foreground[partner], own))
    ).abs()
    has_partner = partner != index
    background = shift_background.mean(dim=0)
    objects = shift_object[has_partner].mean(dim=0) if bool(has_partner.any()) else None
    if objects is None:
        raise DataError(
            "background reliance compares objects of one class; the images hold one per class. "
            "Pass more images (or reliance over more than one image per class)."
        )
    reliance = background / objects.clamp_min(1e-6)
    order = torch.argsort(reliance, descending=True, stable=True).tolist()
    names = [imodel.feature_name(j) for j in range(imodel.n_features)]
    return {
        "n_images": len(images),
        "reliance": reliance.tolist(),
        "background_shift": background.tolist(),
        "object_shift": objects.tolist(),
        "ranking": order,
        "suggested_edits": [
            {
                "op": "drop",
                "feature": j,
                "why": f"feature {j} ({names[j]}) reads the background: R = {reliance[j]:.2f}",
            }
            for j in order
            if reliance[j] > RELIES
        ],
    }


def _render(results: dict[str, Any]) -> str:
    from retrofit.check.html_parts import esc, num, table

    if "skipped" in results:
        return f'<p class="muted">{esc(results["skipped"])}</p>'
    rows = [
        [
            str(j),
            num(results["reliance"][j], 2),
            num(results["background_shift"][j]),
            num(results["object_shift"][j]),
            "drop it: it reads the background" if results["reliance"][j] > RELIES else "",
        ]
        for j in results["ranking"]
    ]
    return (
        f'<p class="muted">R = how far a feature moves when only the background changes, over '
        f"how far it moves when only the object does ({results['n_images']} images). Features "
        f"above {RELIES:g} read the background; `retrofit edit` with the suggested drops removes them.</p>"
        + table(["feature", "R", "background shift", "object shift", "suggestion"], rows, {1, 2, 3})
    )


@register_metric(
    "background_reliance",
    title="Background reliance per feature",
    thresholds={"max_background_features": ("n_background_features", "<=")},
    render=_render,
)
def measure_background_reliance(inputs: MetricInputs) -> dict[str, Any]:
    """The check's entry: needs the masks check() was given."""
    if inputs.masks is None:
        return {"skipped": "needs masks= (the objects' foreground masks, loader order)"}
    images, labels = take_images(inputs.loader, RELIANCE_IMAGES, BATCH)
    result = background_reliance(
        inputs.imodel, images, labels, inputs.masks, inputs.backgrounds, inputs.config.seed
    )
    result["n_background_features"] = len(result["suggested_edits"])
    return result
