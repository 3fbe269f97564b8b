"""The QPM binary program, solved with python-mip (CBC by default, HiGHS or Gurobi on request).

maximise  sum_jc A_jc E_jc - sum_{(j,j') in P} Rt_jj' y_jj' + sum_j b_j s_j
s.t.      E_jc <= s_j,   sum_j s_j = n_f,   sum_j E_jc = per_class for every class c,
          y_jj' >= s_j + s_j' - 1,  y >= 0                  (linearises s_j s_j')
          class feature sets pairwise distinct               (added lazily, see below)

P holds the pairs with R >= tau and Rt = R / max_P R in (0, 1]. Uniqueness is added only for
pairs of classes that share a set in a solution: o_j >= E_jc + E_jc' - 1, sum_j o_j <=
per_class - 1 (the lower bounds on o are what make the cut bite); then the program is solved
again from the previous solution, repaired to be unique, until no two classes share a set.
o is continuous in [0, 1]: with binary E the constraints force o_j = 1 on shared features,
so binaries would add branching without changing the feasible set.

Exact reformulations that make CBC's job smaller:
- By default (qpm.formulation = "projected") E is projected out: one continuous theta_c
  per class replaces the K x C columns E and rows E <= s, bounded by the value cuts
  theta_c <= k u + sum_j (A_jc - u)^+ s_j of retrofit.methods.qpm.projection (LP duality of
  the per-class assignment LP, so the LP bound is unchanged and node LPs are far smaller).
  Cuts exact around the start selection are added up front, the most violated cut of every
  class is separated in the root loop, and after each solve the theta of the returned 0/1
  selection is checked against its true value V_c(s): a missing cut is added and the program
  solved again, so a returned optimum is optimal for the true program. The objective reported
  is always the true value of the returned selection; the solver's bound is valid for the true
  program after any round, since every cut is valid. Classes named in a uniqueness cut get
  binary E columns, E <= s, sum_j E_jc = per_class and theta_c <= sum_j A_jc E_jc.
  qpm.formulation = "assignment" keeps E for every class, as described next.
- E is continuous except for the classes named in a uniqueness cut. For a 0/1 selection s,
  {0 <= E_.c <= s, sum_j E_jc = per_class} is a polytope with 0/1 vertices (a box cut by one
  cardinality row), so the best E for any integer s is a 0/1 top-per_class choice and the
  optimum does not change; only s is branched on (K binaries instead of K (C + 1)). The
  returned E is that top choice, recomputed from s.
- Before branch and bound, rounds of valid clique and stable-set inequalities on (s, y) are
  separated from the LP relaxation (retrofit.methods.qpm.cuts); they cut off fractional
  selections that dodge the redundancy penalty, which is where the relaxation is weak.
"""

from __future__ import annotations

import itertools
import logging
import math
import time
import warnings
from dataclasses import dataclass, field
from typing import Any

import mip
import numpy as np
import torch

from retrofit.config import RetrofitConfig
from retrofit.errors import DataError, InfeasibleSettingsError, SolverError
from retrofit.methods.qpm.cliques import duplicate_class_pairs, make_unique
from retrofit.methods.qpm.cuts import Cut, separate
from retrofit.methods.qpm.projection import ValueCut, seed_cuts, violated_cuts
from retrofit.solvers.deadline import Deadline
from retrofit.solvers.quiet import progress_line, solver_log_wanted, solver_output

logger = logging.getLogger(__name__)
NO_BOUND = 1e30  # |objective_bound| at or above this is a solver's "no bound" placeholder

_SOLVER_NAMES = {"cbc": mip.CBC, "highs": mip.HIGHS, "gurobi": mip.GUROBI}
_SOLVER_HINTS = {
    "cbc": "reinstall python-mip with its CBC build (pip install --force-reinstall mip)",
    "highs": "install HiGHS for python-mip (pip install 'retrofit[highs]', which adds highsbox)",
    "gurobi": "install Gurobi with a licence and set GUROBI_HOME (or pip install gurobipy)",
}
CUT_TIME_SHARE = 0.4  # at most this share of the time limit goes to the root cut loop
DEFAULT_TIME_LIMIT = 600.0  # seconds, when config.time_limit is None


