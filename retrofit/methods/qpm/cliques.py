"""Clique threshold tau of the QPM program and its warm start.

tau is the smallest threshold at which n_f features exist whose pairwise redundancy R is
below tau (a clique of size n_f in the compatibility graph R < tau). Deciding whether a
clique of a given size exists is NP-hard, so each bisection step first tries a greedy
multi-start heuristic and, only when that fails, an exact branch-and-bound search with a work
budget. tau is therefore exact on small candidate sets and an upper estimate on large ones
where the budget runs out; either way the returned clique is verified and has zero redundancy
penalty.

Warm start: the clique, improved by an iterated swap local search on the selection, with every
class taking its best features among the selection and repeated class sets separated by swaps.
"""

from __future__ import annotations

import itertools
import logging
import math

import torch

from retrofit.errors import InfeasibleSettingsError
from retrofit.solvers.deadline import Deadline

logger = logging.getLogger(__name__)

DEFAULT_STARTS = 16
DEFAULT_WORK_BUDGET = 200_000


class _BudgetExhausted(Exception):
    pass


def find_clique(
    compatible: torch.Tensor,
    size: int,
    priority: torch.Tensor | None = None,
    *,
    n_starts: int = DEFAULT_STARTS,
    work_budget: int = DEFAULT_WORK_BUDGET,
) -> torch.Tensor | None:
    """Indices (ascending) of `size` mutually compatible vertices, or None if none was found.

    `compatible` is a symmetric K x K bool adjacency without self loops. Ties are broken by
    `priority` (larger first) so the clique prefers useful features. None means "not found":
    proven absent when the exact search finished within `work_budget` (vertices coloured).
    """
    k = int(compatible.shape[0])
    if size > k:
        return None
    rank = _priority_rank(priority, k)
    alive = _core(compatible, size)
    if int(alive.sum()) < size:
        return None
    clique = _greedy(compatible, alive, size, rank, n_starts)
    if clique is None:
        clique = _exact(compatible, alive, size, work_budget)
    return None if clique is None else torch.sort(torch.tensor(clique, dtype=torch.long)).values


def clique_threshold(
    redundancy: torch.Tensor,
    size: int,
    priority: torch.Tensor | None = None,
    *,
    n_starts: int = DEFAULT_STARTS,
    work_budget: int = DEFAULT_WORK_BUDGET,
    deadline: Deadline | None = None,
) -> tuple[float, torch.Tensor]:
    """(tau, clique): the smallest tau among the values of R (or +inf) with a clique of `size`.

    `redundancy` is the upper-triangular R. Pairs with R >= tau are the penalised pairs P of
    the program; the clique has every pairwise R < tau. tau = +inf means P is empty. Past
    `deadline` the bisection stops with the smallest tau proven so far (a larger, valid one).
    """
    k = int(redundancy.shape[0])
    if size > k:
        raise InfeasibleSettingsError(f"cannot pick {size} features from {k} candidates.")
    sym = redundancy + redundancy.T
    upper = torch.triu_indices(k, k, offset=1)
    values = torch.unique(sym[upper[0], upper[1]]) if k > 1 else torch.empty(0, dtype=sym.dtype)
    thresholds = [*values.tolist(), float("inf")]
    off_diagonal = ~torch.eye(k, dtype=torch.bool)

    def attempt(i: int) -> torch.Tensor | None:
        graph = (sym < thresholds[i]) & off_diagonal
        return find_clique(graph, size, priority, n_starts=n_starts, work_budget=work_budget)

    lo, hi = 0, len(thresholds) - 1
    best = attempt(hi)
    if best is None:
        raise InfeasibleSettingsError(f"no clique of {size} features among {k} candidates.")
    while lo < hi and not (deadline is not None and deadline.expired()):
        mid = (lo + hi) // 2
        found = attempt(mid)
        if found is None:
            lo = mid + 1
        else:
            hi, best = mid, found
    logger.info(
        "QPM clique threshold tau=%.4g (%d of %d thresholds)", thresholds[hi], hi, len(thresholds)
    )
    return thresholds[hi], best


