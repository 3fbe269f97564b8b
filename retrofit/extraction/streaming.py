"""Row-chunked passes over a feature matrix that may be memory-mapped from the cache.

Every fitting stage after extraction reads the (N, D) features through these helpers, so its
memory is bounded by one chunk plus the D- and C-sized results, not by N; the matrix may be a
float16/bfloat16 cache, converted chunk by chunk.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from retrofit.errors import FeatureError
from retrofit.solvers.stats import MIN_STD

CHUNK_ELEMENTS = 1 << 24  # floats per chunk (64 MB in float32; 16,384 rows of 1,024 features)


def chunk_rows(dim: int, elements: int = CHUNK_ELEMENTS) -> int:
    """Rows per chunk for a matrix `dim` wide."""
    return max(1, elements // max(1, dim))


def row_slices(n: int, rows: int) -> Iterator[slice]:
    for start in range(0, n, rows):
        yield slice(start, min(start + rows, n))


def column_stats(features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, std) of every column, population std clamped >= MIN_STD, in two streamed passes.

    Sums run in float64, so the result does not depend on the chunk size beyond rounding.
    Raises FeatureError on NaN or infinite values.
    """
    n, dim = (int(s) for s in features.shape)
    if n == 0:
        raise FeatureError("features are empty; at least one sample is needed.")
    rows = chunk_rows(dim)
    total = torch.zeros(dim, dtype=torch.float64)
    for r in row_slices(n, rows):
        total += features[r].to(torch.float64).sum(dim=0)
    mean = total / n
    if not bool(torch.isfinite(mean).all()):
        raise FeatureError("features contain NaN or infinite values; check the feature extraction.")
    squares = torch.zeros(dim, dtype=torch.float64)
    for r in row_slices(n, rows):
        centred = features[r].to(torch.float64, copy=True)  # the chunk's one float64 copy
        squares += centred.sub_(mean).square_().sum(dim=0)
    std = (squares / n).sqrt().clamp_min(MIN_STD)
    return mean.float(), std.float()


def all_finite(features: torch.Tensor | Standardised) -> bool:
    """Whether every value is finite, checked a chunk at a time (no N x D mask)."""
    n, dim = (int(s) for s in features.shape)
    return all(bool(torch.isfinite(features[r]).all()) for r in row_slices(n, chunk_rows(dim)))


class Standardised:
    """(features - mean) / std as float32, computed per row chunk when it is read.

    Stands in for the N x D standardised copy: supports `x[rows]` for a row slice and
    `x[:, cols]` (materialised, N x len(cols)), which is all the elastic-net solver reads.
    With `rows` (an index tensor) it is the view of those rows only, e.g. a training split.
    """

    ndim = 2
    dtype = torch.float32

    def __init__(
        self,
        features: torch.Tensor,
        mean: torch.Tensor,
        std: torch.Tensor,
        rows: torch.Tensor | None = None,
    ) -> None:
        self.features, self.mean, self.std = features, mean.float(), std.float()
        self.device = features.device
        self.rows = None if rows is None else rows.to(device=self.device, dtype=torch.long)
        n = features.shape[0] if self.rows is None else len(self.rows)
        self.shape = torch.Size((int(n), int(features.shape[1])))

    def _read(self, index: slice) -> torch.Tensor:
        """The raw feature rows `index` of this view (a gather of one chunk with `rows`)."""
        return self.features[index] if self.rows is None else self.features[self.rows[index]]

    def __len__(self) -> int:
        return int(self.shape[0])

    def float(self) -> Standardised:
        return self

    def __getitem__(self, index: slice | tuple) -> torch.Tensor:
        if isinstance(index, slice):
            return (self._read(index).float() - self.mean).div_(self.std)
        rows, cols = index
        if rows != slice(None):
            raise TypeError("Standardised supports x[slice] and x[:, columns] only.")
        cols = torch.as_tensor(cols, dtype=torch.long)
        out = torch.empty(len(self), cols.numel(), device=self.device)
        mean, std = self.mean[cols], self.std[cols]
        for r in row_slices(len(self), chunk_rows(int(self.shape[1]))):
            out[r] = (self._read(r)[:, cols].float() - mean).div_(std)
        return out

    def normal_matvec(
        self, v: torch.Tensor, shift: float | torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(x.T @ u, u) with u = x @ v + shift, chunk by chunk: each chunk is standardised
        once for both products (the solver's power iteration needs exactly these)."""
        rows = chunk_rows(int(self.shape[1]))
        out = torch.zeros(int(self.shape[1]), device=self.device)
        parts = []
        for r in row_slices(len(self), rows):
            chunk = self[r]
            part = chunk @ v + shift
            out += chunk.T @ part
            parts.append(part)
        return out, torch.cat(parts)
