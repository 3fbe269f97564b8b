"""FLINT attributes (ALGORITHMS §9.1): a learned dictionary of J non-negative attributes.

Φ(x) = ReLU(MLP((x − μ) / σ)) over the pooled penultimate features x (followed, with
`flint_layers=[...]`, by earlier layers' pooled outputs: retrofit.extraction.pooled_layers), trained on
the cache with the backbone frozen, together with a linear head h (the interpreter g = h∘Φ) and a decoder
d that reconstructs the standardised features from Φ. The settings are one dict,
`convert(..., flint={...})`, with the fields of FlintSettings.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from retrofit.errors import (
    ConfigError,
    DataError,
    FeatureError,
    InfeasibleSettingsError,
    SolverError,
)
from retrofit.methods.flint.losses import conciseness_diversity, input_fidelity, output_fidelity
from retrofit.methods.flint.settings import FlintSettings as FlintSettings
from retrofit.methods.flint.settings import check_flint_layers as check_flint_layers
from retrofit.methods.flint.settings import parse_flint as parse_flint
from retrofit.solvers.stats import standardise

logger = logging.getLogger(__name__)

_EVAL_ROWS = 8192
_REVIVE_ROWS = 4096  # images used to place a revived attribute's threshold
# Default J is at most this many attributes per class: FLINT's reference dictionaries hold 2.5
# (MNIST, 25 for 10 classes) to 3.6 (CIFAR-10) per class; more than the decisions need are
# driven to 0 by the conciseness terms (digits, 50 for 10 classes: 9 redrawn, 1 left dead).
ATTRIBUTES_PER_CLASS = 3
# After training, h alone is refitted on the fixed Φ(x) for this share of the training epochs
# (at least 1): the conciseness terms pull on h while Φ is learned; on fixed attributes h's
# fidelity problem is convex, and Φ, which the explanation is, does not change.
HEAD_REFIT_SHARE = 0.25


class AttributeMap(nn.Module):
    """Φ(x) = ReLU(W₂·ReLU(W₁·(x − μ)/σ + b₁) + b₂): J non-negative attributes of D features."""

    def __init__(self, in_features: int, n_attributes: int, hidden: int) -> None:
        super().__init__()
        self.in_features, self.n_attributes, self.hidden_size = in_features, n_attributes, hidden
        self.register_buffer("input_mean", torch.zeros(in_features))
        self.register_buffer("input_std", torch.ones(in_features))
        self.hidden = nn.Linear(in_features, hidden)
        self.out = nn.Linear(hidden, n_attributes)

    def standardise(self, features: torch.Tensor) -> torch.Tensor:
        return (features - self.input_mean) / self.input_std

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return F.relu(self.out(F.relu(self.hidden(self.standardise(features)))))

    def describe(self) -> dict[str, int]:
        """The shape needed to rebuild it (the export stores this)."""
        return {
            "in_features": self.in_features,
            "n_attributes": self.n_attributes,
            "hidden": self.hidden_size,
        }

    @torch.no_grad()
    def transform(self, features: torch.Tensor) -> torch.Tensor:
        """forward() over a whole cache in chunks, without autograd."""
        return torch.cat(
            [self(features[s : s + _EVAL_ROWS]) for s in range(0, len(features), _EVAL_ROWS)]
        )


@dataclass
class FlintFit:
    """The learned attribute map, the linear head h on Φ and the training record."""

    attributes: AttributeMap
    weight: torch.Tensor  # (C, J)
    bias: torch.Tensor  # (C,)
    history: dict[str, Any]


def attribute_count(config: Any, num_classes: int | None = None) -> int:
    """J: flint.attributes, else n_features; for method="flint" with `num_classes` known, at
    most ATTRIBUTES_PER_CLASS per class. With features="flint" another head chooses
    n_features among the attributes, so there J stays n_features."""
    settings = parse_flint(config.flint)
    if settings.attributes is not None:
        return settings.attributes
    if config.method == "flint" and config.features != "flint" and num_classes:
        return min(config.n_features, ATTRIBUTES_PER_CLASS * num_classes)
    return config.n_features


def check_attribute_count(n_attributes: int, n_samples: int, dim: int) -> None:
    """J must be at most D (a dictionary of the features, not an expansion) and N."""
    if n_attributes > dim:
        raise InfeasibleSettingsError(
            f"{n_attributes} FLINT attributes from {dim} penultimate features: a post-hoc "
            f"dictionary cannot hold more attributes than the features it reads. Set "
            f"flint={{'attributes': J}} (or n_features) to at most {dim}."
        )
    if n_attributes > n_samples:
        raise InfeasibleSettingsError(
            f"{n_attributes} FLINT attributes from only {n_samples} training images; use at "
            f"most {n_samples} attributes or more images."
        )


def fit_attributes(
    features: torch.Tensor,
    labels: torch.Tensor,
    config: Any,
    logits: torch.Tensor | None = None,
    num_classes: int | None = None,
) -> FlintFit:
    """Train Φ, h and the decoder d on cached features (Adam, seeded minibatches).

    The distillation target is the original model's `logits`; without them, the labels.
    Training steps: config.epochs passes, or enough for retrofit's bottleneck step budget. An
    attribute that is 0 on every training image after an epoch (a dead ReLU) is redrawn, except
    after the last epoch: on the demo world one of 50 attributes dies in the first epoch
    otherwise, and stays dead. Then h alone is refitted on the final Φ (_refit_head).
    """
    from retrofit.fitting.bottleneck import bottleneck_epochs

    settings = parse_flint(config.flint)
    if features.ndim != 2 or not features.is_floating_point():
        raise FeatureError(
            f"features must be a float (N, D) tensor, got {features.dtype} {tuple(features.shape)}."
        )
    n, dim = features.shape
    if labels.shape != (n,):
        raise DataError(f"labels must be (N,) with N = {n}, got shape {tuple(labels.shape)}.")
    if logits is not None and (logits.ndim != 2 or logits.shape[0] != n):
        raise FeatureError(f"logits must be (N, C) with N = {n}, got {tuple(logits.shape)}.")
    c = num_classes or (logits.shape[1] if logits is not None else int(labels.max()) + 1)
    n_attributes = attribute_count(config, c)
    check_attribute_count(n_attributes, n, dim)
    device = features.device
    x = features.float()
    z, mean, std = standardise(x)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        phi = AttributeMap(dim, n_attributes, settings.hidden)
        head = nn.Linear(n_attributes, c)
        decoder = nn.Sequential(
            nn.Linear(n_attributes, settings.hidden), nn.ReLU(), nn.Linear(settings.hidden, dim)
        )
    phi.input_mean.copy_(mean.cpu())
    phi.input_std.copy_(std.cpu())
    modules = nn.ModuleList([phi, head, decoder]).to(device)
    teacher = logits.to(device).float() if logits is not None else None
    labels = labels.to(device)
    epochs = bottleneck_epochs(config, n)
    if epochs < 1:
        raise ConfigError(
            "FLINT learns its attributes by training: epochs=0 would leave them random. Use "
            "epochs >= 1, or None for retrofit's default step budget."
        )
    batch = config.batch_size
    total_steps = epochs * math.ceil(n / batch)
    warm_steps = settings.warmup * total_steps
    optimiser = torch.optim.Adam(modules.parameters(), lr=settings.lr)
    generator = torch.Generator().manual_seed(config.seed)
    history: dict[str, Any] = {
        "loss": [],
        "output_fidelity": [],
        "agreement": [],
        "dead": [],
        "revived": 0,
    }
    step = 0
    epoch_iter = range(epochs)
    if config.progress:
        from tqdm.auto import tqdm

        epoch_iter = tqdm(epoch_iter, desc="FLINT attributes", leave=False)
    modules.train()
    for epoch in epoch_iter:
        order = torch.randperm(n, generator=generator).to(device)
        totals = torch.zeros(2, device=device)
        for start in range(0, n, batch):
            index = order[start : start + batch]
            ramp = min(1.0, step / warm_steps) if warm_steps > 0 else 1.0
            attributes = phi(x[index])
            out = head(attributes)
            fidelity = (
                output_fidelity(out, teacher[index], settings.temperature)
                if teacher is not None
                else F.cross_entropy(out, labels[index])
            )
            spread, sparsity = conciseness_diversity(attributes, settings.l1)
            loss = (
                settings.output_fidelity * fidelity
                + settings.input_fidelity * input_fidelity(decoder(attributes), z[index])
                + ramp * (settings.entropy * spread + sparsity)
            )
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            totals += torch.stack([loss.detach(), fidelity.detach()]) * len(index)
            step += 1
        loss_sum, fidelity_sum = (totals / n).tolist()
        if not math.isfinite(loss_sum):
            raise SolverError("FLINT training diverged (non-finite loss); lower flint={'lr': ...}.")
        history["loss"].append(loss_sum)
        history["output_fidelity"].append(fidelity_sum)
        agreement, dead = _evaluate(phi, head, x, teacher, labels)
        history["agreement"].append(agreement)
        history["dead"].append(int(dead.sum()))
        if dead.any() and epoch < epochs - 1:
            _revive(phi, x, dead, generator)
            history["revived"] += int(dead.sum())
    modules.eval()
    modules.zero_grad(set_to_none=True)
    phi.requires_grad_(False)
    history["head_refit_epochs"] = _refit_head(
        phi, head, x, teacher, labels, settings, epochs, batch, generator
    )
    history["final_agreement"] = _evaluate(phi, head, x, teacher, labels)[0]
    logger.info(
        "FLINT: %d attributes, training agreement %.4f", n_attributes, history["final_agreement"]
    )
    history["settings"] = settings.to_dict()
    history["n_attributes"] = n_attributes
    history["epochs"] = epochs
    return FlintFit(phi, head.weight.detach().clone(), head.bias.detach().clone(), history)


def _refit_head(
    phi: AttributeMap,
    head: nn.Linear,
    x: torch.Tensor,
    teacher: torch.Tensor | None,
    labels: torch.Tensor,
    settings: FlintSettings,
    epochs: int,
    batch: int,
    generator: torch.Generator,
) -> int:
    """Train h alone on the fixed attributes Φ(x) for the fidelity loss (fresh Adam, same lr);
    returns the epochs run (HEAD_REFIT_SHARE of the training epochs, at least 1)."""
    refit_epochs = max(1, math.ceil(HEAD_REFIT_SHARE * epochs))
    attributes = phi.transform(x)
    optimiser = torch.optim.Adam(head.parameters(), lr=settings.lr)
    n = len(x)
    for _ in range(refit_epochs):
        order = torch.randperm(n, generator=generator).to(x.device)
        for start in range(0, n, batch):
            index = order[start : start + batch]
            out = head(attributes[index])
            loss = (
                output_fidelity(out, teacher[index], settings.temperature)
                if teacher is not None
                else F.cross_entropy(out, labels[index])
            )
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
    head.zero_grad(set_to_none=True)
    return refit_epochs


@torch.no_grad()
def _evaluate(
    phi: AttributeMap,
    head: nn.Module,
    x: torch.Tensor,
    teacher: torch.Tensor | None,
    labels: torch.Tensor,
) -> tuple[float, torch.Tensor]:
    """(share of training images on which g's top-1 equals f's (the labels without f),
    attributes that are 0 on every training image)."""
    target = teacher.argmax(dim=1) if teacher is not None else labels
    attributes = phi.transform(x)
    predicted = head(attributes).argmax(dim=1)
    return float((predicted == target).float().mean()), attributes.amax(dim=0) <= 0


@torch.no_grad()
def _revive(
    phi: AttributeMap, x: torch.Tensor, dead: torch.Tensor, generator: torch.Generator
) -> None:
    """Redraw the output row of each dead attribute (0 on every image: a ReLU that no gradient
    reaches again) and set its bias so it is active on about half of the images."""
    sample = x[torch.randperm(len(x), generator=generator)[:_REVIVE_ROWS].to(x.device)]
    hidden = F.relu(phi.hidden(phi.standardise(sample)))
    alive = ~dead
    scale = phi.out.weight[alive].std() if alive.sum() > 1 else phi.out.weight.std()
    rows = torch.randn(int(dead.sum()), hidden.shape[1], generator=generator).to(x.device) * scale
    phi.out.weight[dead] = rows
    phi.out.bias[dead] = -(hidden @ rows.T).median(dim=0).values


def read_attributes(bottleneck: Any, attributes: AttributeMap) -> Any:
    """`bottleneck` (fitted on the J attributes) made to read the D backbone features through Φ.

    Φ stays frozen: the head was chosen for these attributes, so later bottleneck fine-tuning
    may re-mix and rescale them but not change what they are.
    """
    from retrofit.fitting.bottleneck import Bottleneck

    if bottleneck.in_features != attributes.n_attributes:
        raise ConfigError(
            f"the bottleneck reads {bottleneck.in_features} features, the attribute map makes "
            f"{attributes.n_attributes}."
        )
    attributes.requires_grad_(False)
    combined = Bottleneck(
        bottleneck.selected,
        bottleneck.mean.detach(),
        bottleneck.std.detach(),
        attributes.in_features,
        linear_mix=bottleneck.mix is not None,
        attributes=attributes,
    ).to(bottleneck.mean.device)
    with torch.no_grad():  # exp/log does not round-trip bit for bit
        combined.log_std.copy_(bottleneck.log_std)
        if bottleneck.mix is not None:
            combined.mix.copy_(bottleneck.mix)
    return combined


def attribute_features(
    features: torch.Tensor,
    labels: torch.Tensor,
    config: Any,
    logits: torch.Tensor | None = None,
    maps: torch.Tensor | None = None,
) -> tuple[AttributeMap, torch.Tensor, torch.Tensor | None]:
    """features="flint": learn Φ first, then give another head Φ(x) (and Φ's maps) to fit on.

    Returns (Φ, the (N, J) attributes, their (N, J, H, W) maps or None).
    """
    n_attributes = attribute_count(config)  # features="flint": n_features, or flint.attributes
    check_attribute_count(n_attributes, features.shape[0], features.shape[1])
    if config.method != "dense" and config.n_features > n_attributes:
        raise InfeasibleSettingsError(
            f"n_features={config.n_features} is larger than the {n_attributes} FLINT attributes "
            "the head chooses from; lower n_features or raise flint={'attributes': J}."
        )
    n_classes = len(config.class_names) if config.class_names else None
    fit = fit_attributes(features, labels, config, logits, num_classes=n_classes)
    attributes = fit.attributes
    attribute_maps = None
    if maps is not None:
        with torch.no_grad():
            attribute_maps = torch.cat(
                [
                    attributes(maps[s : s + 256].to(features.device).movedim(1, -1))
                    .movedim(-1, 1)
                    .to(maps.device)
                    for s in range(0, len(maps), 256)
                ]
            )
    return attributes, attributes.transform(features), attribute_maps