def greedy_assignment(assoc: torch.Tensor, selected: torch.Tensor, per_class: int) -> torch.Tensor:
    """E (K x C bool): each class takes its `per_class` largest A among `selected`, made unique.

    A feasible warm start for the assignment given the selection `selected` (indices into K).
    """
    k, n_classes = (int(s) for s in assoc.shape)
    selected = torch.as_tensor(selected, dtype=torch.long)
    order = torch.argsort(-assoc[selected], dim=0, stable=True)[:per_class]  # (per_class, C)
    assignment = torch.zeros(k, n_classes, dtype=torch.bool)
    assignment[selected[order], torch.arange(n_classes).expand_as(order)] = True
    return make_unique(assignment, assoc, selected)


def improve_selection(
    assoc: torch.Tensor,
    weights: torch.Tensor,
    selected: torch.Tensor,
    per_class: int,
    bias: torch.Tensor | None = None,
    *,
    max_swaps: int = 1000,
    deadline: Deadline | None = None,
) -> torch.Tensor:
    """Swap local search on the selection; returns the improved indices (ascending).

    Given a selection S the best assignment is every class's `per_class` largest A in S, so
    the program's value is f(S) = sum_c top_k(A[S, c]) - sum_{pairs in S} W + sum_S b
    (uniqueness aside). Each step makes the best single swap (one feature out, one in),
    evaluated for all pairs at once, until none improves f. The clique has zero penalty but
    often low A; this start gives the solver a far better incumbent. `weights` is the
    symmetric K x K penalty (Rt on P, 0 elsewhere). Past `deadline` it returns the current
    selection, which is as valid as a local optimum, only worse.
    """
    k_all, n_classes = (int(s) for s in assoc.shape)
    assoc = assoc.to(torch.float64)
    weights = weights.to(torch.float64)
    extra = torch.zeros(k_all, dtype=torch.float64) if bias is None else bias.to(torch.float64)
    members = torch.as_tensor(selected, dtype=torch.long).clone()
    n = members.numel()
    if n <= per_class or n >= k_all:
        return torch.sort(members).values
    for _ in range(max_swaps):
        if deadline is not None and deadline.expired():
            break
        inside = torch.zeros(k_all, dtype=torch.bool)
        inside[members] = True
        values = assoc[members]  # (n, C)
        top = values.topk(per_class + 1, dim=0)
        top_sum = top.values[:per_class].sum(dim=0)
        kth, next_ = top.values[per_class - 1], top.values[per_class]
        in_top = torch.zeros(n, n_classes, dtype=torch.bool)
        in_top[top.indices[:per_class], torch.arange(n_classes).expand(per_class, -1)] = True
        link = weights[:, members].sum(dim=1)  # (K,) penalty of each feature against S
        current = float(top_sum.sum() - link[members].sum() / 2 + extra[members].sum())
        best_gain, best_pair = 1e-9, None
        for pos in range(n):
            if deadline is not None and deadline.expired():
                return torch.sort(members).values
            out = int(members[pos])
            after_sum = torch.where(in_top[pos], top_sum - values[pos] + next_, top_sum)
            after_kth = torch.where(in_top[pos], next_, kth)
            gain_in = (assoc - after_kth).clamp_min(0.0).sum(dim=1)
            value = after_sum.sum() + gain_in
            penalty = link[members].sum() / 2 - link[out] + (link - weights[:, out])
            value = value - penalty + extra[members].sum() - extra[out] + extra
            value[inside] = -torch.inf
            j = int(torch.argmax(value))
            if float(value[j]) - current > best_gain:
                best_gain, best_pair = float(value[j]) - current, (pos, j)
        if best_pair is None:
            break
        members[best_pair[0]] = best_pair[1]
    return torch.sort(members).values


