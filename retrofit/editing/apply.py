"""edit(): apply human edits to an interpretable model and get back the best model that obeys them.

Renames only change names. Every other edit is a constraint: a method that re-solves its head
under edits says so in its traits (qpm: retrofit.methods.qpm.edit re-solves the assignment
program, the selection kept, dropped features' slots refilled from the best unused channels);
for the others (qsenn, sparse, dense) the head is refitted on an edited support
(retrofit.solvers.masked_refit). The bottleneck is then refitted
from the cached features, briefly, starting from its trained state. The result carries a diff,
accuracy and fidelity before and after, and a provenance record that the export keeps.
"""

from __future__ import annotations

import copy
import datetime
import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from retrofit.editing.parse import (
    DEFAULT_EDIT_TIME_LIMIT,
    EditPlan,
    class_counts,
    parse_edits,
    plan_edits,
)
from retrofit.errors import EditError, FeatureError, SolverError
from retrofit.extraction.featureset import FeatureSet
from retrofit.extraction.fingerprint import model_fingerprint
from retrofit.fitting.bottleneck import (
    FixedHead,
    bottleneck_epochs,
    class_diversity_default,
    finetune_bottleneck,
)
from retrofit.methods.base import method_traits, shared_magnitude
from retrofit.model.interpretable import InterpretableModel
from retrofit.solvers.masked_refit import refit_head

logger = logging.getLogger(__name__)

# the edit refits the bottleneck from its trained state: a tenth of a conversion's epochs
EPOCH_SHARE = 0.1


@dataclass
class EditResult:
    """The edited model, what changed, and the figures before and after."""

    model: InterpretableModel
    diff: dict[str, list[dict[str, Any]]]
    before: dict[str, dict[str, float]]
    after: dict[str, dict[str, float]]
    seconds: dict[str, float] = field(default_factory=dict)
    record: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> str:
        """A few lines for a terminal: the diff's sizes and the figures before → after."""
        lines = [f"{key}: {len(value)}" for key, value in self.diff.items() if value]
        for split, values in self.after.items():
            for key, value in values.items():
                old = self.before.get(split, {}).get(key)
                was = f"{old:.4f} -> " if isinstance(old, float) else ""
                lines.append(f"{split} {key}: {was}{value:.4f}")
        lines.append(f"time: {self.seconds.get('total', 0.0):.2f} s")
        return "\n".join(lines)


def head_fingerprint(imodel: InterpretableModel) -> str:
    """Hash of what an edit changes (bottleneck and head), naming the model an edits file is for."""
    return model_fingerprint(nn.ModuleDict({"bottleneck": imodel.bottleneck, "head": imodel.head}))


def edit(
    imodel: InterpretableModel,
    edits: Any,
    features: FeatureSet | None = None,
    *,
    loader: Any = None,
    cache_dir: str | None = None,
    eval_features: FeatureSet | None = None,
    time_limit: float | None = None,
    epochs: int | None = None,
    progress: bool = False,
) -> EditResult:
    """Apply `edits` (see retrofit.editing.parse) and return the edited model; `imodel` is unchanged.

    Edits other than renames need the training features: a FeatureSet (`features`), or a
    `loader` (with `cache_dir` the cached extraction is reused). `eval_features` adds held-out
    figures. Conflicting or infeasible edits raise EditError before anything is solved.
    """
    began = time.perf_counter()
    parsed = parse_edits(imodel, edits)
    plan = plan_edits(imodel, parsed)
    train = _training_features(imodel, features, loader, cache_dir, progress)
    if plan.needs_solve and train is None:
        raise EditError(
            "forbid, pin, drop and per_class edits re-solve the head on the training features: "
            "pass features=FeatureSet (retrofit.extract) or loader= (and cache_dir=); on the "
            "command line, --train DATA."
        )
    splits = {"train": train, "eval": eval_features}
    splits = {name: fs for name, fs in splits.items() if fs is not None}
    for fs in splits.values():
        _check_features(imodel, fs)
    before = {name: figures(imodel, fs) for name, fs in splits.items()}
    edited = _copy(imodel)
    seconds: dict[str, float] = {}
    if plan.needs_solve:
        assert train is not None
        start = time.perf_counter()
        limit = DEFAULT_EDIT_TIME_LIMIT if time_limit is None else float(time_limit)
        swapped = _solve(edited, plan, train, limit, progress)
        seconds["solve"] = time.perf_counter() - start
        start = time.perf_counter()
        _refit_bottleneck(edited, train, epochs)
        seconds["refit"] = time.perf_counter() - start
        _reset_names(edited, imodel, swapped)
    _apply_renames(edited, plan)
    _verify(edited, imodel, plan)
    start = time.perf_counter()
    after = {name: figures(edited, fs) for name, fs in splits.items()}
    seconds["check"] = time.perf_counter() - start
    seconds["total"] = time.perf_counter() - began
    diff = model_diff(imodel, edited)
    record = {
        "edits": [e.to_dict(imodel) for e in parsed],
        "time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "previous_fingerprint": head_fingerprint(imodel),
        "fingerprint": head_fingerprint(edited),
        "before": before,
        "after": after,
        "diff": diff,
        "seconds": seconds,
    }
    edited.edits = [*imodel.edits, record]
    return EditResult(edited.eval(), diff, before, after, seconds, record)


