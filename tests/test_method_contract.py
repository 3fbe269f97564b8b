"""Every registered head method keeps the contract the rest of retrofit relies on: parametrised
over the registry (timm's list_models() style), so a new built-in method is tested by adding it."""

from __future__ import annotations

import pytest
import torch

from retrofit.config import RetrofitConfig
from retrofit.methods.base import HeadResult, MethodTraits, fit_head, method_traits
from retrofit.registry import HEADS

C, D, N = 4, 24, 200


@pytest.fixture(scope="module")
def features() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(N) % C
    x = torch.randn(N, D, generator=g) + 3 * torch.nn.functional.one_hot(labels, D).float()
    return x, labels


@pytest.mark.parametrize("name", HEADS.names())
def test_every_method_fits_a_head_of_the_promised_shape(name: str, features) -> None:
    x, labels = features
    config = RetrofitConfig(
        method=name, n_features=8, per_class=2, finetune="none", progress=False, time_limit=10
    )
    result = fit_head(name, x, labels, config)
    assert isinstance(result, HeadResult)
    n_f = len(result.selected)
    assert n_f == (D if name == "dense" else 8)
    assert result.weight.shape == (C, n_f) and result.bias.shape == (C,)
    assert result.mean.shape == (n_f,) and bool((result.std > 0).all())
    assert len(set(result.selected.tolist())) == n_f and int(result.selected.max()) < D
    if result.assignment is not None:
        assert set(result.assignment.unique().tolist()) <= {-1, 0, 1}
    standardised = (x[:, result.selected] - result.mean) / result.std
    accuracy = ((standardised @ result.weight.T + result.bias).argmax(1) == labels).float().mean()
    assert accuracy > 1 / C  # better than chance on separable features


@pytest.mark.parametrize("name", HEADS.names())
def test_every_method_describes_itself_with_traits(name: str) -> None:
    traits = method_traits(name)
    assert isinstance(traits, MethodTraits)
    assert traits.resolve_edits is None or callable(traits.resolve_edits)
    assert traits.relevance_tau is None or traits.relevance_tau > 0
