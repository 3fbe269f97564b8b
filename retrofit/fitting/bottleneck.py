"""The bottleneck between a frozen backbone and a fixed interpretable head, trained on cached features.

Bottleneck: pooled penultimate features (N, D) -> the n_f standardised selected features, with a
trainable normalisation and an optional learned linear mix. FixedHead: the frozen linear head.
Training only the bottleneck keeps the head's sparsity pattern and values exactly as assigned.
"""

from __future__ import annotations

import logging
import math
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from retrofit.config import RetrofitConfig
from retrofit.errors import ConfigError, FeatureError, SolverError
from retrofit.fitting.losses import (
    class_decorrelation_loss,
    feature_diversity_loss,
    shared_class_pairs,
)
from retrofit.solvers.stats import MIN_STD

if TYPE_CHECKING:  # retrofit.methods.base imports this module; a runtime import would be circular
    from retrofit.methods.base import HeadResult

logger = logging.getLogger(__name__)

CONCEPT_RETENTION = 0.0  # ρ of the retention term (off); config.bottleneck.concept_retention
# ρ when the conversion names concepts: its concept features keep meaning their concepts while
# the bottleneck trains (which ones: retrofit.fitting.layer_fit.retained_features)
NAMED_RETENTION = 1.0
# γ of the within-class decorrelation term; convert() turns it on (CLASS_DIVERSITY) when it
# names concepts, config.bottleneck.class_diversity overrides
CLASS_DIVERSITY = 1.0
_EVAL_ROWS = 8192  # rows per no-grad pass over the cache
MIN_BOTTLENECK_EPOCHS = 20
# Small caches need more passes: below ~1,500 Adam steps the linear mix is still far from
# converged (digits, 1,347 images: 0.94 of dense after 20 epochs, 0.98 after 60).
MIN_BOTTLENECK_STEPS = 1500


class Bottleneck(nn.Module):
    """(x[:, selected] − mean) / std, or (x @ mixᵀ − mean) / std with a learned mix.

    The mix is initialised to the selection, so both variants start as the same function.
    With an `attributes` module (FLINT's Φ, retrofit.methods.flint.attributes.AttributeMap), x is first
    replaced by Φ(x): `selected` and the mix then index the attributes, not backbone channels.
    """

    def __init__(
        self,
        selected: torch.Tensor,
        mean: torch.Tensor,
        std: torch.Tensor,
        in_features: int,
        linear_mix: bool = False,
        attributes: nn.Module | None = None,
    ) -> None:
        super().__init__()
        selected = torch.as_tensor(selected, dtype=torch.long).reshape(-1)
        width = attributes.n_attributes if attributes is not None else in_features
        n_f = selected.numel()
        if mean.shape != (n_f,) or std.shape != (n_f,):
            raise ConfigError(
                f"mean and std must have one entry per selected feature ({n_f}), "
                f"got {tuple(mean.shape)} and {tuple(std.shape)}."
            )
        if n_f and (int(selected.min()) < 0 or int(selected.max()) >= width):
            raise ConfigError(
                f"selected indices must lie in [0, {width}), got {selected.tolist()}."
            )
        self.in_features = int(in_features)
        self.attributes = attributes
        self.register_buffer("selected", selected.clone())
        self.mean = nn.Parameter(mean.detach().float().clone())
        self.log_std = nn.Parameter(std.detach().float().clamp_min(MIN_STD).log())
        if linear_mix:
            mix = torch.zeros(n_f, width, device=mean.device)
            mix[torch.arange(n_f, device=mean.device), selected.to(mean.device)] = 1.0
            self.mix = nn.Parameter(mix)
        else:
            self.register_parameter("mix", None)

    @property
    def std(self) -> torch.Tensor:
        return self.log_std.exp()

    def project(self, features: torch.Tensor) -> torch.Tensor:
        """The linear part before normalisation: the selected columns or their learned mix."""
        if features.ndim != 2 or features.shape[1] != self.in_features:
            raise FeatureError(
                f"the bottleneck expects (N, {self.in_features}) features, got shape {tuple(features.shape)}."
            )
        features = features.to(self.mean.dtype)
        if self.attributes is not None:
            features = self.attributes(features)
        return features[:, self.selected] if self.mix is None else features @ self.mix.T

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return (self.project(features) - self.mean) / self.std

    def project_maps(self, maps: torch.Tensor) -> torch.Tensor:
        """Spatial maps (B, D, H, W) -> (B, n_f, H, W) through the same linear part as `project`."""
        if maps.ndim != 4 or maps.shape[1] != self.in_features:
            raise FeatureError(
                f"maps must be (B, {self.in_features}, H, W), got shape {tuple(maps.shape)}."
            )
        maps = maps.to(self.mean.dtype)
        if self.attributes is not None:  # Φ at every position: attribute maps
            maps = self.attributes(maps.movedim(1, -1)).movedim(-1, 1)
        if self.mix is None:
            return maps[:, self.selected]
        return torch.einsum("fd,bdhw->bfhw", self.mix, maps)

    def extra_repr(self) -> str:
        source = "attributes" if self.attributes is not None else "channels"
        how = "a learned linear mix" if self.mix is not None else "a selection"
        return (
            f"{len(self.selected)} features from {self.in_features} {source} ({how}), standardised"
        )

    @torch.no_grad()
    def transform(self, features: torch.Tensor) -> torch.Tensor:
        """forward() over a whole cache in chunks, without autograd."""
        return torch.cat(
            [self(features[s : s + _EVAL_ROWS]) for s in range(0, len(features), _EVAL_ROWS)]
        )


