"""QPM head: constants, clique threshold, warm start and the program, on small planted data."""

from __future__ import annotations

import itertools
import math
import warnings

import numpy as np
import pytest
import torch

from retrofit.config import RetrofitConfig
from retrofit.errors import ConfigError, InfeasibleSettingsError, SolverError
from retrofit.methods.base import get_head
from retrofit.methods.qpm.cliques import (
    clique_threshold,
    duplicate_class_pairs,
    find_clique,
    greedy_assignment,
    improve_selection,
    make_unique,
    perturbed_search,
    selection_value,
)
from retrofit.methods.qpm.constants import (
    class_correlation,
    default_candidate_count,
    kth_largest,
    locality_bias,
    redundancy,
    select_candidates,
)
from retrofit.methods.qpm.cuts import (
    Cut,
    clique_cut,
    independence_number,
    separate,
    stable_cut,
)
from retrofit.methods.qpm.program import (
    DEFAULT_TIME_LIMIT,
    _gap_words,
    _time_limit_advice,
    available_solvers,
    check_settings,
    penalty_matrix,
    solve_program,
)
from retrofit.methods.qpm.projection import ValueCut, class_values, violated_cuts
from retrofit.solvers.stats import standardise


def planted(n_classes: int = 10, dim: int = 40, per_class_images: int = 60, seed: int = 0):
    """Gaussian features whose class means are sparse random prototypes."""
    g = torch.Generator().manual_seed(seed)
    proto = torch.randn(n_classes, dim, generator=g) * (
        torch.rand(n_classes, dim, generator=g) < 0.3
    )
    labels = torch.arange(n_classes).repeat_interleave(per_class_images)
    features = 2.0 * proto[labels] + torch.randn(len(labels), dim, generator=g) + 3.0
    return features, labels


def config(**kw) -> RetrofitConfig:
    base = {"n_features": 12, "per_class": 3, "progress": False, "seed": 0, "threads": 1}
    return RetrofitConfig(**{**base, **kw})


def class_sets(assignment: torch.Tensor) -> list[tuple[int, ...]]:
    """Feature set of each class from a (C, n_f) assignment."""
    return [tuple(torch.nonzero(row).flatten().tolist()) for row in assignment]


def warm_start(assoc: torch.Tensor, redund: torch.Tensor, n_features: int, per_class: int):
    tau, clique = clique_threshold(redund, n_features, kth_largest(assoc, per_class))
    selected = torch.zeros(assoc.shape[0], dtype=torch.bool)
    selected[clique] = True
    return tau, selected, greedy_assignment(assoc, clique, per_class)


@pytest.fixture(scope="module")
def fitted():
    features, labels = planted()
    return features, labels, get_head("qpm")(features, labels, config())


def test_head_satisfies_every_constraint(fitted):
    features, labels, result = fitted
    assert result.selected.shape == (12,) and result.selected.dtype == torch.int64
    assert len(set(result.selected.tolist())) == 12
    assert result.assignment.shape == (10, 12) and result.assignment.dtype == torch.int8
    assert set(result.assignment.unique().tolist()) <= {0, 1}
    assert (result.assignment.sum(dim=1) == 3).all()
    assert len(set(class_sets(result.assignment))) == 10
    assert torch.equal(result.weight, result.assignment.float()) and result.scale == 1.0
    assert torch.equal(result.bias, torch.zeros(10))
    _, mean, std = standardise(features[:, result.selected])
    assert torch.allclose(result.mean, mean) and torch.allclose(result.std, std)
    for key in (
        "status",
        "objective",
        "bound",
        "gap",
        "time",
        "n_variables",
        "n_constraints",
        "uniqueness_rounds",
    ):
        assert key in result.stats
    assert result.stats["status"] == "optimal"


def test_selected_order_is_by_contribution(fitted):
    features, labels, result = fitted
    assoc = class_correlation(features, labels, 10)[result.selected]
    contribution = (assoc * result.assignment.T.double()).sum(dim=1)
    assert (contribution[:-1] >= contribution[1:] - 1e-12).all()


def test_head_fits_the_data(fitted):
    features, labels, result = fitted
    x = (features[:, result.selected] - result.mean) / result.std
    accuracy = ((x @ result.weight.T + result.bias).argmax(dim=1) == labels).float().mean()
    assert accuracy > 0.5


