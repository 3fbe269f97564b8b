"""Each rank of a distributed job loads and decodes only its own batches of a DataLoader.

Extraction and DDP fine-tuning give batch i to rank i mod world. When the loader is a plain
torch DataLoader over a map-style dataset with a batch order that does not change between
passes, every rank lists the batches' dataset indices (cheap: no image is read), the ranks
check that they listed the same ones, and each rank reads its batches through a DataLoader
over the same dataset, collate_fn and workers whose batch sampler yields only those index
lists. Any other loader (a list of batches, a generator, an IterableDataset, a shuffling or
custom batch sampler) is read in full by every rank, as before, and that is logged once.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import torch.distributed as dist
from torch.utils.data import (
    BatchSampler,
    DataLoader,
    IterableDataset,
    RandomSampler,
    SubsetRandomSampler,
    WeightedRandomSampler,
)
from torch.utils.data.distributed import DistributedSampler

from retrofit.errors import DistributedError
from retrofit.extraction.distributed import Shard
from retrofit.extraction.fingerprint import settings_fingerprint

logger = logging.getLogger(__name__)
_told: set[str] = set()  # reasons already logged by this process

# samplers that draw another order on every pass, or give each rank other indices already
UNSPLITTABLE_SAMPLERS = (
    RandomSampler,
    SubsetRandomSampler,
    WeightedRandomSampler,
    DistributedSampler,
)


def unsplittable_reason(loader: Any) -> str | None:
    """Why this rank cannot read only its own batches of `loader`; None when it can."""
    if not isinstance(loader, DataLoader):
        return f"it is a {type(loader).__name__}, not a torch DataLoader"
    if type(loader) is not DataLoader:
        return f"{type(loader).__name__} subclasses DataLoader and may read batches its own way"
    if isinstance(loader.dataset, IterableDataset):
        return "its dataset is an IterableDataset, which has no indices to split"
    batch_sampler = loader.batch_sampler
    if batch_sampler is None:
        return "it does not batch (batch_size=None)"
    if type(batch_sampler) is not BatchSampler:
        return f"its batch sampler is a custom {type(batch_sampler).__name__}"
    if isinstance(batch_sampler.sampler, UNSPLITTABLE_SAMPLERS):
        return f"its sampler is a {type(batch_sampler.sampler).__name__}"
    return None


@dataclass(frozen=True)
class RankBatches:
    """How this rank reads `loader`: only its batches (`index_lists` known) or all of them."""

    loader: Any
    shard: Shard
    index_lists: list[list[Any]] | None = None

    @property
    def split(self) -> bool:
        return self.index_lists is not None

    @property
    def count(self) -> int:
        """Number of batches of the whole loader (split loaders only)."""
        return len(self.index_lists or [])

    @cached_property
    def sizes(self) -> list[int]:
        """Images per batch of the whole loader, in order (split loaders only)."""
        return [len(indices) for indices in self.index_lists or []]

    @property
    def own(self) -> range:
        """Global indices of this rank's batches."""
        return range(self.shard.rank, self.count, self.shard.world)

    def indices(self) -> Iterable[int]:
        """Global indices of the batches `batches()` yields."""
        return self.own if self.split else itertools.count()

    def batches(self) -> Iterable:
        """The raw batches this rank reads: its own when split, else every batch."""
        return self.loader_of(list(self.own)) if self.split else self.loader

    def loader_of(self, batches: list[int]) -> DataLoader:
        """A DataLoader like the original one that reads only the given batches, in order."""
        lists = [self.index_lists[i] for i in batches]  # type: ignore[index]
        return loader_over(self.loader, lists)

    def probe(self, images: int) -> DataLoader:
        """The first `images` images of batch 0, for a rank that owns no batch to probe with."""
        return loader_over(self.loader, [self.index_lists[0][:images]])  # type: ignore[index]

    def gather_hashes(self, own: dict[int, str]) -> list[str]:
        """Every batch's fingerprint in global order, from the ranks that computed them.

        Collective: every rank must call it, and every rank gets the same list or the same error.
        """
        everyone: list[list[tuple[int, str]] | None] = [None] * self.shard.world
        dist.all_gather_object(everyone, sorted(own.items()))
        merged: dict[int, str] = {}
        for pairs in everyone:
            merged.update(pairs or [])
        missing = sorted(set(range(self.count)) - set(merged))
        if missing or len(merged) != self.count:
            raise DistributedError(
                f"The ranks read {len(merged)} of the loader's {self.count} batches (missing "
                f"{missing[:5]}): a rank's loader yielded fewer batches than its sampler listed. "
                "Give every rank the same loader over the same dataset."
            )
        return [merged[i] for i in range(self.count)]


def loader_over(loader: DataLoader, index_lists: list[list[Any]]) -> DataLoader:
    """`loader`'s dataset, collate_fn, workers and memory settings over these batches only."""
    settings: dict[str, Any] = {
        "num_workers": loader.num_workers,
        "collate_fn": loader.collate_fn,
        "pin_memory": loader.pin_memory,
        "timeout": loader.timeout,
        "worker_init_fn": loader.worker_init_fn,
        "multiprocessing_context": loader.multiprocessing_context,
        "generator": loader.generator,
        "persistent_workers": loader.persistent_workers,
        "pin_memory_device": loader.pin_memory_device,
    }
    if loader.num_workers > 0:
        settings["prefetch_factor"] = loader.prefetch_factor
    if hasattr(loader, "in_order"):
        settings["in_order"] = loader.in_order
    return DataLoader(loader.dataset, batch_sampler=index_lists, **settings)


def plan(loader: Any, shard: Shard) -> RankBatches:
    """Decide, on every rank together, whether each rank reads only its own batches.

    Collective. Split only when every rank's loader can be split and all of them list the
    same batches; a rank whose sampler lists other batches (another count or order) makes
    every rank raise DistributedError before any image is read.
    """
    reason = unsplittable_reason(loader)
    lists = None
    if reason is None:
        try:
            lists = [list(batch) for batch in loader.batch_sampler]
        except Exception as error:  # the full read below meets it again and reports it
            reason = f"listing its batches failed ({type(error).__name__}: {error})"
    digest = None if lists is None else settings_fingerprint({"batches": lists})
    everyone: list[tuple[str | None, str | None, int] | None] = [None] * shard.world
    dist.all_gather_object(everyone, (reason, digest, len(lists or [])))
    reasons = [(rank, theirs[0]) for rank, theirs in enumerate(everyone) if theirs and theirs[0]]
    if reasons:
        rank, why = reasons[0]
        if why not in _told:  # once per reason, not at every fine-tuning round
            _told.add(why)
            logger.info(
                "Every rank reads the whole loader (rank %d's loader cannot be split: %s); "
                "pass a DataLoader over a map-style dataset without shuffling so that each "
                "rank decodes only its own batches.",
                rank,
                why,
            )
        return RankBatches(loader, shard)
    for rank, theirs in enumerate(everyone):
        if theirs is not None and theirs[1] != digest:
            raise DistributedError(
                f"The ranks read different batches: rank {rank}'s loader lists {theirs[2]} "
                f"batches against rank {shard.rank}'s {len(lists or [])}, or other dataset "
                "indices in them. Give every rank the same loader in the same order (no "
                "DistributedSampler, no unseeded shuffling; retrofit shards it itself)."
            )
    return RankBatches(loader, shard, lists)


def from_rank0(shard: Shard, value: Any) -> Any:
    """Rank 0's `value` on every rank (collective)."""
    box = [value if shard.rank == 0 else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]