def perturbed_search(
    assoc: torch.Tensor,
    weights: torch.Tensor,
    selected: torch.Tensor,
    per_class: int,
    bias: torch.Tensor | None = None,
    *,
    rounds: int = 200,
    seed: int = 0,
    deadline: Deadline | None = None,
    record: dict | None = None,
) -> torch.Tensor:
    """Iterated local search on the selection; returns the best indices found (ascending).

    A single swap search stops in the first local optimum; here the best selection so far is
    repeatedly kicked (2 to 8 random members swapped for random outsiders) and improved again
    by `improve_selection`, keeping a kick only when it ends higher. Deterministic given `seed`
    when `deadline` does not stop it; `record` (if given) receives the kicks done and whether
    the deadline stopped the search.
    """
    k_all = int(assoc.shape[0])
    done = 0
    if record is not None:
        record.update(search_rounds_done=0, search_stopped_by_deadline=False)
    best = improve_selection(assoc, weights, selected, per_class, bias, deadline=deadline)
    n = best.numel()
    if n <= per_class or n >= k_all:
        return best
    best_value = selection_value(assoc, weights, best, per_class, bias)
    g = torch.Generator().manual_seed(seed)
    for _ in range(rounds):
        if deadline is not None and deadline.expired():
            break
        done += 1
        size = min(int(torch.randint(2, 9, (1,), generator=g)), n, k_all - n)
        outside = torch.ones(k_all, dtype=torch.bool)
        outside[best] = False
        pool = torch.nonzero(outside).flatten()
        trial = best.clone()
        trial[torch.randperm(n, generator=g)[:size]] = pool[
            torch.randperm(pool.numel(), generator=g)[:size]
        ]
        trial = improve_selection(assoc, weights, trial, per_class, bias, deadline=deadline)
        value = selection_value(assoc, weights, trial, per_class, bias)
        if value > best_value + 1e-9:
            best, best_value = trial, value
    if record is not None:
        stopped = deadline is not None and done < rounds and deadline.expired()
        record.update(search_rounds_done=done, search_stopped_by_deadline=stopped)
    return best


def selection_value(
    assoc: torch.Tensor,
    weights: torch.Tensor,
    selected: torch.Tensor,
    per_class: int,
    bias: torch.Tensor | None = None,
) -> float:
    """f(S) = sum_c top_k(A[S, c]) - sum_{pairs in S} W + sum_S b (uniqueness aside)."""
    members = torch.as_tensor(selected, dtype=torch.long)
    value = assoc[members].to(torch.float64).topk(per_class, dim=0).values.sum()
    value -= weights[members][:, members].to(torch.float64).sum() / 2
    if bias is not None:
        value += bias[members].to(torch.float64).sum()
    return float(value)


def duplicate_class_pairs(assignment: torch.Tensor) -> list[tuple[int, int]]:
    """Every pair (c, c') of classes, c < c', that use exactly the same features."""
    groups: dict[tuple[int, ...], list[int]] = {}
    for c in range(int(assignment.shape[1])):
        key = tuple(torch.nonzero(assignment[:, c]).flatten().tolist())
        groups.setdefault(key, []).append(c)
    return [pair for members in groups.values() for pair in itertools.combinations(members, 2)]


def make_unique(
    assignment: torch.Tensor, assoc: torch.Tensor, selected: torch.Tensor
) -> torch.Tensor:
    """Copy of E where no two classes share a feature set, changing only repeated sets.

    The first class (by index) keeps a repeated set; every later one moves to the best unused
    set reachable by the fewest swaps (one feature out, one selected feature in), the swap
    graph of k-subsets being connected. Needs C <= comb(n_f, per_class), checked by callers.
    """
    assignment = assignment.clone()
    pool = sorted(torch.as_tensor(selected).tolist())
    current = {
        c: frozenset(torch.nonzero(assignment[:, c]).flatten().tolist())
        for c in range(assignment.shape[1])
    }
    used: dict[frozenset[int], int] = {}
    for members in current.values():
        used[members] = used.get(members, 0) + 1
    owner: dict[frozenset[int], int] = {}
    for c, members in current.items():
        if owner.setdefault(members, c) == c:
            continue
        new = _nearest_unused(members, pool, used, assoc[:, c])
        used[members] -= 1
        used[new] = 1
        owner[new] = c
        assignment[:, c] = False
        assignment[sorted(new), c] = True
    return assignment