def test_program_respects_e_le_s_and_cardinalities():
    features, labels = planted(seed=1)
    assoc = class_correlation(features, labels, 10)
    redund = redundancy(assoc)
    tau, s0, e0 = warm_start(assoc, redund, 12, 3)
    result = solve_program(assoc, redund, tau, config(), start_selected=s0, start_assignment=e0)
    assert int(result.selected.sum()) == 12
    assert not (result.assignment & ~result.selected[:, None]).any()
    assert (result.assignment.sum(dim=0) == 3).all()
    assert not duplicate_class_pairs(result.assignment)
    assert result.stats["objective"] >= result.stats["start_objective"] - 1e-9


def test_lazy_uniqueness_cuts_separate_identical_classes():
    g = torch.Generator().manual_seed(3)
    assoc = torch.rand(12, 6, generator=g, dtype=torch.float64)
    assoc[:, 1] = assoc[:, 0]  # classes 0 and 1 want the same features
    assoc[:, 3] = assoc[:, 2]
    redund = redundancy(assoc)
    tau, s0, e0 = warm_start(assoc, redund, 6, 2)
    result = solve_program(
        assoc,
        redund,
        tau,
        config(n_features=6, per_class=2),
        start_selected=s0,
        start_assignment=e0,
    )
    assert result.stats["uniqueness_rounds"] > 0
    assert not duplicate_class_pairs(result.assignment)
    assert (result.assignment.sum(dim=0) == 2).all()


def _brute_force(assoc, redund, tau, bias, n_features, per_class):
    """Best objective over every selection and every injective choice of class sets."""
    weights = penalty_matrix(redund, tau).tolist()
    a, b = assoc.tolist(), bias.tolist()
    n_classes = len(a[0])
    best = -math.inf
    for chosen in itertools.combinations(range(len(a)), n_features):
        base = sum(b[j] for j in chosen) - sum(
            weights[i][j] for i, j in itertools.combinations(chosen, 2)
        )
        sets = list(itertools.combinations(chosen, per_class))
        value = [[sum(a[j][c] for j in members) for c in range(n_classes)] for members in sets]
        for pick in itertools.permutations(range(len(sets)), n_classes):
            best = max(best, base + sum(value[p][c] for c, p in enumerate(pick)))
    return best


@pytest.mark.parametrize("seed", [0, 1])
def test_program_optimum_equals_brute_force(seed):
    g = torch.Generator().manual_seed(seed)
    assoc = torch.rand(7, 4, generator=g, dtype=torch.float64) * 2 - 0.5
    assoc[:, 1] = assoc[:, 0] + 0.01 * torch.rand(7, generator=g)  # uniqueness binds
    redund = redundancy(assoc)
    bias = 0.3 * torch.rand(7, generator=g, dtype=torch.float64)
    tau, s0, e0 = warm_start(assoc, redund, 4, 2)
    assert len(penalty_matrix(redund, tau).nonzero()) > 0  # the penalty is exercised
    result = solve_program(
        assoc,
        redund,
        tau,
        config(n_features=4, per_class=2, mip_gap=0.0),
        start_selected=s0,
        start_assignment=e0,
        bias=bias,
    )
    expected = _brute_force(assoc, redund, tau, bias, 4, 2)
    assert result.stats["objective"] == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize("seed", range(4))
def test_clique_threshold_is_the_smallest_feasible(seed):
    g = torch.Generator().manual_seed(seed)
    k, size = 9, 4
    redund = torch.triu(
        (torch.rand(k, k, generator=g, dtype=torch.float64) - 0.2).clamp_min(0), diagonal=1
    )
    tau, clique = clique_threshold(redund, size)
    sym = redund + redund.T
    bottleneck = min(
        max(float(sym[i, j]) for i, j in itertools.combinations(sub, 2))
        for sub in itertools.combinations(range(k), size)
    )
    values = sorted(set(sym[torch.triu_indices(k, k, 1).unbind()].tolist()))
    expected = next((v for v in values if v > bottleneck), math.inf)
    assert tau == expected
    assert len(clique) == size
    assert max(float(sym[i, j]) for i, j in itertools.combinations(clique.tolist(), 2)) < tau


def test_find_clique_reports_absence():
    path = torch.zeros(5, 5, dtype=torch.bool)
    for i in range(4):
        path[i, i + 1] = path[i + 1, i] = True
    assert find_clique(path, 3) is None
    assert find_clique(path, 2) is not None


