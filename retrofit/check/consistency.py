"""Explanation consistency (ALGORITHMS §9.2): does a heatmap stay put when only the background
changes?

For each image x with prediction ŷ: H = the heatmap of ŷ (the exact CAM Σ_k w_ŷk·(A_k − μ_k)/σ_k
for retrofit's linear head when the spatial maps pool to the features it reads, else Grad-CAM
on the last spatial layer), positive part at input resolution. The background B is the q share
of pixels with the lowest H (or the complement of a given foreground mask); x̂ is x after PGD
(Captum, L∞ ball of radius ε, `mask=B`) away from ŷ, so the object is untouched; or, with
perturbation="swap", x with B replaced by a clean background of another image (background_swap).
The score E = similarity(H, Ĥ), with Ĥ the heatmap of the same class ŷ on x̂, and the
prediction flip rate.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from captum.attr import LayerAttribution
from captum.robust import PGD
from torch import nn
from tqdm.auto import tqdm

from retrofit.check.background_swap import (
    inpainted_donors,
    load_backgrounds,
    swap_background,
)
from retrofit.check.explainers import GradCam, Spatial, gradcam
from retrofit.consistency_settings import PERTURBATIONS as PERTURBATIONS
from retrofit.consistency_settings import SIMILARITIES
from retrofit.consistency_settings import ConsistencySettings as ConsistencySettings
from retrofit.errors import ConfigError, DataError, LayerNotFoundError
from retrofit.extraction.hooks import FeatureCapture, detect_layers
from retrofit.extraction.loaders import as_batches, iterate
from retrofit.extraction.outputs import logits_of
from retrofit.model.interpretable import InterpretableModel

logger = logging.getLogger(__name__)

_POOL_TOLERANCE = 1e-4  # relative: the maps "pool to the features" when their mean is this close

HeatmapFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class ConsistencyResult:
    """Per-image scores and the summary of one model's consistency check."""

    scores: torch.Tensor  # (N,) E
    flipped: torch.Tensor  # (N,) bool
    predicted: torch.Tensor  # (N,)
    labels: torch.Tensor  # (N,)
    summary: dict[str, Any]
    examples: list[dict[str, Any]] = field(default_factory=list)

    @property
    def mean(self) -> float:
        return float(self.summary["mean"])

    def to_dict(self) -> dict[str, Any]:
        return dict(self.summary)


# -- similarity and background -----------------------------------------------------------------


def similarity(
    heat: torch.Tensor, other: torch.Tensor, kind: str = "l1", top_k: float = 0.2
) -> torch.Tensor:
    """(N,) similarity of two (N, H, W) non-negative heatmaps; 1 means identical.

    l1: 1 − ½‖p − p̂‖₁ with p = H / ΣH (uniform when ΣH = 0); cosine; Pearson; iou: overlap of
    the top `top_k` share of pixels.
    """
    if heat.shape != other.shape:
        raise ConfigError(
            f"heatmaps must have the same shape, got {tuple(heat.shape)} and {tuple(other.shape)}."
        )
    if kind not in SIMILARITIES:
        raise ConfigError(
            f"similarity={kind!r} is not supported; choose one of {list(SIMILARITIES)}."
        )
    a, b = heat.flatten(1).double(), other.flatten(1).double()
    if kind == "l1":
        return (1 - 0.5 * (_distribution(a) - _distribution(b)).abs().sum(dim=1)).float()
    if kind == "pearson":
        a, b = a - a.mean(dim=1, keepdim=True), b - b.mean(dim=1, keepdim=True)
    if kind in ("cosine", "pearson"):
        both_flat = (a.norm(dim=1) == 0) & (b.norm(dim=1) == 0)
        score = F.cosine_similarity(a, b, dim=1, eps=1e-12)
        return torch.where(both_flat, torch.ones_like(score), score).float()
    k = max(1, round(top_k * a.shape[1]))
    top_a = torch.zeros_like(a, dtype=torch.bool).scatter_(1, _top(a, k), True)
    top_b = torch.zeros_like(b, dtype=torch.bool).scatter_(1, _top(b, k), True)
    return ((top_a & top_b).sum(dim=1) / (top_a | top_b).sum(dim=1)).float()


