"""check(): measure how faithful and how interpretable a converted model is — orchestration only.

One pass over the loader runs the backbone once per batch and keeps what every later part
needs: the bottleneck outputs, both models' top-1 classes and fidelity@k hits (never an (N, C)
tensor: the logits are reduced per batch, see reference_pass), the per-image Diversity@5 /
SID@5 (so the spatial maps are never stored), the first `max_pixel_images` images for Captum
and the top-activating images of each feature for the report.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from retrofit.check import attribute_metrics as AM
from retrofit.check import metrics as M
from retrofit.check.concept_deletion import concept_deletion, contribution_order
from retrofit.check.config import CheckConfig
from retrofit.check.consistency import ConsistencySettings, consistency_report
from retrofit.check.explainers import batched, gradcam
from retrofit.check.fidelity import fidelity_of_predictions
from retrofit.check.pixel import PixelSettings, has_spatial_layer, pixel_faithfulness
from retrofit.check.reference_pass import MB, ReferenceTally
from retrofit.check.registry import MetricInputs, registered_metrics, run_metrics
from retrofit.check.report import Report, evaluate_thresholds
from retrofit.check.rows import GrowingRows
from retrofit.check.truth import truth_check
from retrofit.errors import ConfigError, DataError
from retrofit.extraction.hooks import FeatureCapture
from retrofit.extraction.loaders import as_batches, dataset_length, iterate
from retrofit.extraction.outputs import logits_of
from retrofit.methods.flint.am_pi import am_pi
from retrofit.methods.flint.mas import DEFAULT_MAS_PAIRS, mas_visuals
from retrofit.model.interpretable import InterpretableModel
from retrofit.solvers.quiet import progress_line

logger = logging.getLogger(__name__)

FEATURE_MAPS_PER_IMAGE = 5  # features per explained image whose Grad-CAM is computed
_NEEDS_REFERENCE = ("min_fidelity", "max_accuracy_drop", "min_mistake_agreement")


@dataclass
class _Collected:
    z: GrowingRows = field(default_factory=GrowingRows)
    predicted: GrowingRows = field(default_factory=GrowingRows)
    reference: ReferenceTally | None = None
    labels: GrowingRows = field(default_factory=GrowingRows)
    loc: GrowingRows = field(default_factory=GrowingRows)
    sid: GrowingRows = field(default_factory=GrowingRows)
    pixel_images: list[torch.Tensor] = field(default_factory=list)
    top_values: torch.Tensor | None = None
    top_index: torch.Tensor | None = None
    stored: dict[int, torch.Tensor] = field(default_factory=dict)
    seen: int = 0

    def n_pixel(self) -> int:
        return sum(len(x) for x in self.pixel_images)


@dataclass(frozen=True)
class _Plan:
    """What one check() call was asked to do, validated."""

    limits: dict[str, float]
    methods: tuple[str, ...]
    settings: PixelSettings
    max_pixel_images: int
    masks: Any
    attributes: torch.Tensor | None
    backgrounds: Any
    concept_names: Sequence[str] | None
    concept_labels: torch.Tensor | None
    truth_given: bool
    top_images: int
    max_explanations: int
    seed: int
    progress: bool
    raise_on_failure: bool
    mas_pairs: int = DEFAULT_MAS_PAIRS
    am_pi_pairs: int = 0
    consistency: ConsistencySettings | None = None
    config: CheckConfig | None = None
    # the dataset's own class–concept matrix (the synthetic world's class signatures), the class
    # truth when ground truth is read from the dataset rather than passed
    class_truth: torch.Tensor | None = None


def _device_of(module: nn.Module, fallback: torch.device) -> torch.device:
    parameter = next(module.parameters(), None)
    return parameter.device if parameter is not None else fallback


def _update_top(state: _Collected, z: torch.Tensor, images: torch.Tensor, k: int) -> None:
    """Keep the k highest-activating images of every feature seen so far (earlier wins ties)."""
    index = torch.arange(state.seen, state.seen + len(z))
    values = z.T.cpu()
    if state.top_values is not None:
        values = torch.cat([state.top_values, values], dim=1)
        index = torch.cat([state.top_index, index.expand(len(values), -1)], dim=1)
    else:
        index = index.expand(len(values), -1)
    keep = torch.argsort(values, dim=1, descending=True, stable=True)[:, :k]
    state.top_values = values.gather(1, keep)
    state.top_index = index.gather(1, keep)
    wanted = set(state.top_index.flatten().tolist())
    for offset, image in enumerate(images):
        if state.seen + offset in wanted:
            state.stored[state.seen + offset] = image.detach().to("cpu", torch.float16)
    state.stored = {i: v for i, v in state.stored.items() if i in wanted}


@torch.no_grad()
def _collect(
    imodel: InterpretableModel,
    loader: Any,
    reference: nn.Module | None,
    max_pixel_images: int,
    top_images: int,
    batch_size: int,
    progress: bool,
    config: CheckConfig,
) -> _Collected:
    device = imodel.head.weight.device
    reference_device = _device_of(reference, device) if reference is not None else device
    weight = imodel.head.weight
    spatial = has_spatial_layer(imodel)
    capture = FeatureCapture(imodel.backbone, imodel.spec, with_maps=spatial)
    expected = dataset_length(loader)  # one buffer each, sized up front when the loader tells
    state = _Collected(
        z=GrowingRows(expected),
        predicted=GrowingRows(expected),
        reference=_reference_tally(reference, config, expected),
        labels=GrowingRows(expected),
    )
    batches = iterate(as_batches(loader, batch_size=batch_size))
    bar = tqdm(total=expected, unit="img", desc="check", disable=not progress)
    with bar, capture.attached():
        for images, labels in batches:
            images = images.to(device)
            output = imodel.backbone(images)
            pooled, maps = capture.features(), capture.maps
            capture.clear()
            z = imodel.bottleneck(pooled)
            logits = imodel.head(z)
            if labels.numel() and (labels.min() < 0 or labels.max() >= logits.shape[1]):
                raise DataError(
                    f"Labels must lie in [0, {logits.shape[1]}) for a model with "
                    f"{logits.shape[1]} classes; remap them to the classes the model was converted with."
                )
            host_logits = logits.float().cpu()  # this batch's only: reduced to per-image results
            if reference is imodel.backbone:
                state.reference.add(host_logits, logits_of(output).float().cpu())
            elif reference is not None:
                reference_logits = logits_of(reference(images.to(reference_device)))
                state.reference.add(host_logits, reference_logits.float().cpu())
            if maps is not None:
                projected = imodel.bottleneck.project_maps(maps)
                predicted = logits.argmax(dim=1)
                state.loc.append(M.localisation_per_image(projected, weight, predicted))
                state.sid.append(
                    M.localisation_per_image(projected, weight, predicted, scale_invariant=True)
                )
            need = max_pixel_images - state.n_pixel()
            if need > 0:
                state.pixel_images.append(images[:need].detach().cpu().float())
            if top_images:
                _update_top(state, z, images, top_images)
            state.z.append(z.float().cpu())
            state.predicted.append(host_logits.argmax(dim=1))
            state.labels.append(labels.cpu())
            state.seen += len(labels)
            bar.update(len(labels))
    if not state.seen:
        raise DataError("The loader yielded no images. Check that the dataset is not empty.")
    return state


def _mask_entry(entry: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(objects (n, H, W) bool, their concepts (n, K) bool or None) from one user mask entry."""
    concepts = None
    if isinstance(entry, tuple) and len(entry) == 2:
        entry, concepts = entry
        concepts = torch.as_tensor(concepts).bool()
    mask = torch.as_tensor(entry)
    if mask.ndim == 2:
        mask = mask[None]
    if mask.ndim != 3:
        raise DataError(
            f"A mask must be (H, W) or (objects, H, W), got shape {tuple(mask.shape)}; pass masks "
            "as a (N, H, W) tensor, a list of masks, or a callable index -> mask."
        )
    if concepts is not None and concepts.shape[0] != mask.shape[0]:
        raise DataError(
            f"{mask.shape[0]} object masks but {concepts.shape[0]} rows of object concepts."
        )
    return mask.bool(), concepts