@torch.no_grad()
def figures(imodel: InterpretableModel, fs: FeatureSet) -> dict[str, float]:
    """Accuracy on the labels and fidelity (top-1 agreement with the original model's logits)."""
    device = imodel.head.weight.device
    predicted = imodel.forward_features(fs.features.to(device)).argmax(dim=1).cpu()
    out = {"accuracy": float((predicted == fs.labels).float().mean())}
    if fs.logits is not None:
        out["fidelity"] = float((predicted == fs.logits.argmax(dim=1)).float().mean())
    return out


def model_diff(old: InterpretableModel, new: InterpretableModel) -> dict[str, list[dict[str, Any]]]:
    """Links added and removed, signs flipped, features swapped (new channel) and renamed."""
    w_old, w_new = old.head.weight.cpu(), new.head.weight.cpu()
    swapped = (old.bottleneck.selected.cpu() != new.bottleneck.selected.cpu()).tolist()
    diff: dict[str, list[dict[str, Any]]] = {
        "links_added": [],
        "links_removed": [],
        "signs_flipped": [],
        "features_swapped": [],
        "renamed": [],
    }

    def link(model: InterpretableModel, c: int, j: int, w: torch.Tensor) -> dict[str, Any]:
        return {
            "class": c,
            "class_name": model.class_names[c],
            "feature": j,
            "feature_name": model.pair_name(c, j),
            "sign": int(torch.sign(w[c, j])),
        }

    for c in range(old.num_classes):
        for j in range(old.n_features):
            had, has = bool(w_old[c, j] != 0), bool(w_new[c, j] != 0)
            if had and (not has or swapped[j]):
                diff["links_removed"].append(link(old, c, j, w_old))
            if has and (not had or swapped[j]):
                diff["links_added"].append(link(new, c, j, w_new))
            if (
                had
                and has
                and not swapped[j]
                and torch.sign(w_old[c, j]) != torch.sign(w_new[c, j])
            ):
                diff["signs_flipped"].append(link(new, c, j, w_new))
    for j in range(old.n_features):
        if swapped[j]:
            diff["features_swapped"].append(
                {
                    "feature": j,
                    "from_backbone_index": int(old.bottleneck.selected[j]),
                    "to_backbone_index": int(new.bottleneck.selected[j]),
                    "from_name": old.feature_name(j),
                    "to_name": new.feature_name(j),
                }
            )
        elif old.feature_name(j) != new.feature_name(j):
            diff["renamed"].append(
                {"feature": j, "from": old.feature_name(j), "to": new.feature_name(j)}
            )
    for (c, j), pair in sorted(new.pair_concepts.items()):
        if pair.get("source") == "human" and old.pair_name(c, j) != pair["concept"]:
            diff["renamed"].append(
                {"class": c, "feature": j, "from": old.pair_name(c, j), "to": pair["concept"]}
            )
    return diff


def _training_features(
    imodel: InterpretableModel,
    features: FeatureSet | None,
    loader: Any,
    cache_dir: str | None,
    progress: bool,
) -> FeatureSet | None:
    if features is not None:
        if not isinstance(features, FeatureSet):
            raise EditError(
                f"features must be a retrofit.FeatureSet (from retrofit.extract), got "
                f"{type(features).__name__}."
            )
        return features
    if loader is None:
        return None
    from retrofit.extraction.features import extract

    return extract(
        imodel.backbone,
        loader,
        feature_layer=imodel.config.feature_layer or imodel.spec.name,
        pooled_layers=list(imodel.spec.pooled_layers),
        class_names=imodel.class_names,
        cache_dir=cache_dir,
        batch_size=imodel.config.batch_size,
        progress=progress,
    )


def _check_features(imodel: InterpretableModel, fs: FeatureSet) -> None:
    if fs.dim != imodel.bottleneck.in_features:
        raise FeatureError(
            f"the features have {fs.dim} channels but the model's bottleneck reads "
            f"{imodel.bottleneck.in_features}: extract them from this model's backbone and layer."
        )
    if len(fs) and int(fs.labels.max()) >= imodel.num_classes:
        raise FeatureError(
            f"the features' labels go up to {int(fs.labels.max())} but the model has "
            f"{imodel.num_classes} classes."
        )


