"""Elastic-net path and Q-SENN feature selection on small planted problems."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression

from retrofit.errors import ConfigError, FeatureError, InfeasibleSettingsError
from retrofit.solvers.elastic_net import (
    elastic_net_path,
    fit_elastic_net,
    lambda_max,
    lambda_path,
    select_features,
)
from retrofit.solvers.stats import standardise

PLANTED = [3, 7, 11, 19]


def planted(n: int = 600, d: int = 24, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Four classes; class c shifts feature PLANTED[c] by +2.5, all other features are noise."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, len(PLANTED), (n,), generator=g)
    x = torch.randn(n, d, generator=g)
    x[torch.arange(n), torch.tensor(PLANTED)[y]] += 2.5
    return standardise(x)[0], y


def objective(x, y, w, b, lam, alpha):
    loss = torch.nn.functional.cross_entropy(x @ w.T + b, y).item()
    return (
        loss
        + lam * alpha * w.abs().sum().item()
        + 0.5 * lam * (1 - alpha) * w.square().sum().item()
    )


def test_path_recovers_planted_features():
    x, y = planted()
    path = elastic_net_path(x, y, alpha=0.99, k=30)
    assert path[0].nnz == 0
    used = [set(p.weight.ne(0).any(dim=0).nonzero().squeeze(1).tolist()) for p in path]
    first_four = next(u for u in used if len(u) >= 4)
    assert first_four == set(PLANTED)


def test_select_features_ranks_planted_first():
    x, y = planted()
    selected, stats = select_features(x, y, 6)
    assert selected.shape == (6,) and len(set(selected.tolist())) == 6
    assert set(selected[:4].tolist()) == set(PLANTED)
    assert stats["entry_lambda"] == sorted(stats["entry_lambda"], reverse=True)


def test_lambda_max_gives_all_zero_weights_and_below_it_does_not():
    x, y = planted()
    for group in (False, True):
        alpha = 0.8 if group else 0.99
        top = lambda_max(x, y, alpha, group=group)
        assert fit_elastic_net(x, y, top, alpha, group=group).nnz == 0
        assert fit_elastic_net(x, y, 0.9 * top, alpha, group=group).nnz > 0


def test_path_shape_and_monotone_lambdas():
    x, y = planted(n=300)
    path = elastic_net_path(x, y, alpha=0.99, k=8)
    lams = [p.lam for p in path]
    assert len(path) == 9 and lams[-1] == 0.0
    assert all(a > b for a, b in zip(lams, lams[1:]))
    assert lams[-2] == pytest.approx(1e-3 * lams[0])
    assert path[-1].nnz > path[len(path) // 2].nnz > 0


def test_objective_decreases_with_iterations_and_matches_sklearn():
    x, y = planted(n=300, d=20)
    lam, alpha = 0.01, 0.5
    objectives = [
        fit_elastic_net(x, y, lam, alpha, max_iter=m, tol=0.0).objective for m in (1, 3, 10, 300)
    ]
    assert all(a >= b - 1e-9 for a, b in zip(objectives, objectives[1:]))
    assert objectives[0] - objectives[-1] > 0.1
    ref = LogisticRegression(
        solver="saga", l1_ratio=alpha, C=1 / (lam * len(y)), tol=1e-10, max_iter=20000
    ).fit(x.numpy().astype(np.float64), y.numpy())
    ref_obj = objective(
        x, y, torch.tensor(ref.coef_).float(), torch.tensor(ref.intercept_).float(), lam, alpha
    )
    assert objectives[-1] == pytest.approx(ref_obj, abs=1e-5)


def test_group_path_with_all_zero_column_stays_finite():
    x, y = planted(n=300)
    x[:, 5] = 0.0
    for point in elastic_net_path(x, y, alpha=0.8, group=True, k=6):
        assert torch.isfinite(point.weight).all() and torch.isfinite(point.bias).all()
        assert point.weight[:, 5].eq(0).all()
    selected, _ = select_features(x, y, x.shape[1])
    assert selected[-1].item() == 5 and len(set(selected.tolist())) == x.shape[1]


def test_group_path_zeroes_whole_columns():
    x, y = planted()
    for point in elastic_net_path(x, y, alpha=0.8, group=True, k=10)[1:-1]:
        used = point.weight.ne(0)
        assert torch.equal(used.any(dim=0), used.all(dim=0))


def test_bad_inputs_raise_retrofit_errors():
    x, y = planted(n=50)
    bad = x.clone()
    bad[0, 0] = math.nan
    with pytest.raises(FeatureError):
        elastic_net_path(bad, y, k=3)
    with pytest.raises(FeatureError):
        lambda_max(x, y[:-1], 0.99)
    with pytest.raises(InfeasibleSettingsError):
        select_features(x, y, x.shape[1] + 1)
    with pytest.raises(ConfigError):
        lambda_path(1.0, k=0)
    with pytest.raises(ConfigError):
        elastic_net_path(x, y, alpha=1.5, k=3)