@pytest.mark.parametrize("solver", ["cbc", "highs", "gurobi"])
def test_each_solver_is_honoured(solver):
    if solver not in available_solvers():
        pytest.skip(f"python-mip cannot load {solver} on this machine")
    features, labels = planted(seed=2)
    result = get_head("qpm")(features, labels, config(solver=solver))
    assert result.stats["solver"] == solver
    assert (result.assignment.sum(dim=1) == 3).all()
    assert len(set(class_sets(result.assignment))) == 10


def test_unavailable_solver_raises_solver_error():
    missing = [s for s in ("highs", "gurobi") if s not in available_solvers()]
    if not missing:
        pytest.skip("every solver is installed")
    features, labels = planted()
    with pytest.raises(SolverError, match=missing[0]):
        get_head("qpm")(features, labels, config(solver=missing[0]))


def test_deterministic_given_seed(fitted):
    features, labels, result = fitted
    again = get_head("qpm")(features, labels, config())
    assert torch.equal(result.selected, again.selected)
    assert torch.equal(result.assignment, again.assignment)


def _never(*args, **kwargs):
    raise AssertionError("reached the solver with impossible settings")


@pytest.mark.parametrize(
    ("n_classes", "dim", "n_features", "per_class", "match"),
    [
        (10, 8, 12, 3, "n_features=12 > 8"),
        (10, 40, 4, 2, "distinct sets"),
        (10, 40, 12, 13, "per_class=13 > n_features=12"),
    ],
)
def test_impossible_settings_fail_before_solving(
    monkeypatch, n_classes, dim, n_features, per_class, match
):
    import retrofit.methods.qpm.head as qpm_module

    monkeypatch.setattr(qpm_module, "solve_program", _never)
    monkeypatch.setattr(qpm_module, "correlation_with_moments", _never)
    features, labels = planted(n_classes=n_classes, dim=dim)
    cfg = config(n_features=n_features, per_class=min(per_class, n_features))
    cfg.per_class = per_class  # the config itself refuses this; the head must too
    with pytest.raises(InfeasibleSettingsError, match=match):
        get_head("qpm")(features, labels, cfg)


def test_check_settings_accepts_the_boundary():
    check_settings(n_classes=6, dim=4, n_features=4, per_class=2)  # comb(4, 2) = 6
    with pytest.raises(InfeasibleSettingsError):
        check_settings(n_classes=7, dim=4, n_features=4, per_class=2)


def test_time_limit_returns_a_feasible_assignment():
    features, labels = planted(n_classes=60, dim=240, per_class_images=20, seed=4)
    cfg = config(n_features=40, per_class=4, time_limit=0.05)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = get_head("qpm")(features, labels, cfg)
    said = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
    # on a loaded machine CBC may still finish this program within 0.05 s (optimal, or
    # "feasible" when its bound is a placeholder that proves nothing); then nothing may claim
    # the limit stopped it. Otherwise the limit was hit and a warning said so.
    if result.stats["time_limit_hit"]:
        assert any("QPM" in m for m in said), said
    else:
        assert result.stats["status"] in ("optimal", "feasible"), result.stats
        assert not any("time limit" in m for m in said), said
    assert result.selected.shape == (40,) and len(set(result.selected.tolist())) == 40
    assert (result.assignment.sum(dim=1) == 4).all()
    assert len(set(class_sets(result.assignment))) == 60


def test_time_limit_warning_reports_the_gap_and_what_to_change():
    assert _gap_words(0.0119) == "within 1.19 % of the bound"
    assert _gap_words(None) == "no bound proven"
    assert "solver='highs'" in _time_limit_advice("cbc")
    for solver in ("highs", "gurobi"):
        advice = _time_limit_advice(solver)
        assert "time_limit" in advice and "solver=" not in advice


def test_no_time_limit_means_the_default_budget(fitted):
    _, _, result = fitted  # config() leaves time_limit at None
    assert result.stats["time_limit"] == DEFAULT_TIME_LIMIT
    limited = get_head("qpm")(*planted(), config(time_limit=7.5))
    assert limited.stats["time_limit"] == 7.5


def test_class_correlation_is_pearson():
    features, labels = planted(n_classes=5, dim=7, per_class_images=20, seed=5)
    assoc = class_correlation(features, labels, 5, chunk_size=13)
    onehot = torch.nn.functional.one_hot(labels, 5).double().numpy()
    full = np.corrcoef(np.concatenate([features.double().numpy(), onehot], axis=1), rowvar=False)[
        :7, 7:
    ]
    np.testing.assert_allclose(assoc.numpy(), full / np.abs(full).max(), atol=1e-9)


