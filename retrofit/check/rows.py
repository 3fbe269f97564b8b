"""Per-image rows that check keeps across its pass, in one tensor that grows by doubling.

A list of small per-batch tensors, each allocated between the batch's large temporaries
(features, logits), fragments the C heap: the process's memory then grows by kilobytes per
image although only a few hundred bytes are kept. One buffer, grown geometrically, keeps the
memory at what is stored.
"""

from __future__ import annotations

import torch


class GrowingRows:
    """Rows appended batch by batch; `tensor()` is all of them, `len()` how many."""

    def __init__(self, capacity: int | None = None) -> None:
        self.capacity = max(int(capacity or 0), 0)
        self.data: torch.Tensor | None = None
        self.n = 0

    def __len__(self) -> int:
        return self.n

    def append(self, rows: torch.Tensor) -> None:
        rows = rows.detach()
        end = self.n + len(rows)
        if self.data is None:
            size = max(self.capacity, end, 1)
            self.data = torch.empty((size, *rows.shape[1:]), dtype=rows.dtype, device=rows.device)
        elif end > len(self.data):
            grown = torch.empty(
                (max(2 * len(self.data), end), *self.data.shape[1:]),
                dtype=self.data.dtype,
                device=self.data.device,
            )
            grown[: self.n] = self.data[: self.n]
            self.data = grown
        self.data[self.n : end] = rows
        self.n = end

    def tensor(self) -> torch.Tensor:
        """The rows appended so far (a view of the buffer; empty if none were)."""
        return self.data[: self.n] if self.data is not None else torch.zeros(0)