def _nearest_unused(
    start: frozenset[int], pool: list[int], used: dict[frozenset[int], int], value: torch.Tensor
) -> frozenset[int]:
    """Breadth-first over single swaps; in the first layer holding an unused set, the best one."""
    seen = {start}
    layer = [start]
    scores = value.tolist()
    while layer:
        found: list[frozenset[int]] = []
        following: list[frozenset[int]] = []
        for members in layer:
            outside = [j for j in pool if j not in members]
            for out_j in sorted(members):
                for in_j in outside:
                    cand = (members - {out_j}) | {in_j}
                    if cand in seen:
                        continue
                    seen.add(cand)
                    (found if used.get(cand, 0) == 0 else following).append(cand)
        if found:
            return max(
                found, key=lambda s: (math.fsum(scores[j] for j in s), [-j for j in sorted(s)])
            )
        layer = following
    raise InfeasibleSettingsError(
        "no unused feature set left; need C <= comb(n_features, per_class)."
    )


def _priority_rank(priority: torch.Tensor | None, k: int) -> torch.Tensor:
    """0..K-1, larger = preferred; ties by lower index."""
    if priority is None:
        return torch.arange(k - 1, -1, -1, dtype=torch.float64)
    order = torch.argsort(-priority.to(torch.float64), stable=True)
    rank = torch.empty(k, dtype=torch.float64)
    rank[order] = torch.arange(k - 1, -1, -1, dtype=torch.float64)
    return rank


def _core(compatible: torch.Tensor, size: int) -> torch.Tensor:
    """Vertices of the (size-1)-core: the others cannot belong to a clique of `size`."""
    alive = torch.ones(int(compatible.shape[0]), dtype=torch.bool)
    adj = compatible.to(torch.float32)
    while True:
        degree = adj @ alive.to(torch.float32)
        keep = alive & (degree >= size - 1)
        if torch.equal(keep, alive):
            return alive
        alive = keep


def _greedy(
    compatible: torch.Tensor, alive: torch.Tensor, size: int, rank: torch.Tensor, n_starts: int
) -> list[int] | None:
    """Multi-start greedy: repeatedly add the vertex with most neighbours left among candidates."""
    k = int(compatible.shape[0])
    adj = (compatible & alive[None, :] & alive[:, None]).to(torch.float64)
    degree = adj.sum(dim=1)
    key = torch.where(alive, degree * k + rank, torch.full_like(rank, -1.0))
    starts = torch.argsort(-key, stable=True)[: min(n_starts, int(alive.sum()))]
    for v0 in starts.tolist():
        members = [v0]
        cand = adj[v0] > 0
        while len(members) < size and int(cand.sum()) >= size - len(members):
            left = adj @ cand.to(torch.float64)
            score = torch.where(cand, left * k + rank, torch.full_like(rank, -1.0))
            v = int(torch.argmax(score))
            members.append(v)
            cand &= adj[v] > 0
        if len(members) == size:
            return members
    return None


def _exact(
    compatible: torch.Tensor, alive: torch.Tensor, size: int, work_budget: int
) -> list[int] | None:
    """Branch and bound with greedy-colouring bounds (Tomita's MCQ) on Python-int bitsets."""
    vertices = torch.nonzero(alive).flatten().tolist()
    local = compatible[vertices][:, vertices]
    neighbours = [sum(1 << i for i in torch.nonzero(row).flatten().tolist()) for row in local]
    work = 0

    def colour_order(cand: int) -> list[tuple[int, int]]:
        nonlocal work
        work += cand.bit_count()
        if work > work_budget:
            raise _BudgetExhausted
        ordered = []
        uncoloured = cand
        colour = 0
        while uncoloured:
            colour += 1
            free = uncoloured
            while free:
                v = (free & -free).bit_length() - 1
                free &= ~neighbours[v] & ~(1 << v)
                uncoloured &= ~(1 << v)
                ordered.append((v, colour))
        return ordered

    def expand(members: list[int], cand: int) -> list[int] | None:
        if len(members) == size:
            return members
        for v, colour in reversed(colour_order(cand)):
            if len(members) + colour < size:
                return None
            found = expand([*members, v], cand & neighbours[v])
            if found is not None:
                return found
            cand &= ~(1 << v)
        return None

    try:
        found = expand([], (1 << len(vertices)) - 1)
    except _BudgetExhausted:
        logger.debug("exact clique search stopped after its budget of %d", work_budget)
        return None
    return None if found is None else [vertices[i] for i in found]