def _load_masks(
    masks: Any, n: int, size: tuple[int, int]
) -> list[tuple[torch.Tensor, torch.Tensor | None]]:
    """Masks of the first n images the loader yields, resized (nearest) to the input size."""
    if callable(masks):
        entries = [masks(i) for i in range(n)]
    else:
        if len(masks) < n:
            raise DataError(
                f"masks cover {len(masks)} images but the pixel checks use the first {n}; give one "
                "mask per image, in loader order."
            )
        entries = [masks[i] for i in range(n)]
    out = []
    for entry in entries:
        mask, concepts = _mask_entry(entry)
        if tuple(mask.shape[1:]) != size:
            mask = torch.nn.functional.interpolate(mask[None].float(), size=size, mode="nearest")[0]
        out.append((mask.bool(), concepts))
    return out


def _concept_index(imodel: InterpretableModel, names: Sequence[str] | None) -> list[int | None]:
    """Per feature, the column of its best concept name in `names` (None when unnamed/unknown)."""
    lookup = {name: k for k, name in enumerate(names or [])}
    return [lookup.get(c[0]["concept"]) if c else None for c in imodel.concepts]


def _localisation(
    loaded: list[tuple[torch.Tensor, torch.Tensor | None]],
    relevance: dict[tuple[str, str], torch.Tensor],
    pairs: tuple[torch.Tensor, torch.Tensor, torch.Tensor | None],
    concept_of: list[int | None],
) -> dict[str, Any]:
    """Share of attribution mass inside the objects, and of named features inside their concept."""
    union = torch.stack([m.any(dim=0) for m, _ in loaded])
    result: dict[str, Any] = {"object_area": float(union.float().mean())}
    for (level, method), maps in relevance.items():
        result[f"object_{level}_{method}"] = M.nanmean(M.mass_inside(maps, union))
    rows, features, feature_maps = pairs
    inside, areas = [], []
    if feature_maps is not None:
        for row, feature, heat in zip(rows.tolist(), features.tolist(), feature_maps):
            k = concept_of[feature]
            objects, concepts = loaded[row]
            if k is None or concepts is None or not concepts[:, k].any():
                continue
            mask = objects[concepts[:, k]].any(dim=0)
            inside.append(float(M.mass_inside(heat[None], mask[None])[0]))
            areas.append(float(mask.float().mean()))
    if inside:
        result["concept_gradcam"] = M.nanmean(torch.tensor(inside))
        result["concept_area"] = float(torch.tensor(areas).mean())
        result["concept_pairs"] = len(inside)
    return result


