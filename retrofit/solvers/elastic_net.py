"""Elastic-net multinomial logistic regression paths in torch, and Q-SENN's feature selection.

The objective per λ is glm-saga's (ALGORITHMS §2):
    mean cross-entropy + λα‖W‖₁ + ½λ(1−α)‖W‖²_F, bias unpenalised,
with ‖W‖₁ replaced by Σ_j ‖W_·j‖₂ (columns over classes) in the group variant. An optional
`penalty` scales the L1 term per weight, Σ ω_cj |W_cj| (per column, Σ ω_j ‖W_·j‖₂, in the group
variant), as glmnet's penalty factors do: a head uses it to prefer the features a prior favours.

The solver is not SAGA but full-batch accelerated proximal gradient (FISTA) with backtracking
and gradient-based adaptive restart. The data are processed in row chunks, so the memory beyond
the features is two N×C logit tables (the size of SAGA's gradient table) and never N×C×D;
above MAX_TABLE_ELEMENTS logits the tables are dropped and each chunk's logits recomputed.
Full-batch steps are a few large matrix products instead of thousands of small ones, which is
what makes it faster than minibatch SAGA on CPU and GPU alike (benchmarks/heads_peer.py). Along
a path only a working set of columns is optimised: the sequential strong rule proposes it and a
KKT check on all columns adds any it missed, so the result solves the full problem.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import torch

from retrofit.errors import ConfigError, FeatureError, InfeasibleSettingsError
from retrofit.extraction.streaming import Standardised, all_finite

logger = logging.getLogger(__name__)

_CHUNK_ELEMENTS = 1 << 22  # rows per chunk × max(D, C) stays below this many floats
_KKT_SLACK = 1e-3  # relative slack before a zero column counts as violating optimality
_BACKTRACK_SLACK = 1e-6  # float32 noise allowed in the sufficient-decrease test
_MIN_L_FRACTION = 1e-2  # steps at most 100× the worst-case safe step 1/bound
# Above this many N×C logits the solver keeps no logit tables and recomputes each chunk's
# logits instead (one more matrix product per iteration; memory O(chunk·C), not O(N·C)).
MAX_TABLE_ELEMENTS = 1 << 26


@dataclass
class PathPoint:
    """The solution at one λ of a path (weights on the device of the input features)."""

    lam: float
    weight: torch.Tensor  # (C, D)
    bias: torch.Tensor  # (C,)
    objective: float
    loss: float  # mean cross-entropy part of the objective
    iterations: int
    converged: bool

    @property
    def nnz(self) -> int:
        return int((self.weight != 0).sum().item())

    @property
    def n_features(self) -> int:
        return int((self.weight != 0).any(dim=0).sum().item())


def lambda_max(
    features: torch.Tensor,
    labels: torch.Tensor,
    alpha: float,
    *,
    group: bool = False,
    num_classes: int | None = None,
    penalty: torch.Tensor | None = None,
) -> float:
    """Smallest λ at which every weight is zero: max_j |X_jᵀ(Y − Ȳ)| / ω / N / max(α, 1e-3)."""
    x, y, c = check_inputs(features, labels, num_classes)
    return _lambda_max(x, y, c, alpha, group, _factors(penalty, c, x.shape[1], group, x.device))


def lambda_path(
    lam_max: float, k: int = 100, epsilon: float = 1e-3, include_zero: bool = True
) -> list[float]:
    """k log-spaced values from λ_max down to ε·λ_max, then 0 (the unregularised end)."""
    if k < 1:
        raise ConfigError(f"k must be >= 1 path points, got {k!r}.")
    if not 0 < epsilon <= 1:
        raise ConfigError(f"epsilon must be in (0, 1], got {epsilon!r}.")
    if k == 1:
        lams = [float(lam_max)]
    else:
        lo, hi = math.log(epsilon * lam_max), math.log(lam_max)
        lams = [math.exp(hi + (lo - hi) * i / (k - 1)) for i in range(k)]
    return [*lams, 0.0] if include_zero else lams


def fit_elastic_net(
    features: torch.Tensor,
    labels: torch.Tensor,
    lam: float,
    alpha: float = 0.99,
    *,
    group: bool = False,
    num_classes: int | None = None,
    weight: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    penalty: torch.Tensor | None = None,
    tol: float = 1e-4,
    lookbehind: int = 5,
    max_iter: int = 1000,
) -> PathPoint:
    """Solve the objective at one λ, optionally warm-started from (weight, bias)."""
    return elastic_net_path(
        features,
        labels,
        alpha=alpha,
        group=group,
        lambdas=[lam],
        num_classes=num_classes,
        weight=weight,
        bias=bias,
        penalty=penalty,
        tol=tol,
        lookbehind=lookbehind,
        max_iter=max_iter,
    )[0]


def elastic_net_path(
    features: torch.Tensor,
    labels: torch.Tensor,
    *,
    alpha: float = 0.99,
    group: bool = False,
    k: int = 100,
    epsilon: float = 1e-3,
    include_zero: bool = True,
    lambdas: list[float] | None = None,
    num_classes: int | None = None,
    weight: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    penalty: torch.Tensor | None = None,
    tol: float = 1e-4,
    lookbehind: int = 5,
    max_iter: int = 1000,
    progress: bool = False,
) -> list[PathPoint]:
    """Warm-started path over `lambdas` (default: `lambda_path(lambda_max(...), k, epsilon)`).

    Features should be standardised. Runs on the device of `features`. `penalty`: L1 factors
    > 0, (C, D) per weight or (D,) per column (the only form the group variant takes).
    """
    x, y, c = check_inputs(features, labels, num_classes)
    _check_alpha(alpha)
    problem = _Problem(x, y, c, _factors(penalty, c, x.shape[1], group, x.device))
    if lambdas is None:
        lambdas = lambda_path(
            _lambda_max(x, y, c, alpha, group, problem.factor), k, epsilon, include_zero
        )
    w, b = problem.initial(weight, bias)
    score = None  # KKT scores of the previous λ, for the strong rule
    prev_lam = None
    points = []
    for lam in _progress(lambdas, progress, "elastic-net path"):
        if lam < 0:
            raise ConfigError(f"λ values must be >= 0, got {lam!r}.")
        keep = w.ne(0).any(dim=0)
        if score is not None and prev_lam is not None:
            keep |= score >= alpha * (2 * lam - prev_lam)  # sequential strong rule
        total_iter, converged = 0, True
        while True:
            cols = keep.nonzero().squeeze(1)
            w_s, b, info = problem.solve(
                cols, w[:, cols], b, lam, alpha, group, tol, lookbehind, max_iter
            )
            total_iter += info["iterations"]
            converged &= info["converged"]
            w = torch.zeros_like(w)
            w[:, cols] = w_s
            score, loss = problem.kkt_scores(w, b, group)
            violated = (score > lam * alpha * (1 + _KKT_SLACK)) & ~keep
            if not bool(violated.any()):
                break
            keep |= violated
        objective = loss + _penalty(w, lam, alpha, group, problem.factor)
        points.append(
            PathPoint(float(lam), w.clone(), b.clone(), objective, loss, total_iter, converged)
        )
        logger.debug(
            "λ=%.4g objective=%.5f nnz=%d iterations=%d", lam, objective, points[-1].nnz, total_iter
        )
        prev_lam = lam
    return points


def select_features(
    features: torch.Tensor,
    labels: torch.Tensor,
    n_features: int,
    *,
    alpha: float = 0.8,
    k: int = 100,
    epsilon: float = 1e-3,
    num_classes: int | None = None,
    penalty: torch.Tensor | None = None,
    tol: float = 1e-4,
    lookbehind: int = 5,
    max_iter: int = 1000,
    progress: bool = False,
) -> tuple[torch.Tensor, dict]:
    """Q-SENN's selection: rank features by their order of entry along a group path (α = 0.8).

    At most one new feature enters per step. The reference then restarts from λ_max with warm
    weights; the solutions above the current λ cannot change by admitting a feature that was
    zero there (the problem is strictly convex in W for α < 1), so re-solving at the same λ
    until no new feature violates optimality gives the same order for a fraction of the work.
    The entering feature is the one whose group gradient norm exceeds λα most (divided by its
    `penalty` factor ω_j, (D,), when given: a smaller factor ranks a column earlier). Returns
    the ranked (n_features,) indices and stats (λ of entry per feature, path steps).
    """
    x, y, c = check_inputs(features, labels, num_classes)
    _check_alpha(alpha)
    d = x.shape[1]
    if n_features > d:
        raise InfeasibleSettingsError(
            f"n_features={n_features} is larger than the {d} available features; lower n_features."
        )
    problem = _Problem(x, y, c, _factors(penalty, c, d, True, x.device))
    w, b = problem.initial(None, None)
    lambdas = lambda_path(_lambda_max(x, y, c, alpha, True, problem.factor), k, epsilon, True)
    order: list[int] = []
    entry_lams: list[float] = []
    chosen = torch.zeros(d, dtype=torch.bool, device=x.device)
    score = torch.zeros(d, device=x.device)
    steps = 0
    for lam in _progress(lambdas, progress, "feature selection"):
        while len(order) < n_features:
            cols = torch.tensor(order, dtype=torch.long, device=x.device)
            w_s, b, _ = problem.solve(
                cols, w[:, cols], b, lam, alpha, True, tol, lookbehind, max_iter
            )
            steps += 1
            w = torch.zeros_like(w)
            w[:, cols] = w_s
            score, _ = problem.kkt_scores(w, b, True)
            candidate = score.masked_fill(chosen, -1.0)
            j = int(candidate.argmax().item())
            if not candidate[j] > max(lam * alpha * (1 + _KKT_SLACK), 0.0):
                break
            order.append(j)
            entry_lams.append(float(lam))
            chosen[j] = True
        if len(order) == n_features:
            break
    if len(order) < n_features:
        rest = (~chosen).nonzero().squeeze(1)
        ranked = rest[torch.argsort(-score[rest], stable=True)][: n_features - len(order)]
        logger.warning(
            "Only %d features ever entered the path (the others never change the loss); "
            "filling the last %d by gradient score.",
            len(order),
            n_features - len(order),
        )
        order.extend(int(j) for j in ranked)
        entry_lams.extend([0.0] * len(ranked))
    selected = torch.tensor(order, dtype=torch.long, device=x.device)
    return selected, {"entry_lambda": entry_lams, "solves": steps}


def check_inputs(
    features: torch.Tensor, labels: torch.Tensor, num_classes: int | None = None
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Validate (N, D) features and (N,) labels; return float32 features, int64 labels, C."""
    if features.ndim != 2:
        raise FeatureError(
            f"features must be a 2-D (N, D) tensor, got shape {tuple(features.shape)}."
        )
    if labels.ndim != 1 or labels.shape[0] != features.shape[0]:
        raise FeatureError(
            f"labels must be a 1-D tensor with one label per row of features "
            f"({features.shape[0]}), got shape {tuple(labels.shape)}."
        )
    if features.shape[0] == 0:
        raise FeatureError("features are empty; at least one sample is needed.")
    x = features.float()  # a streaming.Standardised stays lazy
    if not all_finite(x):
        raise FeatureError("features contain NaN or infinite values; check the feature extraction.")
    y = labels.to(device=x.device, dtype=torch.long)
    c = int(y.max().item()) + 1 if num_classes is None else int(num_classes)
    if int(y.min().item()) < 0 or int(y.max().item()) >= c:
        raise FeatureError(
            f"labels must lie in [0, {c}), got range [{int(y.min())}, {int(y.max())}]."
        )
    return x, y, c