@dataclass
class ProgramResult:
    """A solution over the K candidate features; `selected` has exactly n_f True entries."""

    selected: torch.Tensor  # (K,) bool, s
    assignment: torch.Tensor  # (K, C) bool, E
    stats: dict[str, Any] = field(default_factory=dict)


def check_settings(n_classes: int, dim: int, n_features: int, per_class: int) -> None:
    """Fail before any work when no assignment can satisfy the settings."""
    if n_classes < 2:
        raise DataError(f"QPM needs labels of at least 2 classes, got {n_classes}.")
    if per_class > n_features:
        raise InfeasibleSettingsError(
            f"per_class={per_class} > n_features={n_features}: a class cannot use more features "
            "than are selected. Lower per_class or raise n_features."
        )
    if n_features > dim:
        raise InfeasibleSettingsError(
            f"n_features={n_features} > {dim}, the number of features available. Lower n_features."
        )
    combos = math.comb(n_features, per_class)
    if n_classes > combos:
        raise InfeasibleSettingsError(
            f"{n_classes} classes cannot have distinct sets of per_class={per_class} features out of "
            f"n_features={n_features} (only {combos} sets exist). Raise n_features or change per_class."
        )


def available_solvers() -> list[str]:
    """The values of `config.solver` that python-mip can load on this machine."""
    names = []
    for name in _SOLVER_NAMES:
        try:
            _new_model(name)
        except SolverError:
            continue
        names.append(name)
    return names


