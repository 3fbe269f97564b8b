"""Projecting the assignment E out of the QPM program: one value variable per class.

For a selection s (0/1 or fractional) class c's best assignment value is
    V_c(s) = max {sum_j A_jc E_jc : 0 <= E_jc <= s_j, sum_j E_jc = k}        (k = per_class)
           = min_u  k u + sum_j (A_jc - u)^+ s_j                              (LP duality),
a concave piecewise-linear function of s whose minimising u is one of class c's A values: the
A of the feature where a greedy fill (largest A first, each feature up to s_j) reaches k.
So theta_c <= k u + sum_j (A_jc - u)^+ s_j is valid for every u, and the cuts at all u
describe V_c exactly. A cut has nonzeros only on the features with A_jc > u, so the cuts that
matter (u near a class's k-th best selected A) are sparse, and the program has one theta per
class instead of K continuous E per class. For a fixed s the inner LP is the same as the E
formulation's, so the LP bound with all cuts is the same too.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

_TOL = 1e-9


@dataclass(frozen=True)
class ValueCut:
    """theta_cls <= k * u + sum_j (A_j,cls - u)^+ s_j."""

    cls: int
    u: float

    def terms(self, assoc: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(feature indices, coefficients) of the s terms: the features with A above u."""
        column = assoc[:, self.cls]
        support = np.flatnonzero(column > self.u)
        return support, column[support] - self.u

    def value(self, assoc: np.ndarray, s: np.ndarray, per_class: int) -> float:
        """Right-hand side at s: an upper bound on V_cls(s), tight when u is its minimiser."""
        support, coeffs = self.terms(assoc)
        return per_class * self.u + float(coeffs @ s[support])


def class_values(assoc: np.ndarray, s: np.ndarray, per_class: int) -> tuple[np.ndarray, np.ndarray]:
    """(V_c(s), minimising u_c) for every class; s may be fractional but must sum to >= k."""
    order = np.argsort(-assoc, axis=0, kind="stable")
    filled = np.cumsum(s[order], axis=0)
    marginal = np.minimum((filled < per_class - _TOL).sum(axis=0), len(s) - 1)
    classes = np.arange(assoc.shape[1])
    u = assoc[order[marginal, classes], classes]
    values = per_class * u + (np.maximum(assoc - u, 0.0) * s[:, None]).sum(axis=0)
    return values, u


def violated_cuts(
    assoc: np.ndarray, s: np.ndarray, theta: np.ndarray, per_class: int, known: set[ValueCut]
) -> list[ValueCut]:
    """The most violated value cut of every class whose theta exceeds V_c(s) (exact separation)."""
    values, u = class_values(assoc, s, per_class)
    tol = 1e-7 * np.maximum(1.0, np.abs(values))
    cuts = [ValueCut(c, float(u[c])) for c in np.flatnonzero(theta > values + tol)]
    return [cut for cut in cuts if cut not in known]


def seed_cuts(assoc: np.ndarray, s: np.ndarray, per_class: int, window: int) -> list[ValueCut]:
    """Cuts exact at the selection s and at the `window` neighbouring thresholds either side.

    A good start (the warm start) selects much what the optimum selects, so the thresholds
    around its per-class k-th best A are the ones branch and bound needs first.
    """
    _, u = class_values(assoc, s, per_class)
    cuts = []
    for c in range(assoc.shape[1]):
        levels = np.sort(assoc[:, c])[::-1]
        at = int(np.searchsorted(-levels, -u[c]))
        low, high = max(per_class - 1, at - window), min(len(levels) - 1, at + window)
        cuts += [ValueCut(c, float(levels[r])) for r in range(low, high + 1)]
    return list(dict.fromkeys(cuts))
