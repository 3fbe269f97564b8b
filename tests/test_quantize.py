"""Ternary quantisation and the bias ramp, including the reference implementation's faults."""

from __future__ import annotations

import logging

import pytest
import torch

from retrofit.errors import InfeasibleSettingsError
from retrofit.methods.qsenn.quantize import bias_ramp, quantise_head, ternary_quantise


def test_keeps_exactly_the_largest_magnitudes_with_their_signs():
    w = torch.randn(6, 10, generator=torch.Generator().manual_seed(0))
    assignment, scale = ternary_quantise(w, per_class=3)
    assert assignment.dtype == torch.int8
    kept = assignment != 0
    assert int(kept.sum()) == 18
    assert w.abs()[kept].min() > w.abs()[~kept].max()
    assert torch.equal(assignment[kept], torch.sign(w)[kept].to(torch.int8))
    assert scale == pytest.approx(float(w.abs()[kept].mean()))


def test_value_equal_to_minus_max_gets_minus_one():
    w = torch.tensor([[-5.0, 0.1, 5.0], [0.2, -0.3, 0.05]])
    assignment, scale = ternary_quantise(w, per_class=1)
    assert assignment.tolist() == [[-1, 0, 1], [0, 0, 0]]
    assert scale == pytest.approx(5.0)


def test_ties_at_the_threshold_give_an_exact_deterministic_count():
    w = torch.tensor([[1.0, -1.0, 1.0, 0.5], [-1.0, 1.0, -1.0, 0.5]])
    first, _ = ternary_quantise(w, per_class=2)
    second, _ = ternary_quantise(w.clone(), per_class=2)
    assert int((first != 0).sum()) == 4
    assert torch.equal(first, second)
    assert first.tolist() == [[1, -1, 1, 0], [-1, 0, 0, 0]]  # equal magnitudes: row-major order


def test_balanced_keeps_exactly_per_class_in_every_row():
    w = torch.zeros(4, 6)
    w[0] = torch.tensor([9.0, 8.0, 7.0, 6.0, 5.0, 4.0])
    w[1:] = 0.01 * torch.randn(3, 6, generator=torch.Generator().manual_seed(1))
    unbalanced, _ = ternary_quantise(w, per_class=2)
    assert (unbalanced != 0).sum(dim=1).tolist()[1:] != [
        2,
        2,
        2,
    ]  # the global rule starves small rows
    balanced, scale = ternary_quantise(w, per_class=2, balanced=True)
    assert (balanced != 0).sum(dim=1).tolist() == [2, 2, 2, 2]
    assert balanced[0].tolist() == [1, 1, 0, 0, 0, 0]
    assert scale == pytest.approx(float(w.abs()[balanced != 0].mean()))


def test_all_zero_rows_and_too_few_non_zeros(caplog):
    w = torch.zeros(3, 4)
    w[0, 1] = -2.0
    w[2, 3] = 1.0
    with caplog.at_level(logging.WARNING, logger="retrofit.methods.qsenn.quantize"):
        assignment, scale = ternary_quantise(w, per_class=2)
    assert assignment.tolist() == [[0, -1, 0, 0], [0, 0, 0, 0], [0, 0, 0, 1]]
    assert scale == pytest.approx(1.5)
    assert "fewer than the target" in caplog.text
    balanced, _ = ternary_quantise(w, per_class=2, balanced=True)
    assert torch.equal(balanced, assignment)
    empty, zero_scale = ternary_quantise(torch.zeros(2, 3), per_class=1)
    assert not empty.any() and zero_scale == 0.0


def test_single_class():
    w = torch.tensor([[0.3, -0.9, 0.1, 0.5]])
    assignment, scale, bias = quantise_head(w, torch.tensor([0.7]), per_class=2)
    assert assignment.tolist() == [[0, -1, 0, 1]]
    assert scale == pytest.approx(0.7)
    assert bias.tolist() == [0.0]


def test_per_class_larger_than_features_is_infeasible():
    with pytest.raises(InfeasibleSettingsError):
        ternary_quantise(torch.ones(2, 3), per_class=4)


def test_bias_ramp_matches_the_formula():
    assignment = torch.tensor([[1, 1, 0], [1, -1, 0], [-1, -1, 0]], dtype=torch.int8)
    bias = torch.tensor([0.5, -2.0, 1.0])
    # balance = [2, 0, -2] -> d = [4, 2, 0], D = 4, b_max = 2: b = 2 - d
    assert bias_ramp(assignment, bias).tolist() == pytest.approx([-2.0, 0.0, 2.0])


def test_bias_ramp_guard_when_every_class_has_the_same_balance():
    assignment = torch.tensor([[1, -1], [-1, 1], [0, 0]], dtype=torch.int8)
    ramp = bias_ramp(assignment, torch.tensor([1.0, -3.0, 2.0]))
    assert torch.isfinite(ramp).all() and ramp.tolist() == [0.0, 0.0, 0.0]
    assert bias_ramp(torch.tensor([[1, 0], [0, 0]], dtype=torch.int8), torch.zeros(2)).tolist() == [
        0.0,
        0.0,
    ]