def _distribution(values: torch.Tensor) -> torch.Tensor:
    values = values.clamp_min(0)
    total = values.sum(dim=1, keepdim=True)
    uniform = torch.full_like(values, 1.0 / values.shape[1])
    return torch.where(total > 0, values / total.clamp_min(1e-300), uniform)


def _top(values: torch.Tensor, k: int) -> torch.Tensor:
    return torch.argsort(values, dim=1, descending=True, stable=True)[:, :k]


def background_mask(heat: torch.Tensor, quantile: float) -> torch.Tensor:
    """(N, H, W) bool: the `quantile` share of each image's pixels with the lowest heat (ties
    broken by position, so the share is exact even where the positive part is zero)."""
    if not 0 < quantile < 1:
        raise ConfigError(f"quantile must lie strictly between 0 and 1, got {quantile!r}.")
    flat = heat.flatten(1)
    n_background = round(quantile * flat.shape[1])
    order = torch.argsort(flat, dim=1, stable=True)
    mask = torch.zeros_like(flat, dtype=torch.bool)
    mask.scatter_(1, order[:, :n_background], True)
    return mask.view_as(heat)


# -- heatmaps ----------------------------------------------------------------------------------


def _interpolate(cam: torch.Tensor, size: tuple[int, ...]) -> torch.Tensor:
    return LayerAttribution.interpolate(cam, size, "bilinear")[:, 0].detach().clamp_min(0)


def _exact_cam(
    imodel: InterpretableModel, images: torch.Tensor, targets: torch.Tensor
) -> torch.Tensor | None:
    """Σ_k w_ŷk (P_k − μ_k)/σ_k over the bottleneck's projected maps P, or None when the maps do
    not average to the pooled features the head reads (then the CAM would not be exact)."""
    capture = FeatureCapture(imodel.backbone, imodel.spec, with_maps=True)
    with torch.no_grad(), capture.attached():
        imodel.backbone(images)
        pooled, maps = capture.features(), capture.maps
    if maps is None or maps.shape[:2] != pooled.shape:
        return None
    scale = pooled.abs().amax().clamp_min(1e-6)
    if (maps.mean(dim=(2, 3)) - pooled).abs().amax() > _POOL_TOLERANCE * scale:
        return None
    bottleneck, weight = imodel.bottleneck, imodel.head.weight
    with torch.no_grad():
        projected = bottleneck.project_maps(maps) - bottleneck.mean[None, :, None, None]
        coefficients = weight[targets] / bottleneck.std
        cam = torch.einsum("nf,nfhw->nhw", coefficients, projected)[:, None]
    return _interpolate(cam, tuple(images.shape[2:]))


def _no_spatial_layer(model: nn.Module) -> LayerNotFoundError:
    return LayerNotFoundError(
        f"Grad-CAM needs a spatial layer (output (N, C, H, W) or a square grid of tokens) and none "
        f"was found before the classification head of {type(model).__name__}. Pass layer='name' "
        "of the last convolutional block (or transformer block), e.g. layer='layer4' for a ResNet."
    )