def _check_alpha(alpha: float) -> None:
    if not 0 <= alpha <= 1:
        raise ConfigError(f"alpha must be in [0, 1], got {alpha!r}.")


def _factors(
    penalty: torch.Tensor | None, c: int, d: int, group: bool, device: torch.device
) -> torch.Tensor | None:
    """Validated L1 factors as a (C, D) or, per column, (1, D) float32 tensor (None: all 1)."""
    if penalty is None:
        return None
    shapes = [(d,)] if group else [(d,), (c, d)]
    if tuple(penalty.shape) not in shapes or not bool((penalty > 0).all()):
        raise ConfigError(
            f"penalty must hold factors > 0 of shape {' or '.join(map(str, shapes))}, "
            f"got shape {tuple(penalty.shape)}."
        )
    return penalty.to(device=device, dtype=torch.float32).reshape(-1, d)


def _lambda_max(
    x: torch.Tensor,
    y: torch.Tensor,
    c: int,
    alpha: float,
    group: bool,
    factor: torch.Tensor | None = None,
) -> float:
    n, d = x.shape
    prior = torch.bincount(y, minlength=c).double() / n
    # X^T (Y - Ybar) = X^T Y - (X^T 1) Ybar^T, without forming the N x C one-hot matrix
    xty = torch.zeros(d, c, dtype=torch.float64, device=x.device)
    col_sum = torch.zeros(d, dtype=torch.float64, device=x.device)
    rows = max(1, _CHUNK_ELEMENTS // max(d, 1))
    for s in range(0, n, rows):
        chunk = x[s : s + rows].double()
        xty.index_add_(1, y[s : s + rows], chunk.T)
        col_sum += chunk.sum(dim=0)
    inner = xty - col_sum[:, None] * prior[None, :]
    if factor is not None:
        inner = inner / factor.T.double()
    score = inner.norm(dim=1) if group else inner.abs().amax(dim=1)
    return float(score.max().item()) / n / max(alpha, 1e-3)


def _penalty(
    w: torch.Tensor, lam: float, alpha: float, group: bool, factor: torch.Tensor | None = None
) -> float:
    size = w.norm(dim=0, keepdim=True) if group else w.abs()
    sparse = size.sum() if factor is None else (size * factor).sum()
    return float((lam * alpha * sparse + 0.5 * lam * (1 - alpha) * w.square().sum()).item())


def _prox(
    w: torch.Tensor, thresh: float | torch.Tensor, shrink: float, group: bool
) -> torch.Tensor:
    """Soft-threshold (by element or by column norm; `thresh` a number or per-weight factors
    that broadcast to w), then the ridge shrinkage 1/(1+shrink)."""
    if group:
        norm = w.norm(dim=0, keepdim=True)
        factor = (1 - thresh / norm.clamp_min(torch.finfo(w.dtype).tiny)).clamp_min(0)
        out = w * factor
    else:
        out = w.sign() * (w.abs() - thresh).clamp_min(0)
    return out / (1 + shrink) if shrink else out


def _logsumexp(z: torch.Tensor) -> torch.Tensor:
    """Row-wise log-sum-exp; written out because torch.logsumexp is several times slower on CPU."""
    top = z.amax(dim=1, keepdim=True)
    return (z - top).exp_().sum(dim=1).log_() + top.squeeze(1)


def _progress(items: list[float], enabled: bool, desc: str):
    if not enabled:
        return items
    from tqdm.auto import tqdm

    return tqdm(items, desc=desc, leave=False)


class _Problem:
    """Multinomial logistic loss over row chunks of a fixed (N, D) design, with the L1 factors
    `factor` ((C, D) or (1, D); None: all 1) of its penalty."""

    def __init__(
        self, x: torch.Tensor, y: torch.Tensor, c: int, factor: torch.Tensor | None = None
    ) -> None:
        self.x, self.y, self.c, self.factor = x, y, c, factor
        self.n, self.d = x.shape
        rows = max(1, _CHUNK_ELEMENTS // max(self.d, c, 1))
        self.chunks = [slice(s, min(s + rows, self.n)) for s in range(0, self.n, rows)]
        self.tables = self.n * c <= MAX_TABLE_ELEMENTS
        self.step_l: float | None = None  # last backtracking estimate, carried between solves

    def initial(
        self, weight: torch.Tensor | None, bias: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Warm start, or W = 0 with the bias at its optimum for W = 0 (log class priors)."""
        x = self.x
        if weight is None:
            w = torch.zeros(self.c, self.d, device=x.device)
        else:
            w = weight.detach().to(device=x.device, dtype=torch.float32).clone()
            if w.shape != (self.c, self.d):
                raise ConfigError(
                    f"warm-start weight must have shape {(self.c, self.d)}, got {tuple(w.shape)}."
                )
        if bias is None:
            prior = torch.bincount(self.y, minlength=self.c).float().clamp_min(0.5) / self.n
            b = prior.log().to(x.device)
            b -= b.mean()
        else:
            b = bias.detach().to(device=x.device, dtype=torch.float32).clone()
        return w, b

    def forward(
        self, xs: torch.Tensor, w: torch.Tensor, b: torch.Tensor, out: torch.Tensor | None
    ) -> float:
        """Logits into `out` (None: not kept); returns the mean cross-entropy."""
        total = 0.0
        for r in self.chunks:
            z = (
                torch.addmm(b, xs[r], w.T)
                if out is None
                else torch.addmm(b, xs[r], w.T, out=out[r])
            )
            total += float((_logsumexp(z) - z.gather(1, self.y[r, None]).squeeze(1)).sum().item())
        return total / self.n

    def gradient(
        self, xs: torch.Tensor, z: torch.Tensor
    ) -> tuple[float, torch.Tensor, torch.Tensor]:
        """Mean cross-entropy at logits z and its gradient w.r.t. (W on columns of xs, b)."""
        gw = torch.zeros(self.c, xs.shape[1], device=xs.device)
        gb = torch.zeros(self.c, device=xs.device)
        total = sum(self._accumulate(z[r], r, xs[r], gw, gb) for r in self.chunks)
        return total / self.n, gw / self.n, gb / self.n

    def gradient_at(
        self, xs: torch.Tensor, w: torch.Tensor, b: torch.Tensor, xg: torch.Tensor | None = None
    ) -> tuple[float, torch.Tensor, torch.Tensor]:
        """As `gradient` at the logits of (w, b) on xs, recomputed per chunk (no N×C table);
        the gradient is w.r.t. the columns of `xg` (default xs)."""
        xg = xs if xg is None else xg
        gw = torch.zeros(self.c, xg.shape[1], device=xg.device)
        gb = torch.zeros(self.c, device=xg.device)
        total = 0.0
        for r in self.chunks:
            chunk = xs[r]
            grad_rows = chunk if xg is xs else xg[r]
            total += self._accumulate(torch.addmm(b, chunk, w.T), r, grad_rows, gw, gb)
        return total / self.n, gw / self.n, gb / self.n

    def _accumulate(
        self, zr: torch.Tensor, r: slice, xr: torch.Tensor, gw: torch.Tensor, gb: torch.Tensor
    ) -> float:
        """Add one chunk's cross-entropy gradient into (gw, gb); return its summed loss."""
        top = zr.amax(dim=1, keepdim=True)
        p = (zr - top).exp_()
        mass = p.sum(dim=1, keepdim=True)
        lse = mass.log() + top
        total = float((lse.squeeze(1) - zr.gather(1, self.y[r, None]).squeeze(1)).sum().item())
        p /= mass
        p[torch.arange(p.shape[0], device=p.device), self.y[r]] -= 1
        gw.addmm_(p.T, xr)
        gb += p.sum(dim=0)
        return total

    def kkt_scores(
        self, w: torch.Tensor, b: torch.Tensor, group: bool
    ) -> tuple[torch.Tensor, float]:
        """Per-column size of the loss gradient (max over classes, or L2 norm), each entry
        divided by its L1 factor, and the loss."""
        cols = w.ne(0).any(dim=0).nonzero().squeeze(1)
        xs = self.x if cols.numel() == self.d else self.x[:, cols]  # all columns: no copy
        if self.tables:
            z = torch.empty(self.n, self.c, device=self.x.device)
            self.forward(xs, w[:, cols], b, z)
            loss, g, _ = self.gradient(self.x, z)
        else:
            loss, g, _ = self.gradient_at(xs, w[:, cols], b, self.x)
        if self.factor is not None:
            g = g / self.factor
        return (g.norm(dim=0) if group else g.abs().amax(dim=0)), loss

    def lipschitz(self, xs: torch.Tensor) -> float:
        """½ σ_max([X 1]ᵀ[X 1] / N): a bound on the loss curvature, by power iteration."""
        gen = torch.Generator().manual_seed(0)
        v = torch.randn(xs.shape[1] + 1, generator=gen).to(xs.device)
        est = 1.0
        lazy = isinstance(xs, Standardised)
        for _ in range(30):
            v = v / v.norm().clamp_min(1e-30)
            if lazy:  # one pass over the chunks for both products
                xtu, u = xs.normal_matvec(v[:-1], v[-1])
            else:
                u = xs @ v[:-1] + v[-1]
                xtu = xs.T @ u
            v = torch.cat([xtu, u.sum().reshape(1)]) / self.n
            est = float(v.norm().item())
        return 0.5 * est

    def solve(
        self,
        cols: torch.Tensor,
        w: torch.Tensor,
        b: torch.Tensor,
        lam: float,
        alpha: float,
        group: bool,
        tol: float,
        lookbehind: int,
        max_iter: int,
    ) -> tuple[torch.Tensor, torch.Tensor, dict]:
        """FISTA with backtracking and adaptive restart on the columns `cols`."""
        xs = self.x if cols.numel() == self.d else self.x[:, cols]
        l1, l2 = lam * alpha, lam * (1 - alpha)
        factor = None if self.factor is None else self.factor[:, cols]
        bound = self.lipschitz(xs)
        floor = bound * _MIN_L_FRACTION
        big_l = bound if self.step_l is None else min(max(self.step_l, floor), bound)
        z_x = torch.empty(self.n, self.c, device=xs.device) if self.tables else None
        z_new = torch.empty_like(z_x) if z_x is not None else None
        if z_x is not None:
            self.forward(xs, w, b, z_x)
            f_y, gw, gb = self.gradient(xs, z_x)
        else:
            f_y, gw, gb = self.gradient_at(xs, w, b)
        wx, bx, wy, by = w, b, w, b
        t = 1.0
        best = (math.inf, w, b)
        tracked, stale, it, converged = math.inf, 0, 0, False
        while it < max_iter:
            it += 1
            while True:
                step = 1.0 / big_l
                thresh = step * l1 if factor is None else step * l1 * factor
                w_new = _prox(wy - step * gw, thresh, step * l2, group)
                b_new = by - step * gb
                f_new = self.forward(xs, w_new, b_new, z_new)
                dw, db = w_new - wy, b_new - by
                model = f_y + float(((gw * dw).sum() + (gb * db).sum()).item())
                model += 0.5 * big_l * float((dw.square().sum() + db.square().sum()).item())
                if f_new <= model + _BACKTRACK_SLACK * max(1.0, abs(f_y)):
                    break
                big_l *= 2.0
            objective = f_new + _penalty(w_new, lam, alpha, group, factor)
            if objective < best[0]:
                best = (objective, w_new, b_new)
            if objective < tracked - tol:
                tracked, stale = objective, 0
            else:
                stale += 1
                if stale >= lookbehind:
                    converged = True
                    break
            restart = float(
                ((wy - w_new) * (w_new - wx)).sum().item()
                + ((by - b_new) * (b_new - bx)).sum().item()
            )
            if restart > 0:
                t = 1.0
            t_next = (1 + math.sqrt(1 + 4 * t * t)) / 2
            beta = (t - 1) / t_next
            t = t_next
            wy, by = w_new + beta * (w_new - wx), b_new + beta * (b_new - bx)
            wx, bx = w_new, b_new
            if z_x is None:
                f_y, gw, gb = self.gradient_at(xs, wy, by)
            else:  # logits are linear: z(y) = (1+β)z(x_new) − βz(x)
                z_x.mul_(-beta).add_(z_new, alpha=1 + beta)
                f_y, gw, gb = self.gradient(xs, z_x)
                z_x, z_new = z_new, z_x
            big_l = max(big_l * 0.9, floor)  # probe longer steps; backtracking undoes overshoots
        self.step_l = big_l
        return best[1], best[2], {"iterations": it, "converged": converged, "objective": best[0]}
