"""Local explanations: why the interpretable model predicted a class for one image.

The head is linear in the bottleneck's outputs, so every logit is exactly its bias plus one
contribution (weight × activation) per feature the class uses; an explanation lists those, and
against the runner-up class, the features only one of the two classes uses.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from retrofit.errors import DataError
from retrofit.methods.flint.relevance import DEFAULT_TAU, check_tau, local_relevance

if (
    TYPE_CHECKING
):  # retrofit.model.interpretable imports this module lazily; a runtime import would be circular
    from retrofit.model.interpretable import InterpretableModel


@dataclass
class FeatureContribution:
    """One feature's share of one class's logit."""

    feature: int  # position among the model's selected features
    backbone_index: int  # index into the backbone's penultimate features
    name: str  # concept name, or a neutral id when the feature has none
    activation: float  # the bottleneck's (standardised) output for this feature
    weight: float  # the class's head weight on this feature
    contribution: float  # weight * activation
    feature_name: str = ""  # the feature's global name; `name` is why this class uses it
    # FLINT's r_{j,x}: contribution / the largest |contribution| to this class's logit, in [-1, 1]
    relevance: float = 0.0
    # the held-out test behind `name` (retrofit.concepts.evidence); None when it was not tested
    evidence: dict[str, Any] | None = None

    def __str__(self) -> str:
        q_value = (self.evidence or {}).get("q_value")
        sure = f" [q={q_value:.2g}]" if isinstance(q_value, (int, float)) else ""
        return (
            f"{self.contribution:+8.3f}  {self.name}{sure}  (activation {self.activation:.3f} x "
            f"weight {self.weight:.3f}; feature {self.feature}, backbone {self.backbone_index})"
        )


@dataclass
class Explanation:
    """The prediction for one image, its features' contributions, and what beat the runner-up."""

    predicted: int
    class_name: str
    probability: float
    logit: float
    bias: float
    features: list[
        FeatureContribution
    ]  # the predicted class's features, largest contribution first
    runner_up: int | None = None
    runner_up_name: str | None = None
    runner_up_probability: float | None = None
    runner_up_logit: float | None = None
    runner_up_features: list[FeatureContribution] = field(default_factory=list)
    only_predicted: list[FeatureContribution] = field(default_factory=list)  # not the runner-up's
    only_runner_up: list[FeatureContribution] = field(default_factory=list)  # not the prediction's
    # set by explain(..., intervene=...): the features set by hand and the prediction without it
    intervention: dict[str, Any] | None = None
    # the estimated share of the model's shown names that are true (naming's own estimate)
    name_precision: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-serialisable data."""
        return asdict(self)

    def relevant(self, tau: float = DEFAULT_TAU) -> list[FeatureContribution]:
        """The predicted class's features with relevance r_{j,x} > 1/tau (FLINT), strongest first."""
        limit = 1 / check_tau(tau)
        return [f for f in self.features if f.relevance > limit]

    def __str__(self) -> str:
        total = sum(f.contribution for f in self.features)
        lines = [
            f"{self.class_name} (p={self.probability:.3f}, logit {self.logit:.3f} = bias "
            f"{self.bias:.3f} + {total:.3f} from {len(self.features)} features)"
        ]
        lines += [f"  {f}" for f in self.features]
        if self.name_precision is not None:
            lines.append(
                f"  (names: estimated precision {self.name_precision:.2f}; q = each name's "
                "false-discovery q-value on held-out images)"
            )
        if self.runner_up is not None:
            lines.append(
                f"runner-up: {self.runner_up_name} (p={self.runner_up_probability:.3f}, "
                f"logit {self.runner_up_logit:.3f})"
            )
            for label, group in (
                (self.class_name, self.only_predicted),
                (self.runner_up_name, self.only_runner_up),
            ):
                parts = ", ".join(f"{f.name} ({f.contribution:+.3f})" for f in group)
                lines.append(f"  only {label}: {parts or '(none)'}")
        if self.intervention is not None:
            lines.append(_intervention_line(self.intervention))
        return "\n".join(lines)


@torch.no_grad()
def explain(
    imodel: InterpretableModel,
    images: torch.Tensor,
    intervene: dict[int | str, float] | None = None,
) -> list[Explanation]:
    """One Explanation per image of a (N, ...) batch (a single unbatched image also works).

    `intervene` maps features (position or concept name) to the activation to use instead of
    the image's, e.g. {"stripes": 0.0} switches a concept off; each explanation then records
    the prediction without the intervention in `intervention`.
    """
    if not isinstance(images, torch.Tensor) or images.ndim < 2:
        raise DataError(
            f"explain() takes a batch of images as a tensor (N, C, H, W), got "
            f"{type(images).__name__}{getattr(images, 'shape', '')}."
        )
    if images.ndim == 3:
        images = images.unsqueeze(0)
    device = imodel.head.weight.device
    activations = imodel.concept_activations(images.to(device))
    if intervene is None:
        return explain_activations(imodel, activations)
    return intervened_explanations(imodel, activations, intervene)


