"""Bottleneck, frozen head, fine-tuning on cached features and the Feature Diversity Loss."""

from __future__ import annotations

import pytest
import torch

from retrofit.config import RetrofitConfig
from retrofit.errors import ConfigError, FeatureError
from retrofit.fitting.bottleneck import Bottleneck, FixedHead, build_bottleneck, finetune_bottleneck
from retrofit.fitting.losses import (
    class_decorrelation_loss,
    feature_diversity_loss,
    shared_class_pairs,
)
from retrofit.methods.base import HeadResult

C, D = 3, 12


def problem(n: int = 300, seed: int = 0):
    """Class c raises feature c; a quantised head reads features [0, 1, 2] with scale 1."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % C
    x = torch.randn(n, D, generator=g).abs()
    x[torch.arange(n), y] += 1.0
    selected = torch.tensor([0, 1, 2])
    result = HeadResult(
        selected=selected,
        weight=torch.eye(C),
        bias=torch.zeros(C),
        mean=torch.full((C,), 0.5),
        std=torch.tensor([0.3, 3.0, 1.0]),  # mis-scaled on purpose: fine-tuning can fix it
        assignment=torch.eye(C, dtype=torch.int8),
        scale=1.0,
        stats={"in_features": D},
    )
    return x, y, result


def cfg(**kw) -> RetrofitConfig:
    return RetrofitConfig(**{"epochs": 15, "lr": 0.05, "batch_size": 32, "progress": False, **kw})


def test_bottleneck_reproduces_the_normalisation_with_and_without_mix():
    x, _, result = problem()
    plain = build_bottleneck(result, cfg(linear_mix=False))
    mixed = build_bottleneck(result, cfg(linear_mix=True))
    expected = (x[:, :3] - result.mean) / result.std
    assert torch.allclose(plain(x), expected, atol=1e-6)
    assert torch.allclose(mixed(x), expected, atol=1e-6)
    assert mixed.mix.shape == (C, D) and plain.mix is None
    with pytest.raises(FeatureError):
        plain(x[:, :5])


def test_fixed_head_is_frozen_and_uses_scale_times_assignment():
    _, _, result = problem()
    result.scale = 0.25
    head = FixedHead.from_result(result)
    assert list(head.parameters()) == []
    assert torch.equal(head.weight, 0.25 * torch.eye(C))


def test_finetuning_raises_training_accuracy_and_leaves_the_head_alone():
    x, y, result = problem()
    bottleneck, head = build_bottleneck(result, cfg()), FixedHead.from_result(result)
    before = head.weight.clone()
    history = finetune_bottleneck(bottleneck, head, x, y, cfg())
    assert len(history["loss"]) == len(history["accuracy"]) == 15
    assert history["accuracy"][-1] >= history["initial_accuracy"][0] + 0.05
    assert history["loss"][-1] < history["loss"][0]
    assert torch.equal(head.weight, before)
    assert not torch.allclose(bottleneck.std, result.std)


def test_finetuning_is_deterministic_and_distillation_changes_it():
    x, y, result = problem()
    teacher = torch.randn(len(y), C, generator=torch.Generator().manual_seed(5)) * 3
    runs = []
    for distill in (0.0, 0.0, 1.0):
        bottleneck = build_bottleneck(result, cfg())
        history = finetune_bottleneck(
            bottleneck, FixedHead.from_result(result), x, y, cfg(distill=distill), logits=teacher
        )
        runs.append((bottleneck.state_dict(), history))
    assert runs[0][1] == runs[1][1]
    assert all(torch.equal(runs[0][0][k], runs[1][0][k]) for k in runs[0][0])
    assert runs[2][1]["loss"][0] > runs[0][1]["loss"][0]  # the KL term is part of the loss


def test_retention_keeps_marked_features_ordering_the_images_as_before():
    """Cross-entropy pulls every mixed feature towards the class signal; with retain= the
    marked feature stays correlated with its starting values, the others move freely."""
    x, y, result = problem()
    x[:, 0] = torch.randn(len(y), generator=torch.Generator().manual_seed(3))  # not the class
    correlations = []
    for rho in (0.0, 5.0):
        bottleneck = build_bottleneck(result, cfg(linear_mix=True))
        start = bottleneck(x).detach()
        finetune_bottleneck(
            bottleneck, FixedHead.from_result(result), x, y,
            cfg(linear_mix=True, bottleneck={"concept_retention": rho}),
            retain=torch.tensor([True, False, False]),
        )  # fmt: skip
        after = bottleneck(x).detach()
        correlations.append(
            [float(torch.corrcoef(torch.stack([start[:, j], after[:, j]]))[0, 1]) for j in range(C)]
        )
    free, kept = correlations
    assert free[0] < 0.9  # without retention feature 0 is rebuilt from the class signal
    assert kept[0] > 0.97 and kept[0] > free[0] + 0.05
    assert kept[1] < 0.999 or kept[2] < 0.999  # unmarked features still train


def test_a_bad_retention_weight_is_a_config_error():
    x, y, result = problem()
    for bad in (-1.0, float("nan"), "strong", True):
        with pytest.raises(ConfigError, match="concept_retention"):
            finetune_bottleneck(
                build_bottleneck(result, cfg(linear_mix=True)), FixedHead.from_result(result),
                x, y, cfg(linear_mix=True, bottleneck={"concept_retention": bad}),
                retain=torch.tensor([True, False, False]),
            )  # fmt: skip


def test_diversity_loss_prefers_features_that_look_at_different_places():
    weight = torch.ones(1, 2)
    same = torch.zeros(1, 2, 4, 4)
    same[0, :, 0, 0] = 8.0
    apart = same.clone()
    apart[0, 1, 0, 0], apart[0, 1, 3, 3] = 0.0, 8.0
    predicted = torch.zeros(1, dtype=torch.long)
    loss_same = feature_diversity_loss(same, weight, predicted, beta=1.0)
    loss_apart = feature_diversity_loss(apart, weight, predicted, beta=1.0)
    assert -(2**0.5) <= loss_apart < loss_same < 0.0  # bounded by -β·Σ_j ω_j = -β·√F


def test_project_maps_matches_project_on_pooled_maps_and_trains_the_mix():
    g = torch.Generator().manual_seed(2)
    x, y, result = problem(n=64)
    maps = torch.rand(64, D, 3, 3, generator=g).half()
    pooled = maps.float().mean(dim=(2, 3))
    bottleneck = build_bottleneck(result, cfg(linear_mix=True))
    assert torch.allclose(
        bottleneck.project_maps(maps).mean(dim=(2, 3)), bottleneck.project(pooled), atol=1e-5
    )
    start = bottleneck.mix.detach().clone()
    finetune_bottleneck(
        bottleneck,
        FixedHead.from_result(result),
        pooled,
        y,
        cfg(epochs=2, linear_mix=True),
        maps=maps,
    )
    assert not torch.equal(bottleneck.mix, start)


def test_bottleneck_rejects_mismatched_shapes():
    with pytest.raises(Exception, match="one entry per selected feature"):
        Bottleneck(torch.tensor([0, 1]), torch.zeros(3), torch.ones(3), in_features=4)
    x, y, result = problem(n=20)
    bottleneck = build_bottleneck(result, cfg())
    with pytest.raises(FeatureError):
        finetune_bottleneck(bottleneck, FixedHead.from_result(result), x, y[:-1], cfg())


def test_class_decorrelation_keeps_two_features_of_one_class_from_becoming_one() -> None:
    """Class 0 reads features 0 and 1; cross-entropy rebuilds both from class 0's channel,
    the decorrelation term keeps feature 1 apart from feature 0."""
    g = torch.Generator().manual_seed(4)
    y = torch.arange(300) % 2
    x = torch.randn(300, D, generator=g)
    x[:, 0] += 2.0 * (y == 0)
    x[:, 2] += 2.0 * (y == 1)
    weight = torch.tensor([[1.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    result = HeadResult(
        selected=torch.tensor([0, 5, 2]), weight=weight, bias=torch.zeros(2),
        mean=torch.zeros(3), std=torch.ones(3), assignment=weight.to(torch.int8), scale=1.0,
        stats={"in_features": D},
    )  # fmt: skip
    correlation = {}
    for gamma in (0.0, 5.0):
        bottleneck = build_bottleneck(result, cfg(linear_mix=True))
        history = finetune_bottleneck(
            bottleneck, FixedHead.from_result(result), x, y,
            cfg(linear_mix=True, bottleneck={"class_diversity": gamma}),
        )  # fmt: skip
        z = bottleneck(x).detach()
        correlation[gamma] = float(torch.corrcoef(z[:, :2].T)[0, 1])
        assert history["class_diversity"] == [gamma]
    assert correlation[0.0] > 0.5  # without the term feature 1 becomes a second class-0 detector
    assert correlation[5.0] < correlation[0.0] - 0.3


def test_class_decorrelation_loss_counts_only_pairs_that_share_a_class() -> None:
    weight = torch.tensor([[1.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    shared = shared_class_pairs(weight)
    assert shared.tolist() == [[False, True, False], [True, False, False], [False, False, False]]
    base = torch.randn(200, 1, generator=torch.Generator().manual_seed(0))
    same_in_class = torch.cat([base, base, base], dim=1)
    assert float(class_decorrelation_loss(same_in_class, shared)) == pytest.approx(1.0, abs=1e-5)
    anti = torch.cat([base, -base, base], dim=1)  # opposite, and equal across classes: no cost
    assert float(class_decorrelation_loss(anti, shared)) == 0.0
    assert float(class_decorrelation_loss(same_in_class, torch.zeros(3, 3, dtype=torch.bool))) == 0


def test_a_bad_class_diversity_weight_is_a_config_error() -> None:
    x, y, result = problem()
    with pytest.raises(ConfigError, match="class_diversity"):
        finetune_bottleneck(
            build_bottleneck(result, cfg(linear_mix=True)), FixedHead.from_result(result),
            x, y, cfg(linear_mix=True, bottleneck={"class_diversity": -0.5}),
        )  # fmt: skip