def test_redundancy_shape_and_sign():
    g = torch.Generator().manual_seed(6)
    redund = redundancy(torch.randn(8, 5, generator=g))
    assert torch.equal(redund, torch.triu(redund, diagonal=1))
    assert (redund >= 0).all() and redund.max() <= 1


def test_candidates_skip_duplicates_and_stay_feasible():
    g = torch.Generator().manual_seed(7)
    assoc = torch.randn(60, 5, generator=g, dtype=torch.float64)
    assoc[1] = assoc[0] * 1.01  # a near-duplicate of feature 0
    chosen = select_candidates(assoc, n_features=10, per_class=2, n_candidates=20)
    assert len(chosen) == 20 and torch.equal(chosen, chosen.sort().values)
    assert not ({0, 1} <= set(chosen.tolist()))
    tiny = select_candidates(
        assoc[:12], n_features=10, per_class=2, n_candidates=3, duplicate_cut=0.01
    )
    assert len(tiny) >= 10
    with pytest.raises(ConfigError):
        select_candidates(assoc, n_features=10, per_class=2, n_candidates=0)


def test_default_candidate_count_grows_with_classes_up_to_a_cap():
    assert default_candidate_count(50, 200, 2048) == 400  # CUB scale: 8 per selected feature
    assert default_candidate_count(50, 250, 2048) == 500  # 2 per class
    assert default_candidate_count(50, 1000, 2048) == 600  # capped at 12 per selected feature
    assert default_candidate_count(50, 1000, 300) == 300  # never more than D


def test_make_unique_keeps_counts_and_selection():
    g = torch.Generator().manual_seed(8)
    assoc = torch.rand(6, 15, generator=g, dtype=torch.float64)
    selected = torch.arange(6)
    assignment = torch.zeros(6, 15, dtype=torch.bool)
    assignment[:2] = True  # every class on features {0, 1}
    unique = make_unique(assignment, assoc, selected)
    assert not duplicate_class_pairs(unique)
    assert (unique.sum(dim=0) == 2).all()
    assert torch.equal(unique[:, 0], assignment[:, 0])