@torch.no_grad()
def intervened_explanations(
    imodel: InterpretableModel, activations: torch.Tensor, intervene: dict[int | str, float]
) -> list[Explanation]:
    """Explanations with the given features set by hand, each noting what changed."""
    from retrofit.editing.parse import feature_index

    if not isinstance(intervene, dict) or not intervene:
        raise DataError(
            "intervene must be a non-empty dict {feature position or name: activation value}."
        )
    settings: dict[int, float] = {}
    for key, value in intervene.items():
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise DataError(f"intervene[{key!r}] must be a number, got {value!r}.")
        settings[feature_index(imodel, key, "intervene")] = float(value)
    originals = explain_activations(imodel, activations)
    changed = activations.clone()
    for j, value in settings.items():
        changed[:, j] = value
    explanations = explain_activations(imodel, changed)
    for original, explanation in zip(originals, explanations):
        explanation.intervention = {
            "features": {imodel.feature_name(j): v for j, v in settings.items()},
            "positions": sorted(settings),
            "original_predicted": original.predicted,
            "original_class_name": original.class_name,
            "original_probability": original.probability,
            "prediction_changed": original.predicted != explanation.predicted,
        }
    return explanations


def _intervention_line(intervention: dict[str, Any]) -> str:
    settings = ", ".join(f"{name} = {value:g}" for name, value in intervention["features"].items())
    outcome = (
        f"changed from {intervention['original_class_name']}"
        if intervention["prediction_changed"]
        else "unchanged"
    )
    return (
        f"intervention: {settings}; prediction {outcome} (without it: "
        f"{intervention['original_class_name']}, p={intervention['original_probability']:.3f})"
    )


@torch.no_grad()
def explain_activations(imodel: InterpretableModel, activations: torch.Tensor) -> list[Explanation]:
    """Explanations from the bottleneck's outputs (N, n_features), e.g. computed from a cache."""
    logits = imodel.head(activations).float().cpu()
    probabilities = torch.softmax(logits, dim=1)
    activations = activations.float().cpu()
    weight = imodel.head.weight.detach().float().cpu()
    bias = imodel.head.bias.detach().float().cpu()
    names = [imodel.feature_name(j) for j in range(imodel.n_features)]
    pair_names = {(c, j): imodel.pair_name(c, j) for c, j in imodel.pair_concepts}
    backbone = imodel.bottleneck.selected.tolist()
    name_precision = (imodel.naming_reliability or {}).get("estimated_precision")

    def contributions(c: int, z: torch.Tensor, among: list[int]) -> list[FeatureContribution]:
        r = local_relevance(z[None], weight, torch.tensor([c]))[0]
        rows = [
            FeatureContribution(
                feature=j,
                backbone_index=int(backbone[j]),
                name=pair_names.get((c, j), names[j]),
                activation=float(z[j]),
                weight=float(weight[c, j]),
                contribution=float(weight[c, j] * z[j]),
                feature_name=names[j],
                relevance=float(r[j]),
                evidence=imodel.name_evidence(c, j),
            )
            for j in among
        ]
        return sorted(rows, key=lambda f: -f.contribution)

    uses = [set(torch.nonzero(weight[c]).flatten().tolist()) for c in range(weight.shape[0])]
    explanations = []
    for z, row, p in zip(activations, logits, probabilities):
        order = torch.argsort(p, descending=True, stable=True).tolist()
        top = order[0]
        explanation = Explanation(
            predicted=top,
            class_name=imodel.class_names[top],
            probability=float(p[top]),
            logit=float(row[top]),
            bias=float(bias[top]),
            features=contributions(top, z, sorted(uses[top])),
            name_precision=name_precision,
        )
        if len(order) > 1:
            second = order[1]
            explanation.runner_up = second
            explanation.runner_up_name = imodel.class_names[second]
            explanation.runner_up_probability = float(p[second])
            explanation.runner_up_logit = float(row[second])
            explanation.runner_up_features = contributions(second, z, sorted(uses[second]))
            explanation.only_predicted = contributions(top, z, sorted(uses[top] - uses[second]))
            explanation.only_runner_up = contributions(second, z, sorted(uses[second] - uses[top]))
        explanations.append(explanation)
    return explanations
