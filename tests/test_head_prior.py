"""The class–concept prior in the elastic-net heads (qsenn, sparse), their solver and quantiser."""

from __future__ import annotations

import pytest
import torch

from retrofit.config import RetrofitConfig
from retrofit.errors import ConfigError, FeatureError
from retrofit.methods.base import HeadResult, fit_head, get_head
from retrofit.methods.qsenn.quantize import ternary_quantise
from retrofit.solvers.elastic_net import fit_elastic_net, lambda_max

C = 4
D = 4 * C


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def data() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Class c shows concepts 2c and 2c+1 (columns 0..7, prior +1 for c, −1 for the others)
    and raises channels 8+2c and 9+2c (prior 0) more strongly than its concepts."""
    g = torch.Generator().manual_seed(0)
    y = torch.arange(C).repeat_interleave(100)
    x = torch.randn(len(y), D, generator=g)
    rows = torch.arange(len(y))
    for offset, shift in ((0, 1.5), (1, 1.5), (2 * C, 2.0), (2 * C + 1, 2.0)):
        x[rows, offset + 2 * y] += shift
    prior = torch.zeros(D, C)
    prior[: 2 * C] = -1.0
    for c in range(C):
        prior[2 * c : 2 * c + 2, c] = 1.0
    return x, y, prior


def config(method: str, **head) -> RetrofitConfig:
    return RetrofitConfig(
        method=method,
        n_features=2 * C,
        per_class=2,
        epochs=2,
        rounds=2,
        linear_mix=False,
        progress=False,
        head={k: v for k, v in head.items() if k == "concept_prior"},
        bottleneck={k: v for k, v in head.items() if k != "concept_prior"},
    )


def positives(result: HeadResult) -> list[set[int]]:
    """The columns (of the D inputs) each class weighs positively."""
    return [set(result.selected[row > 0].tolist()) for row in result.weight]


@pytest.mark.parametrize("method", ["qsenn", "sparse"])
def test_the_prior_gives_each_class_the_concepts_it_shows(data, method) -> None:
    x, y, prior = data
    plain = get_head(method)(x, y, config(method))
    assert all(cols <= set(range(2 * C, D)) for cols in positives(plain))  # the stronger channels
    steered = fit_head(method, x, y, config(method), prior=prior)
    assert positives(steered) == [{2 * c, 2 * c + 1} for c in range(C)]


@pytest.mark.parametrize("method", ["qsenn", "sparse"])
def test_no_prior_or_weight_zero_is_the_prior_free_fit(data, method) -> None:
    x, y, prior = data
    plain = get_head(method)(x, y, config(method))
    ignored = get_head(method)(x, y, config(method, concept_prior=0), prior=prior)
    assert torch.equal(ignored.selected, plain.selected)
    assert torch.equal(ignored.weight, plain.weight) and torch.equal(ignored.bias, plain.bias)


@pytest.mark.parametrize("method", ["qsenn", "sparse"])
def test_a_bad_prior_or_weight_is_refused(data, method) -> None:
    x, y, prior = data
    with pytest.raises(FeatureError, match="prior must be"):
        get_head(method)(x, y, config(method), prior=prior[1:])
    with pytest.raises(ConfigError, match="concept_prior"):
        get_head(method)(x, y, config(method, concept_prior=-1), prior=prior)


def test_penalty_factors_scale_the_l1_term_per_weight(data) -> None:
    x, y, _ = data
    z = (x - x.mean(dim=0)) / x.std(dim=0)
    lam = 0.2 * lambda_max(z, y, 0.99)
    plain = fit_elastic_net(z, y, lam, penalty=None)
    ones = fit_elastic_net(z, y, lam, penalty=torch.ones(C, D))
    assert torch.allclose(ones.weight, plain.weight, atol=1e-4)
    penalty = torch.ones(C, D)
    penalty[0, 0] = 1e3  # class 0's weight on its own best concept is priced out
    priced = fit_elastic_net(z, y, lam, penalty=penalty)
    assert plain.weight[0, 0] > 0 and priced.weight[0, 0] == 0
    # λ_max with factors: the all-zero point moves with the cheapest weight
    assert lambda_max(z, y, 0.99, penalty=torch.full((C, D), 0.5)) == pytest.approx(
        2 * lambda_max(z, y, 0.99), rel=1e-5
    )
    with pytest.raises(ConfigError, match="penalty"):
        fit_elastic_net(z, y, lam, penalty=torch.zeros(C, D))


def test_the_quantiser_ranks_by_magnitude_over_factor() -> None:
    weight = torch.tensor([[1.0, 0.8, -0.1], [0.2, -0.9, 0.5]])
    plain, _ = ternary_quantise(weight, per_class=1)
    assert plain.tolist() == [[1, 0, 0], [0, -1, 0]]
    penalty = torch.tensor([[1.5, 2 / 3, 1.0], [1.0, 1.5, 2 / 3]])
    favoured, scale = ternary_quantise(weight, per_class=1, penalty=penalty)
    assert favoured.tolist() == [[0, 1, 0], [0, 0, 1]]
    assert scale == pytest.approx(0.65)  # the kept weights' own magnitudes


def test_qsenn_holds_the_features_of_shown_concepts_to_their_concept(data) -> None:
    """With a prior, qsenn's own bottleneck training keeps the concept features ordering the
    images as before (bottleneck.concept_retention); cross-entropy alone moves them more."""
    x, y, prior = data

    def kept(retention: float) -> list[float]:
        cfg = config("qsenn", concept_retention=retention)
        cfg.linear_mix, cfg.epochs = True, 10
        result = fit_head("qsenn", x, y, cfg, prior=prior)
        z = result.bottleneck.transform(x)
        return [
            float(torch.corrcoef(torch.stack([z[:, j], x[:, k]]))[0, 1])
            for j, k in enumerate(result.selected.tolist())
        ]

    assert min(kept(1.0)) > max(kept(0.0))