def heatmap_function(
    model: nn.Module, probe: torch.Tensor, layer: str | None = None
) -> tuple[HeatmapFn, str]:
    """(fn(images, classes) -> (N, H, W) non-negative heatmaps, how they are computed)."""
    if isinstance(model, InterpretableModel) and layer is None:
        if model.spec.maps_module is None:
            raise _no_spatial_layer(model.backbone)
        exact = _exact_cam(model, probe[:2], torch.zeros(min(2, len(probe)), dtype=torch.long))

        def interpretable_heatmaps(images: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
            cam = _exact_cam(model, images, classes) if exact is not None else None
            if cam is not None:
                return cam
            with torch.enable_grad():
                return gradcam(model, images, classes, "class").clamp_min(0)

        kind = "exact CAM" if exact is not None else "Grad-CAM"
        return interpretable_heatmaps, f"{kind} on {model.spec.maps_module}"
    network = model.backbone if isinstance(model, InterpretableModel) else model
    spec, _ = detect_layers(network, probe[:2], feature_layer=layer)
    if spec.maps_module is None:
        raise _no_spatial_layer(network)
    explain = GradCam(lambda images: logits_of(model(images)), Spatial(network, spec))

    def gradcam_heatmaps(images: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
        return explain(images, classes).clamp_min(0)

    return gradcam_heatmaps, f"Grad-CAM on {spec.maps_module}"


# -- the perturbation --------------------------------------------------------------------------


def perturb_background(
    model: nn.Module,
    images: torch.Tensor,
    classes: torch.Tensor,
    background: torch.Tensor,
    settings: ConsistencySettings,
) -> torch.Tensor:
    """PGD away from `classes`, only on the (N, H, W) `background` pixels, within ±ε."""
    if background.shape != (images.shape[0], *images.shape[2:]):
        raise DataError(
            f"the background mask must be (N, H, W) = {(images.shape[0], *images.shape[2:])}, "
            f"got {tuple(background.shape)}."
        )
    low, high = settings.bounds or (float(images.min()), float(images.max()))
    attack = PGD(
        lambda x: logits_of(model(x)),
        loss_func=lambda out, target: F.cross_entropy(out, target, reduction="none"),
        lower_bound=low,
        upper_bound=high,
    )
    mask = background[:, None].expand_as(images).to(images.dtype)
    with torch.enable_grad():
        perturbed = attack.perturb(
            images.detach().clone().requires_grad_(True),
            radius=settings.epsilon,
            step_size=settings.pgd_step,
            step_num=settings.steps,
            target=classes,
            mask=mask,
        )
    # the mask zeroes the step outside B; this makes "untouched" exact whatever the bounds do
    return torch.where(mask.bool(), perturbed.detach(), images)


# -- the check ---------------------------------------------------------------------------------


def _foreground(masks: Any, index: int, size: tuple[int, int]) -> torch.Tensor:
    """One image's foreground (H, W) bool from a user mask entry: (H, W), (objects, H, W) or
    (masks, object_concepts)."""
    entry = masks(index) if callable(masks) else masks[index]
    if isinstance(entry, tuple) and len(entry) == 2:
        entry = entry[0]
    mask = torch.as_tensor(entry)
    if mask.ndim == 3:
        mask = mask.bool().any(dim=0)
    if mask.ndim != 2 or tuple(mask.shape) != size:
        raise DataError(
            f"the foreground mask of image {index} has shape {tuple(mask.shape)} but the images "
            f"are {size[0]}x{size[1]}; pass one (H, W) or (objects, H, W) mask per image at the "
            "input resolution, in loader order."
        )
    return mask.bool()


def foreground_masks(masks: Any, n: int, size: tuple[int, ...]) -> torch.Tensor:
    """(n, H, W) bool foregrounds of the first n images from user masks (see `consistency`)."""
    if not callable(masks) and len(masks) < n:
        raise DataError(
            f"masks cover {len(masks)} images but {n} are used; give one foreground mask per "
            "image, in loader order."
        )
    return torch.stack([_foreground(masks, i, tuple(size)) for i in range(n)])


def take_images(loader: Any, n: int, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The first n (images, labels) the loader yields, in its order."""
    images, labels, seen = [], [], 0
    for x, y in iterate(as_batches(loader, batch_size=batch_size)):
        images.append(x[: n - seen])
        labels.append(y[: n - seen])
        seen += len(images[-1])
        if seen >= n:
            break
    if not seen:
        raise DataError("The loader yielded no images. Check that the dataset is not empty.")
    return torch.cat(images), torch.cat(labels)


def _device(model: nn.Module) -> torch.device:
    parameter = next(model.parameters(), None)
    return parameter.device if parameter is not None else torch.device("cpu")


def consistency_scores(
    model: nn.Module,
    images: torch.Tensor,
    settings: ConsistencySettings,
    heatmaps: HeatmapFn,
    foreground: torch.Tensor | None = None,
    keep: int = 0,
    donors: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[dict[str, Any]]]:
    """(E, flipped, predicted, the first `keep` before/after examples) for one batch on the
    model's device. `donors`: object-free images to swap in (swap only; default: the batch's
    next image with its foreground filled in)."""
    with torch.no_grad():
        predicted = logits_of(model(images)).argmax(dim=1)
    heat = heatmaps(images, predicted)
    background = ~foreground if foreground is not None else background_mask(heat, settings.quantile)
    if settings.perturbation == "swap":
        if donors is None:
            donors = inpainted_donors(images, background, settings.swap_fill)
        perturbed = swap_background(images, background, donors)
    else:
        perturbed = perturb_background(model, images, predicted, background, settings)
    with torch.no_grad():
        flipped = logits_of(model(perturbed)).argmax(dim=1) != predicted
    heat_after = heatmaps(perturbed, predicted)
    scores = similarity(heat, heat_after, settings.similarity, settings.top_k)
    examples = [
        {
            "image": images[i].detach().cpu(),
            "perturbed": perturbed[i].detach().cpu(),
            "heatmap": heat[i].detach().cpu(),
            "heatmap_after": heat_after[i].detach().cpu(),
            "background": background[i].detach().cpu(),
            "consistency": float(scores[i]),
            "flipped": bool(flipped[i]),
        }
        for i in range(min(keep, len(images)))
    ]
    return scores.cpu(), flipped.cpu(), predicted.cpu(), examples


def consistency(
    model: nn.Module,
    loader: Any,
    *,
    masks: Any = None,
    layer: str | None = None,
    class_names: Sequence[str] | None = None,
    settings: ConsistencySettings | dict[str, Any] | None = None,
    progress: bool = True,
    backgrounds: Any = None,
) -> ConsistencyResult:
    """Explanation consistency of any classifier (an nn.Module or an InterpretableModel) on the
    first `settings.max_images` images of `loader`.

    `masks` (per image, in loader order: a tensor, a list or a callable index -> mask) gives the
    foreground; without it the background is the `quantile` share of lowest heat. `layer` names
    the spatial layer for Grad-CAM when it cannot be found automatically. `backgrounds`
    (perturbation="swap" only): object-free images (a tensor, Dataset or loader) whose pixels
    replace the backgrounds, image i taking background i (reused in turn when fewer).
    """
    settings = ConsistencySettings.parse(settings if settings is not None else True)
    if backgrounds is not None and settings.perturbation != "swap":
        raise ConfigError(
            "backgrounds= are swapped in only by perturbation='swap'; pass that setting too "
            f"(the perturbation is {settings.perturbation!r})."
        )
    device = _device(model)
    images, labels = take_images(loader, settings.max_images, settings.batch_size)
    size = tuple(images.shape[2:])
    foreground = foreground_masks(masks, len(images), size) if masks is not None else None
    donors = (
        load_backgrounds(backgrounds, len(images), tuple(images.shape[1:]))
        if backgrounds is not None
        else None
    )
    was_training = model.training
    model.eval()
    try:
        start = time.perf_counter()
        heatmaps, method = heatmap_function(model, images[:2].to(device), layer)
        parts: list[tuple[torch.Tensor, ...]] = []
        examples: list[dict[str, Any]] = []
        for part in tqdm(
            batch_slices(len(images), settings, donors is not None),
            desc="consistency",
            unit="batch",
            disable=not progress,
        ):
            scores, flipped, predicted, kept = consistency_scores(
                model,
                images[part].to(device),
                settings,
                heatmaps,
                foreground[part].to(device) if foreground is not None else None,
                keep=settings.examples - len(examples),
                donors=donors[part].to(device) if donors is not None else None,
            )
            parts.append((scores, flipped, predicted))
            examples.extend(kept)
        seconds = time.perf_counter() - start
    finally:
        model.train(was_training)
    scores, flipped, predicted = (torch.cat(p) for p in zip(*parts))
    names = list(class_names) if class_names is not None else _class_names(model, loader)
    summary = summarise(scores, flipped, predicted, names, settings)
    summary.update(
        {
            "heatmap": method,
            "background": "foreground masks"
            if masks is not None
            else f"quantile {settings.quantile}",
            "perturbation": _describe(settings, donors is not None),
            "seconds": seconds,
            "settings": asdict(settings),
        }
    )
    for example, c in zip(examples, predicted.tolist()):
        example["predicted"] = _name(names, c)
    return ConsistencyResult(scores, flipped, predicted, labels, summary, examples)


def batch_slices(n: int, settings: ConsistencySettings, given_donors: bool = False) -> list[slice]:
    """Batches of `settings.batch_size`; a swap without given donors takes each donor from its
    own batch, so a last batch of one image joins the one before (one image alone: DataError)."""
    step = settings.batch_size
    starts = list(range(0, n, step))
    if settings.perturbation == "swap" and not given_donors:
        if n < 2:
            raise DataError(
                "the background swap needs at least two images (each takes another's "
                "background); pass more images or object-free images as backgrounds=."
            )
        if len(starts) > 1 and n - starts[-1] == 1:
            starts.pop()
    return [slice(s, e) for s, e in zip(starts, [*starts[1:], n])]


def _describe(settings: ConsistencySettings, given_donors: bool) -> str:
    if settings.perturbation == "pgd":
        return f"PGD, ε = {settings.epsilon:.4g}, {settings.steps} steps"
    donors = "given object-free backgrounds" if given_donors else f"{settings.swap_fill}-filled"
    return f"background swap ({donors})"


def _class_names(model: nn.Module, loader: Any) -> list[str] | None:
    if isinstance(model, InterpretableModel):
        return list(model.class_names)
    names = getattr(getattr(loader, "dataset", loader), "class_names", None)
    return list(names) if names is not None else None


def _name(names: Sequence[str] | None, c: int) -> str:
    return names[c] if names is not None and c < len(names) else f"class_{c}"


def summarise(
    scores: torch.Tensor,
    flipped: torch.Tensor,
    predicted: torch.Tensor,
    names: Sequence[str] | None,
    settings: ConsistencySettings,
) -> dict[str, Any]:
    """Mean E, flip rate, per-class E (by predicted class) and the least consistent classes."""
    per_class = {
        _name(names, c): float(scores[predicted == c].mean())
        for c in sorted(set(predicted.tolist()))
    }
    counts = {_name(names, c): int((predicted == c).sum()) for c in sorted(set(predicted.tolist()))}
    worst = sorted(per_class, key=per_class.get)[: settings.worst_classes]
    return {
        "mean": float(scores.mean()),
        "std": float(scores.std()) if len(scores) > 1 else 0.0,
        "flip_rate": float(flipped.float().mean()),
        "n_images": int(len(scores)),
        "per_class": per_class,
        "worst_classes": [
            {"class": name, "consistency": per_class[name], "n_images": counts[name]}
            for name in worst
        ],
    }


def consistency_report(
    imodel: InterpretableModel,
    loader: Any,
    reference: nn.Module | None,
    settings: ConsistencySettings,
    masks: Any = None,
    progress: bool = True,
    backgrounds: Any = None,
) -> tuple[dict[str, Any], dict[str, list[dict[str, Any]]]]:
    """The check's consistency section: the interpretable model and, when given, the original
    side by side on the same images (results, before/after examples for the HTML report)."""
    models = {"interpretable": imodel}
    if reference is not None:
        models["original"] = reference
    results: dict[str, Any] = {}
    examples: dict[str, list[dict[str, Any]]] = {}
    for name, model in models.items():
        outcome = consistency(
            model,
            loader,
            masks=masks,
            class_names=imodel.class_names,
            settings=settings,
            progress=progress,
            backgrounds=backgrounds,
        )
        results[name] = outcome.to_dict()
        examples[name] = outcome.examples
    return results, examples