class FixedHead(nn.Module):
    """A linear layer whose weight and bias are frozen buffers (never seen by an optimiser)."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor) -> None:
        super().__init__()
        if weight.ndim != 2 or bias.shape != (weight.shape[0],):
            raise ConfigError(
                f"head weight must be (C, n_f) and bias (C,), got {tuple(weight.shape)} and {tuple(bias.shape)}."
            )
        self.register_buffer("weight", weight.detach().float().clone())
        self.register_buffer("bias", bias.detach().float().clone())

    def extra_repr(self) -> str:
        classes, n_f = self.weight.shape
        nonzero = int((self.weight != 0).sum())
        values = torch.unique(self.weight[self.weight != 0].abs())
        kind = (
            "binary"
            if len(values) == 1 and bool((self.weight >= 0).all())
            else ("ternary" if len(values) == 1 else "real-valued")
        )
        return (
            f"{classes} classes x {n_f} features, {nonzero} non-zero "
            f"({nonzero / max(1, classes):.1f} per class, sparsity "
            f"{1 - nonzero / max(1, classes * n_f):.2f}), {kind} weights"
        )

    @classmethod
    def from_result(cls, result: HeadResult) -> FixedHead:
        """weight = scale·assignment for quantised heads, else the fitted weight."""
        if result.assignment is not None:
            return cls(result.scale * result.assignment.float(), result.bias)
        return cls(result.weight, result.bias)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return F.linear(z, self.weight, self.bias)


def build_bottleneck(
    result: HeadResult, config: RetrofitConfig, in_features: int | None = None
) -> Bottleneck:
    """The bottleneck that reproduces `result`'s normalisation; the mix needs `in_features` (D).

    D is taken from `in_features`, else result.stats["in_features"], else (without a mix) from
    the largest selected index.
    """
    d = in_features if in_features is not None else result.stats.get("in_features")
    if d is None:
        if config.linear_mix:
            raise ConfigError(
                "linear_mix needs the feature width: pass in_features (D) to build_bottleneck."
            )
        d = int(result.selected.max().item()) + 1 if result.selected.numel() else 0
    return Bottleneck(
        result.selected, result.mean, result.std, int(d), linear_mix=config.linear_mix
    ).to(result.mean.device)


def bottleneck_epochs(config: RetrofitConfig, n_samples: int) -> int:
    """config.epochs, or when None at least MIN_BOTTLENECK_EPOCHS and MIN_BOTTLENECK_STEPS minibatches."""
    if config.epochs is not None:
        return config.epochs
    steps_per_epoch = max(1, math.ceil(n_samples / config.batch_size))
    return max(MIN_BOTTLENECK_EPOCHS, math.ceil(MIN_BOTTLENECK_STEPS / steps_per_epoch))


def finetune_bottleneck(
    bottleneck: Bottleneck,
    head: nn.Module,
    features: torch.Tensor,
    labels: torch.Tensor,
    config: RetrofitConfig,
    logits: torch.Tensor | None = None,
    maps: torch.Tensor | None = None,
    *,
    lr: float | None = None,
    epochs: int | None = None,
    sample_weights: torch.Tensor | None = None,
    retain: torch.Tensor | None = None,
    retention: float = CONCEPT_RETENTION,
    class_diversity: float = 0.0,
) -> dict[str, list[float]]:
    """Train the bottleneck with the head fixed, on cached features (Adam, seeded minibatches).

    Loss: cross-entropy + config.distill · KL(original ‖ ours) when `logits` are given
    + the Feature Diversity Loss on `bottleneck.project_maps(maps)` when `maps` are given and the
    bottleneck has a linear mix (β from config.bottleneck.diversity_beta, default 0.196; without a
    mix the maps do not depend on any trainable parameter, so the loss would be a constant and
    is skipped). `sample_weights` (N,) weight each sample's cross-entropy (consistency
    reweighting). `retain` (n_f,) bool marks features that must keep meaning what they meant
    before training (concept features): + ρ · mean over them of 1 − corr(z_j, z_j before) per
    minibatch (ρ = config.bottleneck.concept_retention, default `retention`), because
    cross-entropy alone moves a concept's feature onto whatever separates the classes best.
    + γ · `class_decorrelation_loss` over the pairs of features one class uses (γ =
    config.bottleneck.class_diversity, default `class_diversity`): without it, the features of a
    class drift onto the class's most separating concept together.
    Runs on the device of `features`;
    `maps` may stay on the CPU and are moved per batch. Returns per-epoch mean loss and
    training accuracy, plus the accuracy before training.
    """
    n = features.shape[0]
    device = features.device
    if labels.shape != (n,):
        raise FeatureError(f"labels must be (N,) with N = {n}, got shape {tuple(labels.shape)}.")
    if logits is not None and logits.shape[0] != n:
        raise FeatureError(
            f"logits must have one row per sample ({n}), got shape {tuple(logits.shape)}."
        )
    if sample_weights is not None and sample_weights.shape != (n,):
        raise FeatureError(
            f"sample_weights must be (N,) with N = {n}, got shape {tuple(sample_weights.shape)}."
        )
    if maps is not None and maps.shape[0] != n:
        raise FeatureError(
            f"maps must have one entry per sample ({n}), got shape {tuple(maps.shape)}."
        )
    lr = config.lr if lr is None else lr
    epochs = bottleneck_epochs(config, n) if epochs is None else epochs
    beta = float(config.bottleneck.diversity_beta)
    bottleneck.to(device)
    head.to(device)
    for p in head.parameters():
        p.requires_grad_(False)
    labels = labels.to(device)
    teacher = None
    if logits is not None and config.distill > 0:
        teacher = F.log_softmax(logits.to(device).float(), dim=1)
    history: dict[str, list[float]] = {
        "loss": [],
        "accuracy": [],
        "initial_accuracy": [_accuracy(bottleneck, head, features, labels)],
    }
    params = [p for p in bottleneck.parameters() if p.requires_grad]
    if not params or epochs == 0:
        return history
    rho = _setting(config.bottleneck.concept_retention, retention)
    gamma = _setting(config.bottleneck.class_diversity, class_diversity)
    history["retention"], history["class_diversity"] = [rho], [gamma]
    shared = shared_class_pairs(head.weight).to(device) if gamma > 0 else None
    anchor = _anchor(bottleneck, features, retain) if rho > 0 else None
    retain = retain.to(device) if retain is not None else None
    optimiser = torch.optim.Adam(params, lr=lr)
    generator = torch.Generator().manual_seed(config.seed)
    batch = config.batch_size
    was_training = bottleneck.training
    bottleneck.train()
    epoch_iter = range(epochs)
    if config.progress:
        from tqdm.auto import tqdm

        epoch_iter = tqdm(epoch_iter, desc="bottleneck fine-tuning", leave=False)
    for _ in epoch_iter:
        order = torch.randperm(n, generator=generator)
        total = 0.0
        for start in range(0, n, batch):
            index = order[start : start + batch]
            index_dev = index.to(device)
            z = bottleneck(features[index_dev])
            out = head(z)
            if sample_weights is None:
                loss = F.cross_entropy(out, labels[index_dev])
            else:
                weights = sample_weights.to(device)[index_dev]
                loss = (weights * F.cross_entropy(out, labels[index_dev], reduction="none")).mean()
            if teacher is not None:
                loss = loss + config.distill * F.kl_div(
                    F.log_softmax(out, dim=1),
                    teacher[index_dev],
                    log_target=True,
                    reduction="batchmean",
                )
            if maps is not None and bottleneck.mix is not None:
                local = bottleneck.project_maps(maps[index.to(maps.device)].to(device))
                loss = loss + feature_diversity_loss(
                    local, head.weight, out.argmax(dim=1).detach(), beta
                )
            if anchor is not None:
                loss = loss + rho * retention_loss(z[:, retain], anchor[index_dev])
            if shared is not None:
                loss = loss + gamma * class_decorrelation_loss(z, shared)
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            total += float(loss.item()) * len(index)
        if not math.isfinite(total):
            raise SolverError("bottleneck fine-tuning diverged (non-finite loss); lower config.lr.")
        history["loss"].append(total / n)
        history["accuracy"].append(_accuracy(bottleneck, head, features, labels))
        logger.debug(
            "bottleneck epoch loss=%.4f accuracy=%.4f", history["loss"][-1], history["accuracy"][-1]
        )
    bottleneck.train(was_training)
    return history


def retention_default(config: RetrofitConfig) -> float:
    """ρ of the concept retention term unless config.bottleneck sets it: on when the conversion
    names concepts (NAMED_RETENTION), else off (CONCEPT_RETENTION)."""
    return NAMED_RETENTION if config.concepts is not None else CONCEPT_RETENTION


def class_diversity_default(config: RetrofitConfig) -> float:
    """γ of the within-class decorrelation term unless config.bottleneck sets it: on when the
    conversion names concepts (each feature of a class should name a different one)."""
    return CLASS_DIVERSITY if config.concepts is not None else 0.0


def _setting(value: float | None, default: float) -> float:
    """A BottleneckSettings weight (validated there: None or a number >= 0), else `default`."""
    return float(default if value is None else value)


def retention_loss(z: torch.Tensor, before: torch.Tensor) -> torch.Tensor:
    """Mean over features of 1 − Pearson correlation (over the minibatch) with their values
    before training: 0 while every feature still orders the images as it did."""
    a = z - z.mean(dim=0)
    b = before - before.mean(dim=0)
    corr = (a * b).sum(dim=0) / (a.norm(dim=0) * b.norm(dim=0)).clamp_min(1e-8)
    return (1 - corr).mean()


@torch.no_grad()
def _anchor(
    bottleneck: Bottleneck, features: torch.Tensor, retain: torch.Tensor | None
) -> torch.Tensor | None:
    """The retained features' values before training, (N, retained)."""
    if retain is None or not bool(retain.any()):
        return None
    rows = [
        bottleneck(features[s : s + _EVAL_ROWS])[:, retain.to(features.device)].detach()
        for s in range(0, len(features), _EVAL_ROWS)
    ]
    return torch.cat(rows)


@torch.no_grad()
def _accuracy(
    bottleneck: Bottleneck, head: nn.Module, features: torch.Tensor, labels: torch.Tensor
) -> float:
    correct = 0
    for s in range(0, len(features), _EVAL_ROWS):
        correct += int(
            (
                head(bottleneck(features[s : s + _EVAL_ROWS])).argmax(dim=1)
                == labels[s : s + _EVAL_ROWS]
            ).sum()
        )
    return correct / max(1, len(features))


@torch.no_grad()
def swap_channels(
    bottleneck: Bottleneck, slots: list[int], channels: list[int], x: torch.Tensor
) -> None:
    """Point `slots` at new backbone channels, standardised on x, the mix reset to them."""
    device = bottleneck.mean.device
    for slot, channel in zip(slots, channels):
        column = x[:, channel]
        bottleneck.selected[slot] = channel
        bottleneck.mean[slot] = column.mean()
        bottleneck.log_std[slot] = column.std(unbiased=False).clamp_min(MIN_STD).log()
        if bottleneck.mix is not None:
            bottleneck.mix[slot] = 0.0
            bottleneck.mix[slot, channel] = 1.0
    bottleneck.to(device)
