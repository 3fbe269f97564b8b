"""Valid inequalities that tighten the linearised redundancy penalty of the QPM program.

In the program y_jj' >= s_j + s_j' - 1 linearises s_j s_j' for the penalised pairs P. On its
own this is weak: the LP relaxation spreads the selection over many features at s ~ 1/2,
where every y can be 0, so the bound ignores the penalty (on the CUB-scale benchmark world the
root bound after these cuts is 1.26 % above the best selection found, and 0.64 % without the
penalty: about half of the gap is the penalty's). Two families of valid inequalities, both in
s and y only:

- clique:  for a clique Q of the conflict graph (every pair of Q in P) and an integer m >= 1,
  sum_{pairs of Q} y >= m * sum_Q s - m (m + 1) / 2.  With t = |S & Q| selected, the pairs
  of Q inside S number t (t - 1) / 2 >= m t - m (m + 1) / 2, since (t - m)(t - m - 1) >= 0
  for every integer t; and y >= s_j s_j' for every feasible 0/1 point.
- stable:  for any feature set Q with independence number alpha(Q) in the conflict graph,
  sum_Q s - sum_{pairs of Q in P} y <= alpha(Q).  t selected features of Q span at least
  t - alpha(Q) conflicting pairs, since dropping one end of each such pair leaves an
  independent set (odd cycles, alpha = (|Q| - 1) / 2, are the typical case).

Separation is heuristic (greedy growth from the features the LP uses most); the cuts are
added in a loop on the LP relaxation before branch and bound starts.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

MAX_STABLE_SIZE = 12
_EPS = 1e-6


@dataclass(frozen=True)
class Cut:
    """sum_{pairs of members in P} y >= m * sum_{members} s - rhs."""

    members: tuple[int, ...]
    m: int
    rhs: float

    def violation(self, s: list[float], y: dict[tuple[int, int], float]) -> float:
        """How far the LP point (s, y) is below the cut (positive = violated)."""
        value = sum(y.get(pair, 0.0) for pair in itertools.combinations(self.members, 2))
        return self.m * sum(s[j] for j in self.members) - self.rhs - value


def clique_cut(members: tuple[int, ...], m: int) -> Cut:
    """The clique inequality with multiplier m (members must be pairwise in P)."""
    return Cut(tuple(sorted(members)), m, m * (m + 1) / 2)


def stable_cut(members: tuple[int, ...], alpha: int) -> Cut:
    """The stable-set inequality of a feature set whose independence number is alpha."""
    return Cut(tuple(sorted(members)), 1, float(alpha))


def independence_number(members: list[int], neighbours: dict[int, set[int]]) -> int:
    """alpha of the conflict graph induced on `members` (exact; meant for small sets)."""
    if not members:
        return 0
    first, rest = members[0], members[1:]
    free = [v for v in rest if v not in neighbours[first]]
    with_first = 1 + independence_number(free, neighbours)
    if with_first > len(rest):
        return with_first
    return max(with_first, independence_number(rest, neighbours))


def separate(
    s: list[float],
    y: dict[tuple[int, int], float],
    neighbours: dict[int, set[int]],
    known: set[Cut],
    limit: int,
) -> list[Cut]:
    """Up to `limit` new cuts violated by the LP point (s, y), most violated first.

    `y` maps each pair (j, j') with j < j' in P to its value; `neighbours` is the conflict
    graph. Grows one clique and one general set from every feature with s > 0.
    """
    support = sorted((j for j, v in enumerate(s) if v > _EPS), key=lambda j: (-s[j], j))
    found: dict[Cut, float] = {}
    for seed in support:
        for cut in _grow_clique(seed, s, y, neighbours) + _grow_stable(seed, s, y, neighbours):
            violation = cut.violation(s, y)
            if violation > _EPS and cut not in known:
                found[cut] = max(found.get(cut, 0.0), violation)
    ranked = sorted(found, key=lambda c: (-found[c], c.members, c.m))
    return ranked[:limit]


def _grow_clique(
    seed: int, s: list[float], y: dict[tuple[int, int], float], neighbours: dict[int, set[int]]
) -> list[Cut]:
    """Greedy clique from `seed` by largest s; cuts for every prefix and the best m's."""
    members = [seed]
    candidates = {v for v in neighbours[seed] if s[v] > _EPS}
    cuts = []
    while candidates:
        v = max(candidates, key=lambda u: (s[u], -u))
        members.append(v)
        candidates &= neighbours[v]
        total = sum(s[j] for j in members)
        for m in {max(1, int(total) - 1), max(1, int(total)), int(total) + 1}:
            if m < len(members):
                cuts.append(clique_cut(tuple(members), m))
    return cuts


def _grow_stable(
    seed: int, s: list[float], y: dict[tuple[int, int], float], neighbours: dict[int, set[int]]
) -> list[Cut]:
    """Greedy set from `seed`: add the feature with the largest s minus y towards the set."""
    members = [seed]
    cuts = []
    while len(members) < MAX_STABLE_SIZE:
        inside = set(members)
        frontier = {v for u in members for v in neighbours[u] if v not in inside and s[v] > _EPS}
        if not frontier:
            break
        gain = {v: s[v] - _penalty_towards(v, inside, y, neighbours) for v in frontier}
        v = max(frontier, key=lambda u: (gain[u], -u))
        if gain[v] <= _EPS:
            break
        members.append(v)
        if len(members) >= 3:
            cuts.append(stable_cut(tuple(members), independence_number(members, neighbours)))
    return cuts


def _penalty_towards(
    v: int, inside: set[int], y: dict[tuple[int, int], float], neighbours: dict[int, set[int]]
) -> float:
    return sum(y.get((min(u, v), max(u, v)), 0.0) for u in neighbours[v] & inside)