def penalty_pairs(
    redundancy: torch.Tensor, tau: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(rows, cols, Rt) of the pairs P with R >= tau, Rt = R / max_P R; pairs with R = 0 dropped."""
    mask = (redundancy >= tau) & (redundancy > 0)
    rows, cols = torch.nonzero(mask, as_tuple=True)
    weights = redundancy[rows, cols].to(torch.float64)
    if weights.numel():
        weights = weights / weights.max()
    return rows, cols, weights


def penalty_matrix(redundancy: torch.Tensor, tau: float) -> torch.Tensor:
    """Symmetric K x K matrix of the penalty weights Rt on P (0 elsewhere)."""
    rows, cols, weights = penalty_pairs(redundancy, tau)
    matrix = torch.zeros(redundancy.shape, dtype=torch.float64)
    matrix[rows, cols] = weights
    return matrix + matrix.T


def program_objective(
    assoc: torch.Tensor,
    redundancy: torch.Tensor,
    tau: float,
    selected: torch.Tensor,
    assignment: torch.Tensor,
    bias: torch.Tensor | None = None,
) -> float:
    """Objective of a 0/1 solution (s, E), evaluated exactly as the program scores it."""
    rows, cols, weights = penalty_pairs(redundancy, tau)
    s = selected.to(torch.float64)
    value = float((assoc.to(torch.float64) * assignment.to(torch.float64)).sum())
    value -= float((weights * s[rows] * s[cols]).sum())
    if bias is not None:
        value += float((bias.to(torch.float64) * s).sum())
    return value


def top_assignment(assoc: torch.Tensor, selected: torch.Tensor, per_class: int) -> torch.Tensor:
    """E (K x C bool): every class takes its `per_class` largest A among the selected features.

    The best assignment for a selection when uniqueness does not bind; ties go to the lower
    feature index.
    """
    chosen = torch.nonzero(selected).flatten()
    order = torch.argsort(-assoc[chosen], dim=0, stable=True)[:per_class]
    assignment = torch.zeros(assoc.shape, dtype=torch.bool)
    assignment[chosen[order], torch.arange(int(assoc.shape[1])).expand_as(order)] = True
    return assignment


def solve_program(
    assoc: torch.Tensor,
    redundancy: torch.Tensor,
    tau: float,
    config: RetrofitConfig,
    *,
    start_selected: torch.Tensor,
    start_assignment: torch.Tensor,
    bias: torch.Tensor | None = None,
    deadline: Deadline | None = None,
) -> ProgramResult:
    """Solve the program over K candidates with A (K x C), upper-triangular R (K x K) and tau.

    The start (s, E) must be feasible and unique (e.g. the clique and its greedy assignment);
    it is the MIP start and the fallback when the solver finds nothing better in time.
    `config.time_limit` bounds the total solver time over all uniqueness rounds; None means
    DEFAULT_TIME_LIMIT, so a conversion always ends (at CUB scale CBC is still above a 0.5 % gap
    after 50 minutes, see benchmarks/heads_qpm_scale.py). `deadline` (the head stage's own, see
    retrofit.methods.qpm.head) caps the cuts, solves and rounds further, building the model included;
    when it has already passed, the start is returned unsolved.
    """
    k, n_classes = (int(s) for s in assoc.shape)
    n_features, per_class = config.n_features, config.per_class
    check_settings(n_classes, k, n_features, per_class)
    start_selected = start_selected.to(torch.bool)
    start_assignment = start_assignment.to(torch.bool)
    _check_start(start_selected, start_assignment, n_features, per_class)

    built = time.perf_counter()
    with solver_output(solver_log_wanted(config.solver_log)):  # HiGHS greets on model set-up
        program = _Program(assoc, redundancy, tau, config, bias)
    stats: dict[str, Any] = {
        "solver": config.solver,
        "tau": float(tau),
        "n_candidates": k,
        "n_pairs": program.n_pairs,
        "start_objective": program_objective(
            assoc, redundancy, tau, start_selected, start_assignment, bias
        ),
        "build_time": time.perf_counter() - built,
    }

    def score(selected: torch.Tensor, assignment: torch.Tensor) -> float:
        return program_objective(assoc, redundancy, tau, selected, assignment, bias)

    max_rounds = config.qpm.max_rounds
    best_s, best_e = start_selected, start_assignment
    rounds = value_rounds = 0
    began = time.perf_counter()
    time_limit = DEFAULT_TIME_LIMIT if config.time_limit is None else float(config.time_limit)
    budget = time_limit if deadline is None else min(time_limit, deadline.remaining())
    if budget <= 0:
        unsolved = _unsolved(start_selected, start_assignment, score, stats, time_limit)
        if config.progress:
            progress_line(summary_line(unsolved.stats))
        return unsolved
    cut_budget = CUT_TIME_SHARE * budget
    seeded = program.seed_value_cuts(start_selected, time.perf_counter() + cut_budget / 2)
    stats.update(program.tighten(cut_budget - (time.perf_counter() - began)))
    stats["seed_time"] = seeded
    spent = time.perf_counter() - began
    limit_hit = False
    status = mip.OptimizationStatus.OTHER
    while True:
        remaining = budget - spent
        program.set_start(best_s, best_e)
        began = time.perf_counter()
        status = program.optimize(remaining)
        spent += time.perf_counter() - began
        if status == mip.OptimizationStatus.NO_SOLUTION_FOUND:
            warnings.warn(
                "QPM: the solver found no solution within the time limit; returning its start "
                "(the greedy clique warm start, or the previous round's solution made unique). "
                "Raise time_limit for a better head.",
                RuntimeWarning,
                stacklevel=2,
            )
            limit_hit = True
            break
        if status not in (mip.OptimizationStatus.OPTIMAL, mip.OptimizationStatus.FEASIBLE):
            raise SolverError(
                f"QPM: solver {config.solver!r} ended with status {status.name}; the program is "
                "feasible by construction, so this is a solver failure. Try another solver."
            )
        s_val, e_val = program.solution()
        limit_hit = status == mip.OptimizationStatus.FEASIBLE
        missing = program.missing_value_cuts()
        duplicates = duplicate_class_pairs(e_val)
        if duplicates:
            e_val = make_unique(e_val, assoc, torch.nonzero(s_val).flatten())
        # a solver that dropped the start may stop on a worse incumbent; never return less
        if score(s_val, e_val) >= score(best_s, best_e):
            best_s, best_e = s_val, e_val
        out_of_time = spent >= budget
        stop = limit_hit or out_of_time or rounds + value_rounds >= max_rounds
        if missing and status == mip.OptimizationStatus.OPTIMAL:
            status = mip.OptimizationStatus.FEASIBLE  # optimal only for a relaxation
        if missing and not stop:
            value_rounds += 1
            logger.info("QPM value round %d: %d classes overvalued", value_rounds, missing)
            if not duplicates:
                continue
        if not duplicates:
            break
        if stop:
            warnings.warn(
                f"QPM: {len(duplicates)} pairs of classes still shared a feature set when the "
                f"{'time limit' if limit_hit or out_of_time else 'round limit'} stopped the "
                "uniqueness rounds; they were separated by greedy swaps.",
                RuntimeWarning,
                stacklevel=2,
            )
            break
        rounds += 1
        logger.info(
            "QPM uniqueness round %d: %d class pairs share a feature set", rounds, len(duplicates)
        )
        for c, c2 in duplicates:
            program.add_uniqueness_cut(c, c2)

    objective = score(best_s, best_e)
    outcome = solve_outcome(status.name.lower(), objective, program.bound(status))
    gap = outcome["gap"]
    if limit_hit and status == mip.OptimizationStatus.FEASIBLE:
        warnings.warn(
            f"QPM: the time limit ({time_limit:g} s) stopped the solver before optimality; "
            f"returning the best feasible assignment found ({_gap_words(gap)}, see "
            f"stats['gap']). {_time_limit_advice(config.solver)}",
            RuntimeWarning,
            stacklevel=2,
        )
    stats.update(
        **outcome,
        objective=objective,
        time=spent,
        time_limit=time_limit,
        time_limit_hit=limit_hit,
        uniqueness_rounds=rounds,
        value_rounds=value_rounds,
        n_value_cuts=len(program.value_cuts),
        n_variables=program.model.num_cols,
        n_binaries=program.model.num_int,
        n_constraints=program.model.num_rows,
    )
    logger.info(
        "QPM program: status=%s objective=%.4f bound=%s time=%.1fs rounds=%d",
        stats["status"],
        objective,
        stats["bound"],
        spent,
        rounds,
    )
    if config.progress:
        progress_line(summary_line(stats))
    return ProgramResult(selected=best_s, assignment=best_e, stats=stats)


def solve_outcome(status: str, objective: float, bound: float | None) -> dict[str, Any]:
    """status, bound and gap for the stats, from the solver's status name, the true objective
    of the returned assignment and the bound the solver reported.

    A bound of +-1e+50 (CBC's, e.g. when the LP relaxation under the incumbent's cutoff is
    infeasible) or anything at or above NO_BOUND is a placeholder, not a figure: bound and gap
    are then None, and a status of "optimal" becomes "feasible", since nothing proves it.
    """
    if bound is None or not math.isfinite(bound) or abs(bound) >= NO_BOUND:
        bound = None
    if status == "optimal" and bound is None:
        status = "feasible"
    gap = None if bound is None else max(0.0, bound - objective) / max(abs(objective), 1e-10)
    return {"status": status, "bound": None if bound is None else float(bound), "gap": gap}


def summary_line(stats: dict[str, Any], what: str = "QPM") -> str:
    """One honest line about a solve, from its stats: proven or not, and how far from the bound."""
    status, seconds = stats.get("status"), _seconds(float(stats.get("time") or 0.0))
    gap = stats.get("gap")
    tail = "no bound known" if gap is None else f"within {100 * gap:.3g} % of the bound"
    limit = stats.get("time_limit")
    if status == "not_solved":
        return (
            f"{what}: the time limit ({limit:g} s) ran out before the solver started; the warm "
            "start was kept, no bound known"
        )
    if status == "optimal":
        return f"{what}: proven optimal (objective {stats['objective']:.6g}) in {seconds} s"
    kept = stats.get("start_objective") is not None and stats.get("objective") is not None
    kept = kept and float(stats["objective"]) <= float(stats["start_objective"])
    if status == "no_solution_found" or kept:
        return (
            f"{what}: the warm start was kept (the solver found nothing better in "
            f"{seconds} s), {tail}"
        )
    if stats.get("time_limit_hit") and limit is not None:
        return f"{what}: stopped at the {limit:g} s time limit, best assignment {tail}"
    return (
        f"{what}: best assignment found (objective {stats['objective']:.6g}) in {seconds} s, "
        f"not proven optimal, {tail}"
    )


class _Program:
    """The python-mip model and its variables; the only place numpy meets the solver."""

    def __init__(
        self,
        assoc: torch.Tensor,
        redundancy: torch.Tensor,
        tau: float,
        config: RetrofitConfig,
        bias: torch.Tensor | None,
    ) -> None:
        k, n_classes = (int(s) for s in assoc.shape)
        self.config = config
        self.model = _new_model(config.solver)
        model = self.model
        model.verbose = 1  # log level 0 crashes cbcbox's CBC; output is silenced in optimize()
        model.seed = int(config.seed)
        if config.threads is not None:
            model.threads = int(config.threads)
        if config.mip_gap is not None:
            model.max_mip_gap = float(config.mip_gap)

        a = assoc.to(torch.float64).numpy()
        self.a = a
        rows, cols, weights = penalty_pairs(redundancy, tau)
        self.pairs = list(zip(rows.tolist(), cols.tolist()))
        self.n_pairs = len(self.pairs)
        self.assoc = assoc.to(torch.float64)
        self.binary_classes: set[int] = set()
        self.cuts: set[Cut] = set()
        self.neighbours: dict[int, set[int]] = {j: set() for j in range(k)}
        for i, j in self.pairs:
            self.neighbours[i].add(j)
            self.neighbours[j].add(i)
        self.projected = _formulation(config) == "projected"
        self.value_cuts: set[ValueCut] = set()
        self.s = [model.add_var(var_type=mip.BINARY) for _ in range(k)]
        self.y = [model.add_var(lb=0.0, ub=1.0) for _ in self.pairs]
        self.y_of = dict(zip(self.pairs, self.y))
        self.e: dict[int, list[mip.Var]] = {}
        model += mip.xsum(self.s) == config.n_features
        for (i, j), y in zip(self.pairs, self.y):
            model += y >= self.s[i] + self.s[j] - 1
        terms = [-w * y for w, y in zip(weights.numpy(), self.y)]
        if bias is not None:
            b = bias.to(torch.float64).numpy()
            terms += [b[j] * self.s[j] for j in range(k) if b[j] != 0]
        if self.projected:
            top = -np.sort(-a, axis=0)[: config.per_class].sum(axis=0)
            self.theta = [model.add_var(lb=-mip.INF, ub=float(top[c])) for c in range(n_classes)]
            terms += self.theta
        else:
            for c in range(n_classes):
                terms += [a[j, c] * e for j, e in enumerate(self._assignment_columns(c)) if a[j, c]]
        model.objective = mip.maximize(mip.xsum(terms))

    def _assignment_columns(self, c: int) -> list[mip.Var]:
        """E_.c with E <= s and sum_j E_jc = per_class; in the projected form theta_c <= A_.c E_.c."""
        column = [self.model.add_var(lb=0.0, ub=1.0) for _ in self.s]
        self.e[c] = column
        self.model += mip.xsum(column) == self.config.per_class
        for e, s in zip(column, self.s):
            self.model += e <= s
        if self.projected:
            a = self.a[:, c]
            self.model += self.theta[c] <= mip.xsum(a[j] * e for j, e in enumerate(column) if a[j])
        return column

    def seed_value_cuts(self, selected: torch.Tensor, until: float = math.inf) -> float:
        """Value cuts exact around the start selection (projected form only), added until the
        perf_counter time `until` (the rest are separated when violated); returns the seconds.

        Optional for correctness: a missing cut is found after the solve and added then.
        """
        began = time.perf_counter()
        if not self.projected:
            return 0.0
        window = self.config.qpm.value_cut_window
        s = selected.to(torch.float64).numpy()
        for cut in seed_cuts(self.a, s, self.config.per_class, window):
            if time.perf_counter() >= until:
                break
            self._add_value_cut(cut)
        return time.perf_counter() - began

    def _add_value_cut(self, cut: ValueCut) -> None:
        support, coeffs = cut.terms(self.a)
        rhs = mip.xsum(float(w) * self.s[j] for j, w in zip(support.tolist(), coeffs))
        self.model += self.theta[cut.cls] <= self.config.per_class * cut.u + rhs
        self.value_cuts.add(cut)

    def _separate_values(self, s: np.ndarray) -> int:
        """Add the most violated value cut of every class at s; how many were added."""
        if not self.projected:
            return 0
        theta = np.array([v.x for v in self.theta], dtype=np.float64)
        new = violated_cuts(self.a, s, theta, self.config.per_class, self.value_cuts)
        for cut in new:
            self._add_value_cut(cut)
        return len(new)

    def missing_value_cuts(self) -> int:
        """After an integer solve: add the cuts that its theta violates (0 = theta is exact)."""
        s = np.array([v.x for v in self.s], dtype=np.float64).round()
        return self._separate_values(s)

    def tighten(self, budget: float) -> dict[str, Any]:
        """Root cut loop: add violated clique / stable-set cuts until none or out of budget.

        Returns the LP bounds before and after and the counts, for the stats.
        """
        max_rounds = self.config.qpm.cut_rounds
        per_round = self.config.qpm.cuts_per_round
        info: dict[str, Any] = {"cut_rounds": 0, "n_cuts": 0, "cut_time": 0.0}
        if max_rounds <= 0 or not (self.pairs or self.projected):
            return info
        began = time.perf_counter()
        deadline = began + budget
        for _ in range(max_rounds):
            if time.perf_counter() >= deadline:
                break
            bound = self._relaxation(deadline)
            if bound is None:
                break
            info.setdefault("lp_bound", bound)
            info["lp_bound_tightened"] = bound
            s = [v.x for v in self.s]
            y = {pair: v.x for pair, v in self.y_of.items()}
            new = separate(s, y, self.neighbours, self.cuts, per_round)
            for cut in new:
                self._add_cut(cut)
            n_values = self._separate_values(np.array(s, dtype=np.float64))
            if not new and not n_values:
                break
            info["cut_rounds"] += 1
            info["n_cuts"] += len(new)
            info["n_value_cuts"] = info.get("n_value_cuts", 0) + n_values
        info["cut_time"] = time.perf_counter() - began
        logger.info(
            "QPM root cuts: %d in %d rounds, LP bound %s -> %s (%.1fs)",
            info["n_cuts"],
            info["cut_rounds"],
            info.get("lp_bound"),
            info.get("lp_bound_tightened"),
            info["cut_time"],
        )
        return info

    def _relaxation(self, deadline: float) -> float | None:
        """Solve the LP relaxation; its value, or None when it did not finish."""
        seconds = max(deadline - time.perf_counter(), 1e-3)
        try:
            with solver_output(solver_log_wanted(self.config.solver_log)):
                status = self.model.optimize(relax=True, max_seconds=seconds)
        except Exception as exc:  # the solver libraries raise their own exception types
            raise SolverError(f"QPM: solver {self.config.solver!r} failed: {exc}") from exc
        if status != mip.OptimizationStatus.OPTIMAL:
            return None
        return float(self.model.objective_value)

    def _add_cut(self, cut: Cut) -> None:
        pairs = [self.y_of[p] for p in itertools.combinations(cut.members, 2) if p in self.y_of]
        self.model += mip.xsum(pairs) >= cut.m * mip.xsum(self.s[j] for j in cut.members) - cut.rhs
        self.cuts.add(cut)

    def add_uniqueness_cut(self, c: int, c2: int) -> None:
        """Classes c and c2 may share at most per_class - 1 features (their E made binary)."""
        for cls in (c, c2):
            if cls not in self.binary_classes:
                self.binary_classes.add(cls)
                column = self.e[cls] if cls in self.e else self._assignment_columns(cls)
                for e in column:
                    e.var_type = mip.BINARY
        shared = [self.model.add_var(lb=0.0, ub=1.0) for _ in self.s]
        for o, e, e2 in zip(shared, self.e[c], self.e[c2]):
            self.model += o >= e + e2 - 1
        self.model += mip.xsum(shared) <= self.config.per_class - 1

    def set_start(self, selected: torch.Tensor, assignment: torch.Tensor) -> None:
        on = torch.nonzero(selected).flatten().tolist()
        start = [(self.s[j], 1.0) for j in on]
        start += [(self.e[c][j], 1.0) for j, c in torch.nonzero(assignment).tolist() if c in self.e]
        if self.projected:
            values = (self.assoc * assignment.to(torch.float64)).sum(dim=0).tolist()
            start += list(zip(self.theta, values))
        chosen = set(on)
        start += [(y, 1.0) for (i, j), y in zip(self.pairs, self.y) if i in chosen and j in chosen]
        self.model.start = start

    def optimize(self, remaining: float) -> mip.OptimizationStatus:
        seconds = max(remaining, 1e-3)
        try:
            with solver_output(solver_log_wanted(self.config.solver_log)):
                return self.model.optimize(max_seconds=seconds)
        except Exception as exc:  # the solver libraries raise their own exception types
            raise SolverError(f"QPM: solver {self.config.solver!r} failed: {exc}") from exc

    def solution(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(s, E): E from the solver for the binary classes, else the top choice among s."""
        s = torch.tensor(np.array([v.x for v in self.s], dtype=np.float64) > 0.5)
        e = top_assignment(self.assoc, s, self.config.per_class)
        for c in sorted(self.binary_classes):
            e[:, c] = torch.tensor(np.array([v.x for v in self.e[c]]) > 0.5)
        return s, e

    def bound(self, status: mip.OptimizationStatus) -> float | None:
        """The solver's bound as reported (placeholders included, see solve_outcome)."""
        if status not in (mip.OptimizationStatus.OPTIMAL, mip.OptimizationStatus.FEASIBLE):
            return None
        value = self.model.objective_bound
        return None if value is None else float(value)


def _unsolved(
    selected: torch.Tensor,
    assignment: torch.Tensor,
    score: Any,
    stats: dict[str, Any],
    time_limit: float,
) -> ProgramResult:
    """The start as the answer when the stages before the solver used up the whole time limit."""
    warnings.warn(
        f"QPM: the time limit ({time_limit:g} s) ran out before the solver started (the "
        "constants and the warm start used it all); returning the warm start. Raise time_limit, "
        "or lower qpm.search_rounds / qpm.candidates.",
        RuntimeWarning,
        stacklevel=3,
    )
    stats.update(
        status="not_solved",
        objective=score(selected, assignment),
        bound=None,
        gap=None,
        time=0.0,
        time_limit=time_limit,
        time_limit_hit=True,
        uniqueness_rounds=0,
        value_rounds=0,
    )
    return ProgramResult(selected=selected, assignment=assignment, stats=stats)


def _seconds(value: float) -> str:
    return f"{value:.0f}" if value >= 10 else f"{value:.1f}" if value >= 1 else f"{value:.2f}"


def _gap_words(gap: float | None) -> str:
    return "no bound proven" if gap is None else f"within {100 * gap:.2f} % of the bound"


def _time_limit_advice(solver: str) -> str:
    """What to change for a smaller gap; within minutes HiGHS closes it faster than CBC."""
    advice = "Raise time_limit for a smaller gap"
    if solver == "cbc":
        advice += (
            ", or use solver='highs' (pip install 'retrofit[highs]'), which closes this "
            "program's gap faster within a few minutes (benchmarks/heads_qpm_scale.py)"
        )
    return advice + "."


def _formulation(config: RetrofitConfig) -> str:
    return config.qpm.formulation  # validated by QPMSettings


def _new_model(solver: str) -> mip.Model:
    if solver not in _SOLVER_NAMES:
        raise SolverError(f"Unknown solver {solver!r}; choose one of {sorted(_SOLVER_NAMES)}.")
    try:
        return mip.Model(sense=mip.MAXIMIZE, solver_name=_SOLVER_NAMES[solver])
    except Exception as exc:  # python-mip raises whatever its library loader raises
        raise SolverError(
            f"The MIP solver {solver!r} is not available through python-mip ({exc}). "
            f"To use it, {_SOLVER_HINTS[solver]}; or set solver='cbc', which python-mip ships."
        ) from exc


def _check_start(
    selected: torch.Tensor, assignment: torch.Tensor, n_features: int, per_class: int
) -> None:
    if int(selected.sum()) != n_features:
        raise ValueError(f"start selects {int(selected.sum())} features, expected {n_features}.")
    if not bool((assignment.sum(dim=0) == per_class).all()):
        raise ValueError(f"start must give every class exactly {per_class} features.")
    if bool((assignment & ~selected[:, None]).any()):
        raise ValueError("start assigns a feature that it does not select.")
    if duplicate_class_pairs(assignment):
        raise ValueError(
            "start gives two classes the same feature set; pass it through make_unique."
        )