def _search_problem() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A (D x C), penalty weights and the clique start of a 12-class, 50-feature planted problem."""
    features, labels = planted(n_classes=12, dim=50, seed=9)
    assoc = class_correlation(features, labels, 12)
    redund = redundancy(assoc)
    tau, clique = clique_threshold(redund, 10, kth_largest(assoc, 3))
    return assoc, penalty_matrix(redund, tau), clique


def test_improve_selection_never_worsens():
    assoc, weights, clique = _search_problem()

    def value(members):
        sub = assoc[members]
        return float(sub.topk(3, dim=0).values.sum() - weights[members][:, members].sum() / 2)

    better = improve_selection(assoc, weights, clique, 3)
    assert len(set(better.tolist())) == 10
    assert value(better) >= value(clique) - 1e-12


def test_locality_prefers_central_peaks():
    g = torch.Generator().manual_seed(10)
    maps = 0.1 * torch.rand(16, 2, 7, 7, generator=g)
    maps[:, 0, 3, 3] += 4.0  # feature 0 fires in the centre
    maps[:, 1, 0, 6] += 4.0  # feature 1 fires equally strongly, in a corner
    bias = locality_bias(maps.half(), chunk_elements=200)
    assert bias[0] > bias[1] and bias.max() == pytest.approx(1.0)


def test_locality_needs_maps():
    features, labels = planted()
    with pytest.raises(ConfigError, match="locality"):
        get_head("qpm")(features, labels, config(qpm={"locality": True}))


def test_locality_enters_the_head():
    features, labels = planted(n_classes=6, dim=20, seed=11)
    maps = torch.rand(len(labels), 20, 5, 5).half()
    result = get_head("qpm")(
        features, labels, config(n_features=8, qpm={"locality": True}), maps=maps
    )
    assert result.stats["locality"] and (result.assignment.sum(dim=1) == 3).all()


def _random_conflicts(k: int, density: float, seed: int) -> dict[int, set[int]]:
    g = torch.Generator().manual_seed(seed)
    neighbours: dict[int, set[int]] = {j: set() for j in range(k)}
    for i, j in itertools.combinations(range(k), 2):
        if float(torch.rand(1, generator=g)) < density:
            neighbours[i].add(j)
            neighbours[j].add(i)
    return neighbours


def _all_cuts(neighbours: dict[int, set[int]]) -> list[Cut]:
    """Every stable-set cut on sets of 3+ features and every clique cut with every m."""
    cuts = []
    for size in range(3, len(neighbours) + 1):
        for members in itertools.combinations(range(len(neighbours)), size):
            cuts.append(stable_cut(members, independence_number(list(members), neighbours)))
            if all(b in neighbours[a] for a, b in itertools.combinations(members, 2)):
                cuts += [clique_cut(members, m) for m in range(1, size)]
    return cuts


@pytest.mark.parametrize("seed", range(3))
def test_every_cut_holds_at_every_integer_point(seed):
    neighbours = _random_conflicts(7, 0.5, seed)
    cuts = _all_cuts(neighbours)
    assert any(cut.m > 1 for cut in cuts) and any(cut.rhs > 1 and cut.m == 1 for cut in cuts)
    for bits in itertools.product([0.0, 1.0], repeat=7):
        y = {(i, j): bits[i] * bits[j] for i in range(7) for j in neighbours[i] if i < j}
        assert max(cut.violation(list(bits), y) for cut in cuts) <= 1e-12


def test_independence_number_matches_brute_force():
    neighbours = _random_conflicts(9, 0.4, 5)
    members = list(range(9))
    expected = max(
        len(sub)
        for size in range(10)
        for sub in itertools.combinations(members, size)
        if not any(b in neighbours[a] for a, b in itertools.combinations(sub, 2))
    )
    assert independence_number(members, neighbours) == expected


def test_separation_cuts_off_half_selections():
    # a triangle and a 5-cycle of conflicts, every feature at 1/2 and no penalty paid
    edges = [(0, 1), (1, 2), (0, 2), (3, 4), (4, 5), (5, 6), (6, 7), (3, 7)]
    neighbours: dict[int, set[int]] = {j: set() for j in range(8)}
    for i, j in edges:
        neighbours[i].add(j)
        neighbours[j].add(i)
    s, y = [0.5] * 8, dict.fromkeys(edges, 0.0)
    cuts = separate(s, y, neighbours, set(), limit=50)
    assert {cut.members for cut in cuts} >= {(0, 1, 2), (3, 4, 5, 6, 7)}
    assert all(cut.violation(s, y) > 0 for cut in cuts)
    assert separate(s, y, neighbours, set(cuts), limit=50) == []


@pytest.mark.parametrize("seed", range(3))
def test_cuts_and_continuous_e_keep_the_optimum(seed):
    g = torch.Generator().manual_seed(20 + seed)
    assoc = torch.rand(10, 4, generator=g, dtype=torch.float64) * 2 - 0.5
    assoc[5:] = assoc[:5] + 0.2 * torch.rand(5, 4, generator=g)  # redundant twins
    redund = redundancy(assoc)
    tau, s0, e0 = warm_start(assoc, redund, 4, 2)
    values = []
    for rounds in (0, 50):
        cfg = config(n_features=4, per_class=2, mip_gap=0.0, qpm={"cut_rounds": rounds})
        result = solve_program(assoc, redund, tau, cfg, start_selected=s0, start_assignment=e0)
        assert result.stats["status"] == "optimal"
        assert not duplicate_class_pairs(result.assignment)
        values.append(result.stats["objective"])
    assert result.stats["n_cuts"] > 0
    assert values[0] == pytest.approx(values[1], abs=1e-7)
    assert values[0] == pytest.approx(_brute_force(assoc, redund, tau, torch.zeros(10), 4, 2))


def test_perturbed_search_beats_or_matches_one_swap_search():
    assoc, weights, clique = _search_problem()
    plain = improve_selection(assoc, weights, clique, 3)
    kicked = perturbed_search(assoc, weights, clique, 3, rounds=30, seed=1)
    assert len(set(kicked.tolist())) == 10
    value = selection_value(assoc, weights, kicked, 3)
    assert value >= selection_value(assoc, weights, plain, 3) - 1e-12
    assert torch.equal(kicked, perturbed_search(assoc, weights, clique, 3, rounds=30, seed=1))


def _top_k_value(assoc: np.ndarray, chosen: list[int], per_class: int) -> np.ndarray:
    """V_c of a 0/1 selection: the sum of each class's per_class largest A among `chosen`."""
    return -np.sort(-assoc[chosen], axis=0)[:per_class].sum(axis=0)


