"""FLINT's metrics and relevance on hand-built heads with known answers."""

from __future__ import annotations

import math

import pytest
import torch

from retrofit.check import metrics as M
from retrofit.check.attribute_metrics import attribute_entropy, dead_share, fidelity_at_k
from retrofit.errors import ConfigError
from retrofit.methods.flint.relevance import check_tau, class_relevance, local_relevance


def test_cns_and_relevance_on_a_hand_built_head() -> None:
    # two classes, four attributes; image 0 is class 0 with contributions 4, 3, 1, 0
    weight = torch.tensor([[1.0, 1.0, 1.0, 0.0], [0.0, 0.0, 2.0, 2.0]])
    z = torch.tensor([[4.0, 3.0, 1.0, 0.0], [0.0, 0.0, 1.0, 0.5]])
    predicted = torch.tensor([0, 1])
    r = local_relevance(z, weight, predicted)
    torch.testing.assert_close(r[0], torch.tensor([1.0, 0.75, 0.25, 0.0]))
    torch.testing.assert_close(r[1], torch.tensor([0.0, 0.0, 1.0, 0.5]))
    cns = M.conciseness(z, weight, predicted)
    # τ=1.5: r > 2/3 -> {1, 0.75} and {1}; τ=2: r > 0.5 -> 2 and 1; τ=5: r > 0.2 -> 3 and 2
    assert cns["1.5"] == pytest.approx(1.5)
    assert cns["2"] == pytest.approx(1.5)
    assert cns["5"] == pytest.approx(2.5)
    assert list(cns) == ["1.5", "2", "2.5", "3", "4", "5"]
    table = class_relevance(z, weight, predicted, num_classes=3)
    torch.testing.assert_close(table[:2], r)
    assert table[2].abs().sum() == 0, "a class nobody predicts has no relevant attribute"


def test_negative_contributions_are_never_relevant() -> None:
    weight = torch.tensor([[1.0, -1.0]])
    r = local_relevance(torch.tensor([[1.0, 2.0]]), weight, torch.tensor([0]))
    torch.testing.assert_close(r, torch.tensor([[0.5, -1.0]]))
    assert M.conciseness(torch.tensor([[1.0, 2.0]]), weight, torch.tensor([0]))["5"] == 1.0


def test_fidelity_at_k() -> None:
    reference = torch.tensor([[5.0, 0, 0], [0, 5.0, 0], [0, 0, 5.0]])
    ours = torch.tensor([[3.0, 2, 1], [3.0, 2, 1], [3.0, 2, 1]])
    assert fidelity_at_k(ours, reference, 1) == pytest.approx(1 / 3)
    assert fidelity_at_k(ours, reference, 2) == pytest.approx(2 / 3)
    assert fidelity_at_k(ours, reference, 5) == 1.0, "k above C counts every class"


def test_dead_share_and_attribute_entropy() -> None:
    z = torch.tensor([[1.0, 0.0, 2.0, 0.0], [3.0, 0.0, 2.0, 1.0]])
    assert dead_share(z) == 0.5  # attribute 1 is always 0, attribute 2 never changes
    uniform = attribute_entropy(torch.ones(5, 4))
    assert uniform["entropy"] == pytest.approx(math.log(4)) and uniform["max"] == math.log(4)
    assert attribute_entropy(torch.tensor([[0.0, 3.0, 0.0]]))["entropy"] == pytest.approx(0.0)


def test_tau_must_exceed_one() -> None:
    assert check_tau(2) == 2.0
    with pytest.raises(ConfigError, match="tau must be a number > 1"):
        check_tau(1)
