"""Extraction shared by the processes of a torch.distributed job (torchrun, Accelerate).

Every rank passes the same loader; batch i belongs to rank i mod world_size. Each rank runs
the backbone only on its shard and writes those chunks into the one shared cache; rank 0 then
merges the chunks into the store that every rank reads. A DataLoader that
retrofit.extraction.rank_batches can split is read only in part by each rank (its own batches, which it
fingerprints; the ranks then exchange the fingerprints); any other loader is iterated in full
by every rank, which fingerprints every batch. Because a
batch's rows depend only on its pixels, the store is bit-identical to a single-process run
on the same hardware, and a killed run resumes from every chunk any rank finished.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from retrofit.errors import CacheError, ConfigError, DistributedError, RetrofitError


@dataclass(frozen=True)
class Shard:
    """This process's part of the batches: those whose index is `rank` modulo `world`."""

    rank: int
    world: int

    def owns(self, index: int) -> bool:
        return index % self.world == self.rank


def current_shard(distributed: bool | None, world_size: int | None = None) -> Shard | None:
    """The shard of this process, or None for a single-process extraction.

    `distributed=None` shards when a process group with more than one rank is initialised;
    True insists on one. `world_size` (or the WORLD_SIZE that torchrun sets) must match the
    processes actually in the group.
    """
    active = dist.is_available() and dist.is_initialized()
    if distributed is False or (distributed is None and not active):
        return None
    if not active:
        raise ConfigError(
            "distributed=True needs an initialised torch.distributed process group: launch with "
            "torchrun (or accelerate launch) and call torch.distributed.init_process_group() first."
        )
    world, rank = dist.get_world_size(), dist.get_rank()
    declared = {"world_size": world_size, "WORLD_SIZE": _env_int("WORLD_SIZE")}
    for source, value in declared.items():
        if value is not None and value != world:
            raise DistributedError(
                f"{source}={value} but the process group has {world} processes. Launch as many "
                f"processes as {source} says (torchrun --nproc_per_node/--nnodes), or fix it."
            )
    if distributed is None and world == 1:
        return None
    return Shard(rank, world)


def agree(shard: Shard, settings: dict[str, Any]) -> None:
    """Raise on every rank when any rank computed different `settings` (model, layer, data...)."""
    mine = {key: str(value) for key, value in settings.items()}
    everyone: list[dict[str, str] | None] = [None] * shard.world
    dist.all_gather_object(everyone, mine)
    reference = everyone[0] or {}
    for rank, theirs in enumerate(everyone):
        differing = sorted(
            k
            for k in set(reference) | set(theirs or {})
            if reference.get(k) != (theirs or {}).get(k)
        )
        if differing:
            raise DistributedError(
                f"Rank {rank} disagrees with rank 0 on {', '.join(differing)}. Every rank must "
                "run the same model and layer with the same settings on the same loader "
                "(the same data in the same order; retrofit shards it itself: pass the loader "
                "itself, not accelerator.prepare(loader) or one with a DistributedSampler)."
            )


def collect_failures(shard: Shard, error: BaseException | None, stage: str = "extraction") -> None:
    """Called by every rank after a step: re-raise the own error, or report another rank's.

    A rank that failed still joins this collective, so the others never wait for it forever.
    """
    reports: list[str | None] = [None] * shard.world
    dist.all_gather_object(reports, None if error is None else f"{type(error).__name__}: {error}")
    if error is not None:
        if isinstance(error, OSError) and not isinstance(error, RetrofitError):
            raise CacheError(
                f"Rank {shard.rank} could not write the cache ({error}). Free disk space and run "
                "again: every finished chunk is kept and reused."
            ) from error
        raise error
    failed = [(rank, report) for rank, report in enumerate(reports) if report is not None]
    if failed:
        rank, report = failed[0]
        raise DistributedError(
            f"Rank {rank} failed during {stage} ({report}); fix that and run again"
            + (" — every finished chunk is kept and reused." if stage == "extraction" else ".")
        )


def barrier() -> None:
    dist.barrier()


def _env_int(name: str) -> int | None:
    value = os.environ.get(name)
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def init_from_env(backend: str | None = None) -> Shard:
    """Initialise the default process group from torchrun's environment (gloo on CPU, nccl on
    CUDA) unless one exists; returns this process's shard."""
    if not dist.is_initialized():
        if "RANK" not in os.environ:
            raise ConfigError(
                "No torch.distributed environment: launch with torchrun --nproc_per_node N."
            )
        chosen = backend or ("nccl" if torch.cuda.is_available() else "gloo")
        dist.init_process_group(chosen)
        if chosen == "nccl":
            torch.cuda.set_device(_env_int("LOCAL_RANK") or 0)
    return Shard(dist.get_rank(), dist.get_world_size())
