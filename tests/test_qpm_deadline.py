"""time_limit bounds the whole QPM head stage: constants, warm start, cuts, solves, rounds."""

from __future__ import annotations

import warnings

import torch

from retrofit.heads import get_head
from retrofit.solvers.cliques import perturbed_search
from retrofit.solvers.deadline import Deadline
from retrofit.solvers.qpm_constants import class_correlation, redundancy
from retrofit.solvers.qpm_program import penalty_matrix
from tests.test_qpm import class_sets, config, planted


def _fit(**kw):
    features, labels = planted(n_classes=40, dim=160, per_class_images=10, seed=2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return get_head("qpm")(features, labels, config(n_features=30, per_class=3, **kw))


def test_a_huge_search_stops_at_its_share_of_the_time_limit():
    limit = 1.5
    result = _fit(time_limit=limit, extra={"search_rounds": 10**7, "candidates": 160})
    stats = result.stats
    assert stats["search_stopped_by_deadline"]
    assert stats["search_rounds_done"] < 10**7
    assert stats["warm_start_budget"] <= 0.3 * limit + 1e-6
    # without the deadline 10**7 kicks would take hours; the bound is loose so load cannot flake it
    assert stats["head_time"] <= 10 * limit
    assert len(set(class_sets(result.assignment))) == 40  # still a valid, unique head
    assert (result.assignment.sum(dim=1) == 3).all()


def test_a_deadline_already_passed_returns_the_warm_start_unsolved():
    result = _fit(time_limit=1e-6, extra={"search_rounds": 10**7})
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
