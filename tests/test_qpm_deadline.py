"""time_limit bounds the whole QPM head stage: constants, warm start, cuts, solves, rounds."""

from __future__ import annotations

import warnings

import torch

from retrofit.methods.base import get_head
from retrofit.methods.qpm.cliques import perturbed_search
from retrofit.methods.qpm.constants import (
    MIN_ROWS_PER_CLASS,
    class_correlation,
    redundancy,
    rows_within,
)
from retrofit.methods.qpm.program import penalty_matrix
from retrofit.solvers.deadline import Deadline
from tests.test_qpm import class_sets, config, planted


def _fit(**kw):
    features, labels = planted(n_classes=40, dim=160, per_class_images=10, seed=2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return get_head("qpm")(features, labels, config(n_features=30, per_class=3, **kw))


def test_a_huge_search_stops_at_its_share_of_the_time_limit():
    limit = 1.5
    result = _fit(time_limit=limit, qpm={"search_rounds": 10**7, "candidates": 160})
    stats = result.stats
    assert stats["search_stopped_by_deadline"]
    assert stats["search_rounds_done"] < 10**7
    assert stats["warm_start_budget"] <= 0.3 * limit + 1e-6
    # without the deadline 10**7 kicks would take hours; the bound is loose so load cannot flake it
    assert stats["head_time"] <= 10 * limit
    assert len(set(class_sets(result.assignment))) == 40  # still a valid, unique head
    assert (result.assignment.sum(dim=1) == 3).all()


def test_a_deadline_already_passed_returns_the_warm_start_unsolved():
    result = _fit(time_limit=1e-6, qpm={"search_rounds": 10**7})
    stats = result.stats
    assert stats["status"] == "not_solved" and stats["time_limit_hit"]
    assert stats["search_rounds_done"] == 0
    assert result.selected.shape == (30,)
    assert len(set(class_sets(result.assignment))) == 40


def test_without_a_deadline_the_search_runs_every_round():
    features, labels = planted(n_classes=12, dim=40, per_class_images=10, seed=5)
    assoc = class_correlation(features, labels, 12)
    redund = redundancy(assoc)
    record: dict = {}
    start = torch.arange(10)
    perturbed_search(assoc, penalty_matrix(redund, 0.5), start, 3, rounds=7, record=record)
    assert record == {"search_rounds_done": 7, "search_stopped_by_deadline": False}
    stopped: dict = {}
    perturbed_search(
        assoc,
        penalty_matrix(redund, 0.5),
        start,
        3,
        rounds=7,
        deadline=Deadline.after(0.0),
        record=stopped,
    )
    assert stopped == {"search_rounds_done": 0, "search_stopped_by_deadline": True}


def test_constants_come_from_evenly_spaced_rows_when_a_full_pass_does_not_fit() -> None:
    features, labels = planted(n_classes=4, dim=12, per_class_images=5000, seed=3)
    assert rows_within(features, float("inf"), 4, chunk_size=100) is None
    assert rows_within(features, 3600.0, 4, chunk_size=100) is None
    rows = rows_within(features, 1e-9, 4, chunk_size=100)
    assert rows is not None and len(rows) == 4 * MIN_ROWS_PER_CLASS
    assert torch.equal(rows, torch.arange(0, len(features), len(features) // len(rows)))
    subset = class_correlation(features, labels, 4, chunk_size=37, rows=rows)
    direct = class_correlation(features[rows], labels[rows], 4)
    assert torch.allclose(subset, direct, atol=1e-12)
    full = class_correlation(features, labels, 4)
    assert not torch.equal(subset, full)  # an estimate, close to the full one:
    assert torch.equal(subset.argmax(dim=0), full.argmax(dim=0))
    assert float(torch.corrcoef(torch.stack([subset.flatten(), full.flatten()]))[0, 1]) > 0.9
    assert _fit(time_limit=5).stats["constants_rows"] == 400  # a full pass fits: every row
