"""Pixel-level faithfulness with Captum: attribution maps per class and per feature.

Methods (retrofit.check.explainers): `LayerGradCam` on the last spatial layer (the module named
by `spec.maps_module`, upsampled with `LayerAttribution.interpolate`), `IntegratedGradients`
for the class logit and `NeuronIntegratedGradients` on the bottleneck outputs for a feature. Each map is scored by deleting
(inserting) pixels in attribution order against a seeded random order, by
`captum.metrics.infidelity(normalize=True)` and by `captum.metrics.sensitivity_max`.

Class-level scores are the softmax probability of the predicted class; feature-level scores are
the feature's standardised activation (the bottleneck output the head reads), so feature-level
areas are in units of the feature's training standard deviation.
The baseline (removed pixels, and the IG baseline) is zero: black for [0, 1] inputs, the mean
colour for normalised inputs.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from captum.metrics import infidelity, sensitivity_max
from tqdm.auto import tqdm

from retrofit.check.concept_deletion import area
from retrofit.check.explainers import PIXEL_EXPLAINERS, Explainer, batched
from retrofit.check.metrics import nanmean
from retrofit.errors import ConfigError
from retrofit.model.interpretable import InterpretableModel

logger = logging.getLogger(__name__)

PIXEL_METHODS: tuple[str, ...] = tuple(PIXEL_EXPLAINERS)
NOISE_SCALE = 0.1  # infidelity: Gaussian noise std relative to the images' std
SENSITIVITY_RADIUS = 0.02  # sensitivity_max: radius relative to the images' value range


@dataclass(frozen=True)
class PixelSettings:
    """How much work the pixel-level checks do per image (cost grows linearly in each)."""

    ig_steps: int = 32
    curve_steps: int = 20
    perturb_samples: int = 8
    sensitivity_images: int = 8
    internal_batch_size: int = 64
    batch_size: int = 64

    def __post_init__(self) -> None:
        for name in (
            "ig_steps",
            "curve_steps",
            "perturb_samples",
            "sensitivity_images",
            "internal_batch_size",
            "batch_size",
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}.")


def validate_methods(methods: Sequence[str]) -> tuple[str, ...]:
    """The requested pixel methods, deduplicated in order; unknown names raise ConfigError."""
    if isinstance(methods, str):
        methods = (methods,)
    unknown = [m for m in methods if m not in PIXEL_METHODS]
    if unknown:
        raise ConfigError(
            f"pixel_methods {unknown} are not supported; choose from {list(PIXEL_METHODS)} "
            "or pass pixel_methods=() to skip the pixel-level checks."
        )
    return tuple(dict.fromkeys(methods))


def has_spatial_layer(imodel: InterpretableModel) -> bool:
    """Whether the model has spatial maps (needed for Grad-CAM and Diversity@5)."""
    return imodel.spec.maps_module is not None


def score_function(
    imodel: InterpretableModel, level: str
) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """Per-image score of the target: class probability, or the raw feature activation."""
    if level == "class":
        return lambda x, t: F.softmax(imodel(x), dim=1).gather(1, t[:, None])[:, 0]
    return lambda x, t: imodel.concept_activations(x).gather(1, t[:, None])[:, 0]


@torch.no_grad()
def perturbation_curves(
    score: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    images: torch.Tensor,
    relevance: torch.Tensor,
    targets: torch.Tensor,
    steps: int,
    batch_size: int = 64,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(deletion, insertion), each (N, steps + 1): the score as the most relevant pixels are
    replaced by the zero baseline (deletion) or copied onto it (insertion), in `steps` equal parts.
    """
    n, _, height, width = images.shape
    pixels = height * width
    if relevance.shape != (n, height, width):
        raise ConfigError(
            f"relevance must be (N, H, W) = {(n, height, width)}, got {tuple(relevance.shape)}."
        )
    order = torch.argsort(relevance.flatten(1), dim=1, descending=True, stable=True)
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(pixels, device=order.device).expand_as(order))
    counts = torch.round(torch.linspace(0, 1, steps + 1) * pixels).long().to(rank.device)
    per_forward = max(1, batch_size // (steps + 1))
    deletion, insertion = [], []
    for s in range(0, n, per_forward):
        x = images[s : s + per_forward]
        b = x.shape[0]
        removed = (rank[s : s + b, None, :] < counts[None, :, None]).view(
            b, steps + 1, 1, height, width
        )
        target = targets[s : s + b].repeat_interleave(steps + 1)
        for mode, out in (("deletion", deletion), ("insertion", insertion)):
            kept = ~removed if mode == "deletion" else removed
            perturbed = (x[:, None] * kept).flatten(0, 1)
            out.append(score(perturbed, target).view(b, steps + 1).float())
    return torch.cat(deletion), torch.cat(insertion)


def _mean_curve(curves: torch.Tensor) -> list[float]:
    rows = curves[~torch.isnan(curves).any(dim=1)]
    return rows.mean(dim=0).tolist() if len(rows) else []


def _per_batch(settings: PixelSettings, n_inputs: int) -> int:
    """Captum's max_examples_per_batch: between the inputs and inputs x perturbations."""
    return min(max(settings.batch_size, n_inputs), n_inputs * settings.perturb_samples)


def _tuple_in_tuple_out(explain: Explainer) -> Explainer:
    """sensitivity_max passes inputs as a tuple and expects a tuple back on its first call."""

    def wrapped(inputs: torch.Tensor | tuple[torch.Tensor, ...], **kwargs: Any) -> Any:
        if isinstance(inputs, tuple):
            return (explain(inputs[0], **kwargs),)
        return explain(inputs, **kwargs)

    return wrapped


@contextmanager
def seeded(seed: int, device: torch.device) -> Iterator[None]:
    """Fix the global RNG (Captum's perturbations draw from it) and restore it afterwards."""
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


def _curves(
    imodel: InterpretableModel,
    level: str,
    images: torch.Tensor,
    relevance: torch.Tensor,
    targets: torch.Tensor,
    settings: PixelSettings,
) -> dict[str, Any]:
    deletion, insertion = perturbation_curves(
        score_function(imodel, level),
        images,
        relevance,
        targets,
        settings.curve_steps,
        settings.batch_size,
    )
    return {
        "deletion_auc": nanmean(area(deletion)),
        "insertion_auc": nanmean(area(insertion)),
        "curves": {"deletion": _mean_curve(deletion), "insertion": _mean_curve(insertion)},
    }


def pixel_faithfulness(
    imodel: InterpretableModel,
    images: torch.Tensor,
    class_targets: torch.Tensor,
    feature_targets: torch.Tensor,
    methods: Sequence[str] = PIXEL_METHODS,
    settings: PixelSettings | None = None,
    seed: int = 0,
    progress: bool = True,
) -> tuple[dict[str, Any], dict[tuple[str, str], torch.Tensor], dict[str, float]]:
    """Attribution maps and their faithfulness scores on `images` (already on the model's device).

    Returns (results by level and method, the (N, H, W) relevance maps by (level, method),
    seconds spent per method). Grad-CAM is skipped with a note when the model has no
    spatial layer.
    """
    settings = settings or PixelSettings()
    methods = validate_methods(methods)
    device = images.device
    results: dict[str, Any] = {
        "n_images": int(images.shape[0]),
        "curve_steps": settings.curve_steps,
        "ig_steps": settings.ig_steps,
        "class": {},
        "feature": {},
        "skipped": {},
    }
    entries: list[tuple[str, str]] = []
    for method in methods:
        if method == "gradcam" and not has_spatial_layer(imodel):
            results["skipped"]["gradcam"] = "the model has no spatial layer (spec.maps_module)"
            continue
        entries.extend(PIXEL_EXPLAINERS[method][1])
    targets = {"class": class_targets.to(device), "feature": feature_targets.to(device)}
    relevance_maps: dict[tuple[str, str], torch.Tensor] = {}
    timings: dict[str, float] = {}
    if not entries or images.shape[0] == 0:
        return results, relevance_maps, timings

    generator = torch.Generator().manual_seed(seed)
    random_relevance = torch.rand(images.shape[0], *images.shape[2:], generator=generator)
    start = time.perf_counter()
    for level in dict.fromkeys(level for level, _ in entries):
        results[level]["random"] = _curves(
            imodel, level, images, random_relevance.to(device), targets[level], settings
        )
    timings["random"] = time.perf_counter() - start

    scale = float(images.float().std()) * NOISE_SCALE or NOISE_SCALE
    radius = float(images.max() - images.min()) * SENSITIVITY_RADIUS or SENSITIVITY_RADIUS

    def perturb(inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        noise = torch.randn_like(inputs) * scale
        return noise, inputs - noise

    chunk = max(1, settings.batch_size // settings.perturb_samples)
    n_sens = min(settings.sensitivity_images, images.shape[0])
    for level, method in tqdm(entries, desc="pixel faithfulness", disable=not progress):
        start = time.perf_counter()
        build = PIXEL_EXPLAINERS[method][0]
        explain = build(imodel, level, settings.ig_steps, settings.internal_batch_size)
        forward = imodel if level == "class" else imodel.concept_activations
        target = targets[level]
        with seeded(seed, device):
            attributions = batched(
                lambda x, t, e=explain: e(x, target=t), images, target, settings.batch_size
            )
            relevance = attributions.sum(dim=1)
            entry = _curves(imodel, level, images, relevance, target, settings)
            random = results[level]["random"]
            entry["deletion_auc_gain"] = random["deletion_auc"] - entry["deletion_auc"]
            entry["insertion_auc_gain"] = entry["insertion_auc"] - random["insertion_auc"]
            entry["infidelity"] = nanmean(
                torch.cat(
                    [
                        infidelity(
                            forward,
                            perturb,
                            images[s : s + chunk],
                            attributions[s : s + chunk],
                            target=target[s : s + chunk],
                            n_perturb_samples=settings.perturb_samples,
                            max_examples_per_batch=_per_batch(settings, len(images[s : s + chunk])),
                            normalize=True,
                        ).detach()
                        for s in range(0, len(images), chunk)
                    ]
                )
            )
            entry["sensitivity"] = nanmean(
                sensitivity_max(
                    _tuple_in_tuple_out(explain),
                    images[:n_sens],
                    perturb_radius=radius,
                    n_perturb_samples=settings.perturb_samples,
                    max_examples_per_batch=_per_batch(settings, n_sens),
                    target=target[:n_sens],
                ).detach()
            )
        if not (relevance != 0).any():
            logger.warning(
                "%s attributions of the %s are all zero; its scores are not informative.",
                method,
                level,
            )
        results[level][method] = entry
        relevance_maps[(level, method)] = relevance.detach().cpu()
        timings[method] = timings.get(method, 0.0) + time.perf_counter() - start
    return results, relevance_maps, timings