@pytest.mark.parametrize("seed", range(3))
def test_value_cuts_hold_at_every_selection_and_are_tight(seed):
    rng = np.random.default_rng(seed)
    assoc = rng.uniform(-0.5, 1.0, size=(8, 3))
    per_class = 2
    every_u = [ValueCut(c, float(u)) for c in range(3) for u in assoc[:, c]]
    for size in range(per_class, 9):
        for chosen in itertools.combinations(range(8), size):
            s = np.zeros(8)
            s[list(chosen)] = 1.0
            true = _top_k_value(assoc, list(chosen), per_class)
            values, u = class_values(assoc, s, per_class)
            np.testing.assert_allclose(values, true, atol=1e-12)
            for cut in every_u:
                assert cut.value(assoc, s, per_class) >= true[cut.cls] - 1e-12
            for c in range(3):
                assert ValueCut(c, float(u[c])).value(assoc, s, per_class) == pytest.approx(true[c])
            assert violated_cuts(assoc, s, values, per_class, set()) == []


def test_class_values_solve_the_fractional_lp():
    rng = np.random.default_rng(7)
    assoc = rng.uniform(-1.0, 1.0, size=(9, 4))
    s = rng.uniform(0.0, 1.0, size=9)
    s *= 4.0 / s.sum()
    values, u = class_values(assoc, s, 3)
    for c in range(4):  # the inner LP by brute force over the dual: min over every threshold
        dual = [3 * t + np.maximum(assoc[:, c] - t, 0.0) @ s for t in assoc[:, c]]
        assert values[c] == pytest.approx(min(dual))
        assert ValueCut(c, float(u[c])).value(assoc, s, 3) == pytest.approx(values[c])
    theta = values + 0.1
    assert {cut.cls for cut in violated_cuts(assoc, s, theta, 3, set())} == set(range(4))


def _twin_instance(seed: int, n_features: int, per_class: int):
    """Small A whose classes 0 and 1 want the same features and whose features have twins."""
    g = torch.Generator().manual_seed(seed)
    assoc = torch.rand(8, 4, generator=g, dtype=torch.float64) * 2 - 0.5
    assoc[:, 1] = assoc[:, 0] + 0.01 * torch.rand(8, generator=g)  # uniqueness binds
    assoc[4:] = assoc[:4] + 0.2 * torch.rand(4, 4, generator=g)  # redundant twins
    redund = redundancy(assoc)
    tau, s0, e0 = warm_start(assoc, redund, n_features, per_class)
    return assoc, redund, tau, s0, e0, g


@pytest.mark.parametrize("seed", range(3))
def test_projected_and_assignment_forms_reach_the_brute_force_optimum(seed):
    assoc, redund, tau, s0, e0, g = _twin_instance(40 + seed, 4, 2)
    bias = 0.2 * torch.rand(8, generator=g, dtype=torch.float64)
    expected = _brute_force(assoc, redund, tau, bias, 4, 2)
    lazy_only = {"formulation": "projected", "value_cut_window": 0, "cut_rounds": 0}
    for qpm in ({}, lazy_only, {"formulation": "assignment"}):
        cfg = config(n_features=4, per_class=2, mip_gap=0.0, qpm=qpm)
        result = solve_program(
            assoc, redund, tau, cfg, start_selected=s0, start_assignment=e0, bias=bias
        )
        assert result.stats["status"] == "optimal"
        assert not duplicate_class_pairs(result.assignment)
        assert result.stats["objective"] == pytest.approx(expected, abs=1e-6)
        assert result.stats["bound"] >= expected - 1e-6


def test_overvalued_theta_is_corrected_after_the_solve():
    assoc, redund, tau, s0, e0, _ = _twin_instance(40, 4, 2)
    qpm = {"formulation": "projected", "value_cut_window": 0, "cut_rounds": 0}
    cfg = config(n_features=4, per_class=2, mip_gap=0.0, qpm=qpm)
    result = solve_program(assoc, redund, tau, cfg, start_selected=s0, start_assignment=e0)
    assert result.stats["value_rounds"] > 0  # the first solve's theta exceeded V_c(s)
    expected = _brute_force(assoc, redund, tau, torch.zeros(8), 4, 2)
    assert result.stats["objective"] == pytest.approx(expected, abs=1e-6)


def test_unknown_formulation_is_a_config_error_before_any_work():
    with pytest.raises(ConfigError, match="qpm.formulation must be one of"):
        config(n_features=4, per_class=2, qpm={"formulation": "dense"})
