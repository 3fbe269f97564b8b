"""Backbone fine-tuning shared by the ranks of a torch.distributed job, as DDP.

Batch i belongs to rank i mod world, as in distributed extraction; with a DataLoader that
retrofit.extraction.rank_batches can split, each rank loads and decodes only its own batches, else every
rank iterates the whole loader and keeps its own. The batches are consumed in rounds of
`world` consecutive ones, one optimiser step per round. Each rank scales its summed loss by
world / (images in the round), so DDP's gradient average is exactly the gradient of the
round's mean loss: a 2-rank run equals one process whose batches are the rounds. In a last,
short round the ranks without a batch run rank 0's batch with zero weight (DDP needs every
rank in every all-reduce; rank 0 always has a batch, so its buffers are the ones kept); with a
split loader such a rank reads that batch itself (one batch per epoch, and only then): its
weight is zero, so its content cannot change the gradient, and no collective is added.

Twice per step the ranks exchange one small tensor — a failure flag and the round's size and
a checksum (of its labels, or with a split loader of its position) — after reading the round
(before DDP's forward, which may run collectives of its own) and after computing the loss
(before the backward's all-reduce). A rank that failed or read other data makes every rank
raise instead of leaving the others in a collective.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from retrofit.errors import DataError, DistributedError
from retrofit.extraction.distributed import Shard, collect_failures
from retrofit.extraction.loaders import iterate
from retrofit.extraction.rank_batches import RankBatches


@dataclass
class Round:
    """The batches of one optimiser step and where the first one starts in the epoch.

    With a split loader a rank holds only its own batch; the others are None.
    """

    batches: list[tuple[torch.Tensor, torch.Tensor] | None]
    offset: int
    sizes: list[int]
    checksum: int

    @property
    def size(self) -> int:
        return sum(self.sizes)

    def signature(self) -> list[int]:
        """What every rank must agree on: the round's batch and image counts and a checksum."""
        return [len(self.sizes), self.size, self.checksum]

    def part(self, shard: Shard | None) -> tuple[torch.Tensor, torch.Tensor, int, bool]:
        """(images, labels, offset in the epoch, own) of this rank; own=False: weight zero."""
        rank = 0 if shard is None else shard.rank
        if rank >= len(self.sizes):
            images, labels = self.batches[0]  # type: ignore[misc]
            return images, labels, self.offset, False
        images, labels = self.batches[rank]  # type: ignore[misc]
        return images, labels, self.offset + sum(self.sizes[:rank]), True


def rounds(batches: Iterable[tuple[torch.Tensor, torch.Tensor]], world: int) -> Iterator[Round]:
    """Consecutive groups of `world` batches (the last may be shorter), every rank reading all."""
    group: list[tuple[torch.Tensor, torch.Tensor] | None] = []
    offset = 0
    for batch in batches:
        group.append(batch)
        if len(group) == world:
            yield _full_round(group, offset)
            offset += sum(len(labels) for _, labels in group)  # type: ignore[misc]
            group = []
    if group:
        yield _full_round(group, offset)


def _full_round(group: list, offset: int) -> Round:
    labels = torch.cat([labels for _, labels in group]).long()
    checksum = int((labels * torch.arange(1, len(labels) + 1)).sum())
    return Round(group, offset, [len(labels) for _, labels in group], checksum)


def split_rounds(rank_batches: RankBatches) -> Iterator[Round]:
    """The rounds of a split loader: this rank reads only its own batch of each round (in a
    short last round without one, rank 0's)."""
    shard, sizes = rank_batches.shard, rank_batches.sizes
    own = iterate(rank_batches.batches())
    offset = 0
    for start in range(0, rank_batches.count, shard.world):
        round_sizes = sizes[start : start + shard.world]
        batches: list[tuple[torch.Tensor, torch.Tensor] | None] = [None] * len(round_sizes)
        if shard.rank < len(round_sizes):
            batch = next(own, None)
            if batch is None or len(batch[1]) != round_sizes[shard.rank]:
                raise DataError(
                    f"Batch {start + shard.rank} of the loader does not hold the "
                    f"{round_sizes[shard.rank]} images its sampler listed; its dataset or "
                    "collate_fn changes the batches between passes."
                )
            batches[shard.rank] = batch
        else:  # rank 0's batch, run with weight zero: read here, no rank sends it
            batches[0] = next(iterate(rank_batches.loader_of([start])))
        yield Round(batches, offset, round_sizes, checksum=start)
        offset += sum(round_sizes)


def wrap(module: nn.Module, device: torch.device) -> nn.parallel.DistributedDataParallel:
    """`module` as DDP; rank 0's weights and buffers are broadcast to every rank first.

    find_unused_parameters: the backbone's own classifier runs but feeds nothing.
    """
    device_ids = [device.index] if device.type == "cuda" and device.index is not None else None
    return nn.parallel.DistributedDataParallel(
        module, device_ids=device_ids, find_unused_parameters=True
    )


def _comm_device(device: torch.device) -> torch.device:
    return device if dist.get_backend() == "nccl" else torch.device("cpu")


def check_step(
    shard: Shard, error: BaseException | None, signature: list[int], device: torch.device
) -> None:
    """Raise on every rank when any rank failed or read a different round (one small all-reduce).

    `signature` is empty when a rank's loader ended; a rank with more batches then fails too.
    """
    width = 3
    values = (signature or [-1] * width)[:width]
    flags = torch.tensor(
        [int(error is not None), *values, *(-v for v in values)],
        dtype=torch.int64,
        device=_comm_device(device),
    )
    dist.all_reduce(flags, op=dist.ReduceOp.MAX)
    flags = flags.cpu()
    if flags[0]:
        collect_failures(shard, error, stage="backbone fine-tuning")
    if not torch.equal(flags[1 : 1 + width], -flags[1 + width :]):
        raise DistributedError(
            "The ranks read different batches during backbone fine-tuning (another count, size "
            "or labels). Give every rank the same loader in the same order: no "
            "DistributedSampler and no unseeded shuffling; retrofit shards it itself."
        )


def sum_across(value: float, device: torch.device) -> float:
    total = torch.tensor([value], dtype=torch.float64, device=_comm_device(device))
    dist.all_reduce(total)
    return float(total.item())


def broadcast_buffers(module: nn.Module) -> None:
    """Rank 0's buffers (e.g. BatchNorm statistics, updated by each rank's last forward) to all."""
    for buffer in module.buffers():
        dist.broadcast(buffer, src=0)