def _copy(imodel: InterpretableModel) -> InterpretableModel:
    """A new model sharing the (frozen) backbone, with its own bottleneck, head and names."""
    edited = InterpretableModel(
        imodel.backbone,
        imodel.spec,
        copy.deepcopy(imodel.bottleneck),
        copy.deepcopy(imodel.head),
        imodel.config,
        class_names=imodel.class_names,
        stats=copy.deepcopy(imodel.stats),
    )
    edited.concepts = copy.deepcopy(imodel.concepts)
    edited.pair_concepts = copy.deepcopy(imodel.pair_concepts)
    return edited


def _solve(
    imodel: InterpretableModel, plan: EditPlan, train: FeatureSet, limit: float, progress: bool
) -> list[int]:
    """Re-solve the head in place under the plan; the feature slots whose channel changed."""
    resolve = method_traits(imodel.config.method).resolve_edits
    if resolve is not None:
        return resolve(imodel, plan, train, limit, progress)
    _refit_linear(imodel, plan, train)
    return []


def _refit_linear(imodel: InterpretableModel, plan: EditPlan, train: FeatureSet) -> None:
    device = imodel.head.weight.device
    z = imodel.bottleneck.transform(train.features.to(device)).cpu()
    weight, bias = imodel.head.weight.cpu(), imodel.head.bias.cpu()
    allowed = torch.ones_like(weight, dtype=torch.bool)
    allowed[:, sorted(plan.dropped)] = False
    pinned = torch.zeros_like(allowed)
    for c, j in plan.forbidden:
        allowed[c, j] = False
    for c, j in plan.pinned:
        pinned[c, j] = True
    traits = method_traits(imodel.config.method)
    if traits.free_counts:
        counts = [plan.counts.get(c, int(allowed[c].sum())) for c in range(imodel.num_classes)]
    else:
        counts = class_counts(imodel, plan)
    scale = shared_magnitude(weight) if traits.shared_magnitude else None
    new_weight, new_bias = refit_head(
        z, train.labels.cpu(), weight, bias, allowed, pinned, counts, scale
    )
    imodel.head = FixedHead(new_weight, new_bias).to(device)


def _refit_bottleneck(imodel: InterpretableModel, train: FeatureSet, epochs: int | None) -> None:
    config = imodel.config
    if config.finetune == "none":
        return
    if epochs is None:
        epochs = max(1, math.ceil(EPOCH_SHARE * bottleneck_epochs(config, len(train))))
    if epochs == 0:
        return
    device = imodel.head.weight.device
    finetune_bottleneck(
        imodel.bottleneck,
        imodel.head,
        train.features.to(device),
        train.labels.to(device),
        config,
        logits=train.logits,
        epochs=epochs,
        class_diversity=class_diversity_default(config),
    )
    imodel.bottleneck.eval()


def _reset_names(edited: InterpretableModel, old: InterpretableModel, swapped: list[int]) -> None:
    """Swapped-in features have no name yet; class-feature names stay only on surviving links."""
    for j in swapped:
        edited.concepts[j] = []
    weight = edited.head.weight
    edited.pair_concepts = {
        (c, j): pair
        for (c, j), pair in old.pair_concepts.items()
        if j not in swapped and bool(weight[c, j] != 0)
    }


def _apply_renames(edited: InterpretableModel, plan: EditPlan) -> None:
    for j, name in plan.renames.items():
        rest = [entry for entry in edited.concepts[j] if entry.get("concept") != name]
        edited.concepts[j] = [{"concept": name, "source": "human"}, *rest]
    for pair, name in plan.pair_renames.items():
        edited.pair_concepts[pair] = {"concept": name, "source": "human"}


def _verify(edited: InterpretableModel, old: InterpretableModel, plan: EditPlan) -> None:
    """Every edit holds exactly; a violation is a bug, never returned silently."""
    weight = edited.head.weight.cpu()
    problems = [
        f"forbidden link {p} is used"
        for p in plan.forbidden
        if p[1] not in plan.dropped and weight[p] != 0
    ]
    problems += [f"pinned link {p} is missing" for p in plan.pinned if weight[p] == 0]
    swapped = edited.bottleneck.selected.cpu() != old.bottleneck.selected.cpu()
    problems += [
        f"dropped feature {j} is still used"
        for j in plan.dropped
        if not swapped[j] and bool((weight[:, j] != 0).any())
    ]
    problems += [
        f"class {c} uses {int((weight[c] != 0).sum())} features, not {k}"
        for c, k in plan.counts.items()
        if int((weight[c] != 0).sum()) != k
    ]
    if problems:
        raise SolverError("the edited model does not respect the edits: " + "; ".join(problems))