def _feature_pairs(
    weight: torch.Tensor, z: torch.Tensor, predicted: torch.Tensor, per_image: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(rows, features): each image's top features by contribution that its class uses."""
    contribution = M.contributions(z, weight.cpu(), predicted)
    order = contribution_order(contribution)[:, :per_image]
    used = weight.cpu()[predicted[:, None], order] != 0
    rows = torch.arange(len(z))[:, None].expand_as(order)
    return rows[used], order[used]


def _gradcam_pairs(
    imodel: InterpretableModel,
    images: torch.Tensor,
    rows: torch.Tensor,
    features: torch.Tensor,
    batch_size: int,
) -> torch.Tensor:
    device = imodel.head.weight.device
    if not len(rows):
        return torch.zeros(0, *images.shape[2:])
    return batched(
        lambda x, t: gradcam(imodel, x.to(device).float(), t.to(device), "feature").cpu(),
        images[rows],
        features,
        batch_size,
    ).clamp_min(0)


def _timed(
    timings: dict[str, float], name: str, fn: Callable[[], Any], progress: bool = False
) -> Any:
    start = time.perf_counter()
    value = fn()
    seconds = time.perf_counter() - start
    timings[name] = timings.get(name, 0.0) + seconds
    if progress:
        _done(name, seconds)
    return value


# how the progress lines name the parts of a check (the forward pass and the pixel checks
# show their own bars)
_STAGE_NAMES = {
    "concept_deletion": "concept deletion",
    "feature_maps": "Grad-CAM maps",
    "cards": "feature cards",
    "metrics": "interpretability metrics and truth",
    "mas": "MAS image pairs",
    "am_pi": "AM-PI",
}


def _done(name: str, seconds: float) -> None:
    """One progress line when a part of the check has finished."""
    label = _STAGE_NAMES.get(name, name.removeprefix("metric.").replace("_", " "))
    progress_line(f"check: {label} ... done in {seconds:.1f} s")


def check(
    imodel: InterpretableModel,
    loader: Iterable | Any,
    reference: nn.Module | None = None,
    config: CheckConfig | None = None,
    *,
    masks: Any = None,
    backgrounds: Any = None,
    attributes: torch.Tensor | None = None,
    concept_names: Sequence[str] | None = None,
    concept_labels: torch.Tensor | None = None,
    **options: Any,
) -> Report:
    """Measure fidelity, concept- and pixel-level faithfulness and interpretability metrics.

    `reference` is the original model (fidelity needs it). `config` (a CheckConfig) holds the
    thresholds and budgets; keyword `options` are CheckConfig fields that override it
    (`check(m, data, min_fidelity=0.9)`). `masks` (per image in loader order:
    a (N, H, W) tensor, a list, or a callable index -> mask, (objects, H, W) masks or
    (masks, object_concepts) as `SyntheticConceptDataset.masks` returns) enables localisation
    and the per-feature background reliance (with `backgrounds`: object-free images the
    background swaps take their backgrounds from, for reliance and the consistency swap);
    `attributes` (classes x attributes) enables Structural Grounding. `concept_labels` (images x
    concepts, loader order) or `attributes`, with `concept_names` for their columns, enable the
    truth of the explanation (retrofit.check.truth); a dataset with `concepts` and
    `concept_names` (the synthetic world) provides them itself, and its `class_signatures` (the
    concepts that define each class) are then the class truth. Registered metrics
    (retrofit.check.register_metric) run after the built-in parts, results under their names.
    """
    if not isinstance(imodel, InterpretableModel):
        raise ConfigError(
            f"check() needs an InterpretableModel (from retrofit.convert or retrofit.load), got "
            f"{type(imodel).__name__}."
        )
    config = CheckConfig.resolve(config, options)
    limits = config.limits()
    missing = [name for name in _NEEDS_REFERENCE if name in limits and reference is None]
    if missing:
        raise ConfigError(
            f"{missing} compare with the original model: pass reference=<the model you converted>."
        )
    consistency = config.consistency
    if not consistency and ("min_consistency" in limits or "max_consistency_flip_rate" in limits):
        raise ConfigError(
            "min_consistency and max_consistency_flip_rate need the consistency check: pass "
            "consistency=True (or a dict of ConsistencySettings fields)."
        )
    settings = PixelSettings(
        ig_steps=config.ig_steps,
        curve_steps=config.curve_steps,
        perturb_samples=config.perturb_samples,
        internal_batch_size=config.internal_batch_size,
        batch_size=config.batch_size,
    )
    dataset = getattr(loader, "dataset", loader)
    truth_given = concept_labels is not None or attributes is not None
    if concept_names is None:
        concept_names = getattr(dataset, "concept_names", None)
    class_truth = None
    if concept_labels is None and attributes is None and _in_order(loader):
        concept_labels = getattr(dataset, "concepts", None)
        class_truth = getattr(dataset, "class_signatures", None)
    plan = _Plan(
        limits,
        tuple(config.pixel_methods),
        settings,
        config.max_pixel_images,
        masks,
        attributes,
        backgrounds,
        concept_names,
        concept_labels,
        truth_given,
        config.top_images,
        config.max_explanations,
        config.seed,
        config.progress,
        config.raise_on_failure,
        config.mas_pairs,
        config.am_pi_pairs,
        consistency=ConsistencySettings.parse(consistency) if consistency else None,
        config=config,
        class_truth=class_truth,
    )

    modules = [imodel] + ([reference] if reference is not None else [])
    modes = [m.training for m in modules]
    for module in modules:
        module.eval()
    try:
        return _check(imodel, loader, reference, plan)
    finally:
        for module, mode in zip(modules, modes):
            module.train(mode)


def _in_order(loader: Any) -> bool:
    """Whether a loader yields its dataset in index order (per-image labels then line up)."""
    sampler = getattr(loader, "sampler", None)
    return sampler is None or isinstance(sampler, torch.utils.data.SequentialSampler)


def _check(
    imodel: InterpretableModel, loader: Any, reference: nn.Module | None, plan: _Plan
) -> Report:
    timings: dict[str, float] = {}
    device = imodel.head.weight.device
    weight, bias = imodel.head.weight.detach(), imodel.head.bias.detach()
    state = _timed(
        timings,
        "forward",
        lambda: _collect(
            imodel,
            loader,
            reference,
            plan.max_pixel_images,
            plan.top_images,
            plan.settings.batch_size,
            plan.progress,
            plan.config or CheckConfig(),
        ),
    )
    z, labels, predicted = state.z.tensor(), state.labels.tensor(), state.predicted.tensor()
    tally = state.reference
    reference_predicted = tally.reference_predicted() if tally is not None else None
    deletion_images = (plan.config or CheckConfig()).deletion_images
    results: dict[str, Any] = {
        "fidelity": _timed(
            timings,
            "fidelity",
            lambda: fidelity_of_predictions(predicted, labels, reference_predicted),
            plan.progress,
        ),
        "concept_deletion": _timed(
            timings,
            "concept_deletion",
            lambda: concept_deletion(
                z, weight.cpu(), bias.cpu(), seed=plan.seed, max_images=deletion_images
            ),
            plan.progress,
        ),
    }
    if tally is not None:
        results["fidelity"].update(tally.fidelity_at_k())

    pixel_images = torch.cat(state.pixel_images) if state.pixel_images else torch.zeros(0)
    n_pixel = len(pixel_images)
    pixel_predicted = predicted[:n_pixel]
    rows, features = _feature_pairs(weight, z[:n_pixel], pixel_predicted, FEATURE_MAPS_PER_IMAGE)
    contribution = M.contributions(z[:n_pixel], weight.cpu(), pixel_predicted)
    top_feature = contribution_order(contribution)[:, 0]
    relevance: dict[tuple[str, str], torch.Tensor] = {}
    with torch.enable_grad():
        if n_pixel and plan.methods:
            pixel, relevance, pixel_timings = pixel_faithfulness(
                imodel,
                pixel_images.to(device),
                pixel_predicted,
                top_feature,
                plan.methods,
                plan.settings,
                plan.seed,
                plan.progress,
            )
            timings.update({f"pixel.{k}": v for k, v in pixel_timings.items()})
            results["pixel"] = pixel
        draw_maps = n_pixel > 0 and "gradcam" in plan.methods and has_spatial_layer(imodel)
        feature_maps = (
            _timed(
                timings,
                "feature_maps",
                lambda: _gradcam_pairs(
                    imodel, pixel_images, rows, features, plan.settings.batch_size
                ),
                plan.progress,
            )
            if draw_maps
            else None
        )
        before = timings.get("feature_maps", 0.0)
        cards = _timed(
            timings,
            "feature_maps",
            lambda: _feature_cards(
                imodel, state, "gradcam" in plan.methods, plan.settings.batch_size
            ),
        )
        if plan.progress:
            _done("cards", timings["feature_maps"] - before)

    start = time.perf_counter()
    results["metrics"] = _metrics(imodel, z, labels, predicted, state, plan.attributes, plan.seed)
    if plan.masks is not None and n_pixel:
        loaded = _load_masks(plan.masks, n_pixel, tuple(pixel_images.shape[2:]))
        results["metrics"]["localisation"] = _localisation(
            loaded,
            relevance,
            (rows, features, feature_maps),
            _concept_index(imodel, plan.concept_names),
        )
    results["truth"] = truth_check(
        imodel,
        z,
        labels,
        plan.attributes if plan.attributes is not None else plan.class_truth,
        plan.concept_labels,
        plan.concept_names,
        explicit=plan.truth_given,
    )
    timings["metrics"] = time.perf_counter() - start
    if plan.progress:
        _done("metrics", timings["metrics"])
    if plan.consistency is not None:
        results["consistency"], consistency_examples = _timed(
            timings,
            "consistency",
            lambda: consistency_report(
                imodel,
                loader,
                reference,
                plan.consistency,
                plan.masks,
                plan.progress,
                plan.backgrounds,
            ),
            plan.progress,
        )

    results.update(
        run_metrics(
            MetricInputs(
                imodel,
                loader,
                reference,
                z,
                None,
                tally.kept_logits() if tally is not None else None,
                labels,
                predicted,
                plan.config or CheckConfig(),
                results,
                reference_predicted=reference_predicted,
                reference_logits_note=_reference_note(tally),
                masks=plan.masks,
                backgrounds=plan.backgrounds,
            ),
            timings,
        )
    )
    if plan.progress:
        for name in [key for key in timings if key.startswith("metric.")]:
            _done(name, timings[name])
    results["meta"] = {
        "n_images": int(state.seen),
        "n_pixel_images": n_pixel,
        "n_classes": imodel.num_classes,
        "n_features": imodel.n_features,
        "method": imodel.config.method,
        "layer": imodel.stats.get("layer"),
        "maps_module": imodel.spec.maps_module,
        "pixel_methods": list(plan.methods),
        "settings": {
            "ig_steps": plan.settings.ig_steps,
            "curve_steps": plan.settings.curve_steps,
            "perturb_samples": plan.settings.perturb_samples,
            "sensitivity_images": plan.settings.sensitivity_images,
        },
        "seed": plan.seed,
        "device": str(device),
        "reference": reference is not None,
        "deletion_images": results["concept_deletion"]["n_images"],
        "deletion_images_cap": deletion_images,
        "timings": timings,
    }
    visuals = {
        "weight": weight.cpu(),
        "class_names": list(imodel.class_names),
        "feature_names": [imodel.feature_name(j) for j in range(imodel.n_features)],
        "pair_names": {pair: imodel.pair_name(*pair) for pair in imodel.pair_concepts},
        "model_fingerprint": _head_fingerprint(imodel),
        "cards": cards,
        "explanations": _explanations(
            imodel,
            pixel_images,
            z[:n_pixel],
            labels[:n_pixel],
            pixel_predicted,
            reference_predicted[:n_pixel] if reference_predicted is not None else None,
            relevance.get(("class", "gradcam")),
            (rows, features, feature_maps),
            plan.max_explanations,
        ),
    }
    if plan.mas_pairs:
        visuals["mas"] = _timed(
            timings,
            "mas",
            lambda: mas_visuals(
                loader,
                z,
                labels,
                predicted,
                weight,
                (visuals["class_names"], visuals["feature_names"]),
                plan.mas_pairs,
                plan.settings.batch_size,
            ),
            plan.progress,
        )
        with torch.enable_grad():
            for pair in [p for p in visuals["mas"] if p["images"]][: plan.am_pi_pairs]:
                image, values = _timed(
                    timings,
                    "am_pi",
                    lambda p=pair: am_pi(
                        imodel.concept_activations, p["images"][0].to(device), p["index"]
                    ),
                )
                pair["am_pi"], pair["am_pi_values"] = image.cpu(), values
        if plan.progress and "am_pi" in timings:
            _done("am_pi", timings["am_pi"])
    if plan.consistency is not None:
        visuals["consistency"] = consistency_examples
    report = Report(results, evaluate_thresholds(results, plan.limits), visuals)
    for failure in report.failures:
        logger.warning("check threshold failed: %s", failure.describe())
    if plan.raise_on_failure:
        report.raise_for_thresholds()
    return report


def _reference_tally(
    reference: nn.Module | None, config: CheckConfig, expected: int | None
) -> ReferenceTally | None:
    """Per-batch bookkeeping of the reference's logits; full ones only for registered metrics."""
    if reference is None:
        return None
    wanted = bool(registered_metrics(config.metrics))
    return ReferenceTally(wanted, config.reference_logits_budget_mb * MB, expected)


def _reference_note(tally: ReferenceTally | None) -> str | None:
    """Why MetricInputs.reference_logits is None, when it is."""
    if tally is None:
        return "reference_logits: no reference model was given to check()"
    return tally.note


def _metrics(
    imodel: InterpretableModel,
    z: torch.Tensor,
    labels: torch.Tensor,
    predicted: torch.Tensor,
    state: _Collected,
    attributes: torch.Tensor | None,
    seed: int,
) -> dict[str, Any]:
    weight = imodel.head.weight.detach().cpu()
    loc = state.loc.tensor() if state.loc else None
    sid = state.sid.tensor() if state.sid else None
    return {
        "features_used": M.features_used(weight),
        "features_per_class": M.features_per_class(weight),
        f"diversity@{M.DIVERSITY_K}": M.nanmean(loc) if loc is not None else None,
        f"sid@{M.DIVERSITY_K}": M.nanmean(sid) if sid is not None else None,
        "diversity_images": int((~torch.isnan(loc)).sum()) if loc is not None else 0,
        "dependence": M.dependence(z, weight, predicted),
        "class_independence": M.class_independence(z, labels, imodel.num_classes),
        "contrastiveness": M.contrastiveness(z, seed=seed),
        "structural_grounding": (
            M.structural_grounding(weight, attributes) if attributes is not None else None
        ),
        "correlation": M.correlation(z),
        "conciseness": M.conciseness(z, weight, predicted),
        "dead_attributes": AM.dead_share(z),
        "attribute_entropy": AM.attribute_entropy(z)["entropy"],
        "attribute_entropy_max": AM.attribute_entropy(z)["max"],
    }


def _feature_cards(
    imodel: InterpretableModel, state: _Collected, draw: bool, batch_size: int
) -> list[dict[str, Any]]:
    """Per feature: its names, the classes using it, and its top images with Grad-CAM."""
    weight = imodel.head.weight.detach().cpu()
    cards = []
    pairs_rows, pairs_features, image_ids = [], [], []
    for j in range(imodel.n_features):
        ids = state.top_index[j].tolist() if state.top_index is not None else []
        image_ids.append(ids)
        pairs_rows.extend(ids)
        pairs_features.extend([j] * len(ids))
    heatmaps = None
    if draw and has_spatial_layer(imodel) and pairs_rows:
        order = sorted(state.stored)
        position = {i: p for p, i in enumerate(order)}
        images = torch.stack([state.stored[i] for i in order]).float()
        heatmaps = _gradcam_pairs(
            imodel,
            images,
            torch.tensor([position[i] for i in pairs_rows]),
            torch.tensor(pairs_features),
            batch_size,
        )
    offset = 0
    for j, ids in enumerate(image_ids):
        column = weight[:, j]
        cards.append(
            {
                "index": j,
                "name": imodel.feature_name(j),
                "backbone_index": int(imodel.bottleneck.selected[j]),
                "concepts": list(imodel.concepts[j]),
                "classes": [
                    (imodel.class_names[c], int(torch.sign(column[c])))
                    for c in torch.nonzero(column).flatten().tolist()
                ],
                "activations": state.top_values[j].tolist() if state.top_values is not None else [],
                "images": [state.stored[i].float() for i in ids],
                "heatmaps": list(heatmaps[offset : offset + len(ids)])
                if heatmaps is not None
                else None,
            }
        )
        offset += len(ids)
    return cards


def _explanations(
    imodel: InterpretableModel,
    images: torch.Tensor,
    z: torch.Tensor,
    labels: torch.Tensor,
    predicted: torch.Tensor,
    reference_predicted: torch.Tensor | None,
    class_maps: torch.Tensor | None,
    pairs: tuple[torch.Tensor, torch.Tensor, torch.Tensor | None],
    limit: int,
) -> list[dict[str, Any]]:
    """Per explained image: the decision, its feature contributions and the heatmaps."""
    weight = imodel.head.weight.detach().cpu()
    bias = imodel.head.bias.detach().cpu()
    rows, features, feature_maps = pairs
    names = imodel.class_names
    out = []
    for i in range(min(limit, len(images))):
        c = int(predicted[i])
        v = z[i] * weight[c]
        used = torch.nonzero(weight[c]).flatten()
        used = used[torch.argsort(v[used].abs(), descending=True, stable=True)]
        maps = []
        if feature_maps is not None:
            for p in torch.nonzero(rows == i).flatten().tolist()[:3]:
                maps.append((imodel.pair_name(c, int(features[p])), feature_maps[p]))
        out.append(
            {
                "image": images[i],
                "label": names[int(labels[i])],
                "predicted": names[c],
                "reference": names[int(reference_predicted[i])]
                if reference_predicted is not None
                else None,
                "logit": float(v.sum() + bias[c]),
                "bias": float(bias[c]),
                "contributions": [(imodel.pair_name(c, int(j)), float(v[j])) for j in used],
                "heatmap": class_maps[i].clamp_min(0) if class_maps is not None else None,
                "feature_maps": maps,
            }
        )
    return out


def _head_fingerprint(imodel: InterpretableModel) -> str:
    """Names the model in the report's edits files (see retrofit.editing.file)."""
    from retrofit.editing.apply import head_fingerprint

    return head_fingerprint(imodel)
