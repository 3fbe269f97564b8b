"""The dense, sparse and qsenn heads on a small planted problem."""

from __future__ import annotations

import pytest
import torch

from retrofit.config import RetrofitConfig
from retrofit.fitting.bottleneck import Bottleneck, FixedHead
from retrofit.methods.base import HeadResult, get_head

N_CLASSES, N_FEATURES, PER_CLASS = 5, 8, 2


def planted(n: int = 500, d: int = 40, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Class c raises features 2c and 2c+1 (post-ReLU-like, not standardised); the rest is noise."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, N_CLASSES, (n,), generator=g)
    x = torch.randn(n, d, generator=g)
    x[torch.arange(n), 2 * y] += 2.0
    x[torch.arange(n), 2 * y + 1] += 1.5
    return torch.relu(x) * 3.0 + 0.5, y


def config(**kw) -> RetrofitConfig:
    base = dict(
        method="qsenn",
        n_features=N_FEATURES,
        per_class=PER_CLASS,
        epochs=3,
        rounds=2,
        linear_mix=False,  # the HeadResult formula is exact only without a learned mix
        progress=False,
    )
    return RetrofitConfig(**{**base, **kw})


def head_logits(result: HeadResult, x: torch.Tensor) -> torch.Tensor:
    return ((x[:, result.selected] - result.mean) / result.std) @ result.weight.T + result.bias


@pytest.fixture(scope="module")
def data() -> tuple[torch.Tensor, torch.Tensor]:
    return planted()


@pytest.fixture(scope="module")
def qsenn_result(data) -> HeadResult:
    return get_head("qsenn")(*data, config())


def test_qsenn_counts_and_ternary_values(data, qsenn_result):
    r = qsenn_result
    assert r.selected.shape == (N_FEATURES,) and len(set(r.selected.tolist())) == N_FEATURES
    assert set(r.selected.tolist()) <= set(range(2 * N_CLASSES))  # only planted features are chosen
    assert r.assignment.dtype == torch.int8 and r.assignment.shape == (N_CLASSES, N_FEATURES)
    assert int((r.assignment != 0).sum()) == PER_CLASS * N_CLASSES
    assert set(r.assignment.unique().tolist()) <= {-1, 0, 1}
    assert r.scale > 0
    assert torch.equal(r.weight, r.scale * r.assignment.float())
    assert set(r.weight.unique().tolist()) <= {-r.scale, 0.0, r.scale}
    assert len(r.stats["rounds"]) == 2
    x, y = data
    assert (head_logits(r, x).argmax(dim=1) == y).float().mean() > 0.6
    assert torch.allclose(head_logits(r, x), FixedHead.from_result(r)(r.bottleneck(x)), atol=1e-5)


def test_qsenn_balanced_gives_every_class_exactly_per_class(data):
    r = get_head("qsenn")(*data, config(balanced=True, rounds=1, epochs=1))
    assert (r.assignment != 0).sum(dim=1).tolist() == [PER_CLASS] * N_CLASSES


def test_qsenn_is_deterministic_with_a_seed(data, qsenn_result):
    again = get_head("qsenn")(*data, config())
    assert torch.equal(again.selected, qsenn_result.selected)
    assert torch.equal(again.weight, qsenn_result.weight)
    assert torch.equal(again.bias, qsenn_result.bias)
    for key, value in qsenn_result.bottleneck.state_dict().items():
        assert torch.equal(again.bottleneck.state_dict()[key], value)


def test_qsenn_without_finetuning_keeps_the_training_standardisation(data):
    x, y = data
    r = get_head("qsenn")(x, y, config(finetune="none"))
    assert len(r.stats["rounds"]) == 1 and "finetune" not in r.stats["rounds"][0]
    assert torch.allclose(r.mean, x[:, r.selected].mean(dim=0), atol=1e-5)
    assert torch.allclose(r.std, x[:, r.selected].std(dim=0, unbiased=False), rtol=1e-4)
    assert isinstance(r.bottleneck, Bottleneck)


def test_sparse_head_respects_the_budget_and_is_not_quantised(data):
    x, y = data
    r = get_head("sparse")(x, y, config(method="sparse"))
    assert r.assignment is None
    assert r.selected.shape == (N_FEATURES,)
    assert 0 < int((r.weight != 0).sum()) <= PER_CLASS * N_CLASSES
    assert (head_logits(r, x).argmax(dim=1) == y).float().mean() > 0.6


def test_dense_probe_fits_separable_data():
    g = torch.Generator().manual_seed(3)
    centres = 4.0 * torch.randn(N_CLASSES, 16, generator=g)
    y = torch.arange(300) % N_CLASSES
    x = centres[y] + torch.randn(300, 16, generator=g)
    r = get_head("dense")(x, y, config(method="dense"))
    assert torch.equal(r.selected, torch.arange(16))
    assert r.weight.shape == (N_CLASSES, 16) and r.assignment is None
    assert (head_logits(r, x).argmax(dim=1) == y).float().mean() == 1.0
