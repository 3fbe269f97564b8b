"""extract(): run a classifier once over a loader and keep its penultimate features."""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import warnings
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from retrofit.errors import CacheError, ConfigError, DataError, FeatureError, ModelError
from retrofit.extraction.cache import Batch, FeatureCache
from retrofit.extraction.distributed import agree, collect_failures, current_shard
from retrofit.extraction.featureset import FeatureSet
from retrofit.extraction.fingerprint import (
    batch_fingerprint,
    model_fingerprint,
    settings_fingerprint,
)
from retrofit.extraction.hooks import FeatureCapture, LayerSpec, detect_layers
from retrofit.extraction.inputs import InputPolicy
from retrofit.extraction.loaders import as_batches, dataset_length, iterate
from retrofit.extraction.outputs import logits_of
from retrofit.extraction.rank_batches import RankBatches, from_rank0, plan

logger = logging.getLogger(__name__)

PROBE_IMAGES = 2
AUTOCAST_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16}
# how the pooled features are stored: half precision halves the cache's disk and I/O
FEATURE_DTYPES = {"float32": torch.float32, **AUTOCAST_DTYPES}


def resolve_device(model: nn.Module, device: str | torch.device | None) -> torch.device:
    """The device to run on: the one asked for, else where the model's weights already are."""
    if device is not None:
        return torch.device(device)
    parameter = next(model.parameters(), None)
    return parameter.device if parameter is not None else torch.device("cpu")


def _autocast(
    device: torch.device, dtype: str | torch.dtype | None
) -> contextlib.AbstractContextManager:
    if dtype is None:
        return contextlib.nullcontext()
    if isinstance(dtype, str):
        if dtype not in AUTOCAST_DTYPES:
            raise ConfigError(
                f"autocast={dtype!r} is not supported; use one of {list(AUTOCAST_DTYPES)} or None."
            )
        dtype = AUTOCAST_DTYPES[dtype]
    return torch.autocast(device_type=device.type, dtype=dtype)


class Extractor:
    """A model with its detected feature layer, ready to turn image batches into Batches."""

    def __init__(
        self,
        model: nn.Module,
        spec: LayerSpec,
        device: torch.device,
        with_maps: bool = False,
        autocast: str | torch.dtype | None = None,
        channels_last: bool = False,
    ) -> None:
        self.model = model
        self.spec = spec
        self.device = device
        self.with_maps = with_maps
        self.autocast = autocast
        self.channels_last = channels_last
        self.capture = FeatureCapture(model, spec, with_maps=with_maps)
        self.feature_dtype = torch.float32

    def __call__(self, images: torch.Tensor, labels: torch.Tensor) -> Batch:
        images = images.to(self.device, non_blocking=True)
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        with self.capture.attached(), torch.no_grad(), _autocast(self.device, self.autocast):
            logits = logits_of(self.model(images))
        features = self.capture.features().float().cpu().to(self.feature_dtype)
        maps = (
            self.capture.maps.half().cpu()
            if self.with_maps and self.capture.maps is not None
            else None
        )
        self.capture.clear()
        if not torch.isfinite(features).all():
            raise FeatureError(
                "The extracted features contain NaN or infinite values. Check the model's weights and "
                "the input normalisation; with autocast='float16' or feature_dtype='float16', try None / "
                "'float32' or 'bfloat16'."
            )
        return Batch(features, labels.cpu(), logits.float().cpu(), maps)


def _check_labels(labels: torch.Tensor, num_classes: int) -> None:
    if labels.numel() and (labels.min() < 0 or labels.max() >= num_classes):
        bad = labels[(labels < 0) | (labels >= num_classes)][:5].tolist()
        raise DataError(
            f"Labels must lie in [0, {num_classes}) for a model with {num_classes} outputs; found {bad}. "
            "Remap the labels to class indices, or pass the model whose head matches your classes."
        )


def _check_classes(width: int, num_classes: int | None, class_names: list[str] | None) -> None:
    if num_classes is not None and num_classes != width:
        raise ModelError(
            f"The model outputs {width} logits but num_classes={num_classes}. Pass the model trained "
            "for these classes, or fix num_classes."
        )
    if class_names is not None and len(class_names) != width:
        raise ConfigError(
            f"class_names has {len(class_names)} entries but the model outputs {width} logits."
        )


def extract(
    model: nn.Module,
    loader: Iterable | Any,
    *,
    feature_layer: str | None = None,
    num_classes: int | None = None,
    class_names: list[str] | None = None,
    with_maps: bool = False,
    cache_dir: str | os.PathLike | None = None,
    batch_size: int = 64,
    device: str | torch.device | None = None,
    autocast: str | torch.dtype | None = None,
    channels_last: bool = False,
    workers: int = 0,
    transform: Callable | None = None,
    progress: bool = True,
    feature_dtype: str = "float32",
    distributed: bool | None = None,
    world_size: int | None = None,
    pooled_layers: list[str] | None = None,
) -> FeatureSet:
    """Pooled penultimate features, labels and original logits of every image in `loader`.

    With `cache_dir`, results are kept on disk under a fingerprint of the model weights, the
    layer, the settings and the data, reused only for the very same inputs, and an interrupted
    run resumes from the last finished batch. `feature_dtype` ("float16" or "bfloat16") stores
    the pooled features in half precision; every fitting stage converts chunk by chunk.
    Under torch.distributed (`distributed=None`: whenever a process group of several ranks is
    initialised) every rank passes the same loader and extracts its shard into the shared
    `cache_dir`; see retrofit.extraction.distributed (each rank decodes only its own batches of a
    DataLoader that retrofit.extraction.rank_batches can split).
    `pooled_layers` (FLINT's flint_layers): modules whose outputs, pooled per image, follow the
    penultimate features in this order (retrofit.extraction.pooled_layers); they are part of the cache key.
    """
    from retrofit.adapters import adapter_for

    if feature_dtype not in FEATURE_DTYPES:
        raise ConfigError(
            f"feature_dtype={feature_dtype!r} is not supported; use one of {list(FEATURE_DTYPES)}."
        )
    shard = current_shard(distributed, world_size)
    if shard is not None and cache_dir is None:
        raise ConfigError(
            "A distributed extraction merges the ranks' shards through the cache: pass cache_dir= "
            "a folder every rank can write (a shared file system across nodes)."
        )
    policy = InputPolicy.of(model)
    if cache_dir is not None:
        _warn_if_shuffled(loader)
    raw = as_batches(loader, batch_size=batch_size, workers=workers, transform=transform)
    rank_batches = plan(raw, shard) if shard is not None else None
    if rank_batches is None:
        batches = _prepared(enumerate(iterate(raw)), policy, with_maps)
        first, probe_only = next(batches, None), False
    else:  # the ranks read different first batches: one that fails must not leave the others
        batches = _prepared(
            zip(rank_batches.indices(), iterate(rank_batches.batches())), policy, with_maps
        )
        failure = None
        try:
            first, probe_only = _first_of_rank(batches, rank_batches, policy, with_maps)
        except Exception as error:
            failure = error
        collect_failures(rank_batches.shard, failure)
    if first is None:
        raise DataError("The loader yielded no batches. Check that the dataset is not empty.")
    device = resolve_device(model, device)
    was_training = model.training
    model.eval()
    if channels_last:
        model.to(memory_format=torch.channels_last)
    try:
        family = adapter_for(model)
        probe = first[1][:PROBE_IMAGES].to(device)
        spec, probe_logits = detect_layers(
            model, probe, feature_layer, family.preferred_heads(model), pooled_layers
        )
        width = probe_logits.shape[1]
        _check_classes(width, num_classes, class_names)
        if class_names is None and family.class_names is not None:
            carried = family.class_names(model)  # e.g. a transformers model's id2label
            class_names = carried if carried is not None and len(carried) == width else None
        extractor = Extractor(model, spec, device, with_maps, autocast, channels_last)
        extractor.feature_dtype = FEATURE_DTYPES[feature_dtype]
        cache = None
        if cache_dir is not None:
            settings = {
                "model": model_fingerprint(model),
                "layer": spec.to_dict(),
                "maps": with_maps,
                "autocast": str(autocast),
                "channels_last": channels_last,
                "first_batch": batch_fingerprint(*first[1:]),
            }
            if feature_dtype != "float32":  # float32 caches keep the keys they always had
                settings["feature_dtype"] = feature_dtype
            if rank_batches is not None and rank_batches.split:  # the key is batch 0's
                settings["first_batch"] = from_rank0(shard, settings["first_batch"])
            if shard is not None:
                agree(shard, {**settings, "cache_dir": os.path.abspath(cache_dir)})
            cache = FeatureCache(cache_dir, settings_fingerprint(settings))
        if rank_batches is not None and rank_batches.split:
            total = sum(rank_batches.sizes[i] for i in rank_batches.own)
        else:
            total = dataset_length(loader)
        result = _run(
            extractor,
            batches if probe_only else itertools.chain([first], batches),
            width,
            cache,
            total,
            progress,
            rank_batches,
        )
    finally:
        model.train(was_training)
    return FeatureSet(
        features=result.features,
        labels=result.labels,
        logits=result.logits,
        maps=result.maps if with_maps else None,
        layer=spec.name,
        class_names=list(class_names) if class_names is not None else None,
        fingerprint=cache.path.name if cache is not None else "",
        meta={
            "layer_spec": spec.to_dict(),
            "family": family.name,
            "input_size": list(first[1].shape[2:]),
        },
    )


def _prepared(
    batches: Iterable[tuple[int, tuple[torch.Tensor, torch.Tensor]]],
    policy: InputPolicy,
    with_maps: bool,
) -> Iterator[tuple[int, torch.Tensor, torch.Tensor]]:
    """(global index, images, labels) adapted to the model (retrofit.extraction.inputs); with maps, all
    of one spatial size."""
    size = None
    for index, (images, labels) in batches:
        images = policy(images)
        size = size or tuple(images.shape[2:])
        if with_maps and tuple(images.shape[2:]) != size:
            raise DataError(
                f"With maps on, every batch must have one image size: batch {index} has "
                f"{tuple(images.shape[2:])}, the first had {size}. Resize the images to one size."
            )
        yield index, images, labels


def _first_of_rank(
    batches: Iterator[tuple[int, torch.Tensor, torch.Tensor]],
    rank_batches: RankBatches,
    policy: InputPolicy,
    with_maps: bool,
) -> tuple[tuple[int, torch.Tensor, torch.Tensor] | None, bool]:
    """(this rank's first batch, probe_only): a rank that owns no batch (fewer batches than
    ranks) gets batch 0's first images to probe the model with, and extracts nothing."""
    first = next(batches, None)
    if first is not None or not rank_batches.count:
        return first, False
    images = iterate(rank_batches.probe(PROBE_IMAGES))
    return next(_prepared(enumerate(images), policy, with_maps)), True


def _warn_if_shuffled(loader: Any) -> None:
    from torch.utils.data import RandomSampler

    sampler = getattr(loader, "sampler", None)
    batch_sampler = getattr(loader, "batch_sampler", None)
    if isinstance(sampler, RandomSampler) or isinstance(
        getattr(batch_sampler, "sampler", None), RandomSampler
    ):
        message = (
            "The DataLoader shuffles, so every run sees the images in another order and the "
            "feature cache (keyed by the data in order) is never reused. Extract with "
            "shuffle=False: convert fits the head on all features at once and needs no shuffling."
        )
        warnings.warn(message, stacklevel=3)


def _run(
    extractor: Extractor,
    batches: Iterable[tuple[int, torch.Tensor, torch.Tensor]],
    width: int,
    cache: FeatureCache | None,
    total: int | None,
    progress: bool,
    rank_batches: RankBatches | None = None,
) -> Batch:
    """Extract every batch, reusing cached rows whose data fingerprint matches."""
    if rank_batches is not None:
        return _run_sharded(extractor, batches, width, cache, total, progress, rank_batches)
    store = cache.store() if cache is not None else None
    sources: list[Batch | None] = []
    hashes: list[str] = []
    with tqdm(total=total, unit="img", desc="extract", disable=not progress) as bar:
        for index, images, labels in batches:
            _check_labels(labels, width)
            if cache is None:
                sources.append(_compute(extractor, images, labels, width))
            else:
                fingerprint = batch_fingerprint(images, labels)
                hashes.append(fingerprint)
                batch = store.batch(index, fingerprint) if store is not None else None
                if batch is None and not cache.has_chunk(index, fingerprint):
                    cache.write_chunk(
                        index, fingerprint, _compute(extractor, images, labels, width)
                    )
                sources.append(batch)
            bar.update(len(labels))
    if cache is None:
        return _concat(sources)
    if (
        store is not None
        and all(s is not None for s in sources)
        and hashes == store.meta["batch_hashes"]
    ):
        logger.info("Reusing cached features from %s", cache.path)
    else:
        store = cache.finalize(sources, hashes, extra={"layer": extractor.spec.to_dict()})
    return Batch(store.features, store.labels, store.logits, store.maps)


def _run_sharded(
    extractor: Extractor,
    batches: Iterable[tuple[int, torch.Tensor, torch.Tensor]],
    width: int,
    cache: FeatureCache,
    total: int | None,
    progress: bool,
    rank_batches: RankBatches,
) -> Batch:
    """This rank's shard into the shared cache; rank 0 merges; every rank reads the store.

    With a split loader this rank reads only its batches and fingerprints them; the ranks
    then exchange the fingerprints, so every rank holds the full list in global order.
    """
    shard = rank_batches.shard
    store = cache.store()
    sources: dict[int, Batch | None] = {}
    own_hashes: dict[int, str] = {}
    failure: BaseException | None = None
    try:
        with tqdm(
            total=total, unit="img", desc=f"extract rank {shard.rank}", disable=not progress
        ) as bar:
            for index, images, labels in batches:
                _check_labels(labels, width)
                fingerprint = batch_fingerprint(images, labels)
                own_hashes[index] = fingerprint
                batch = store.batch(index, fingerprint) if store is not None else None
                sources[index] = batch
                if shard.owns(index) and batch is None and not cache.has_chunk(index, fingerprint):
                    cache.write_chunk(
                        index, fingerprint, _compute(extractor, images, labels, width)
                    )
                bar.update(len(labels))
    except Exception as error:  # every rank must reach the collective below
        failure = error
    collect_failures(shard, failure)
    if rank_batches.split:
        hashes = rank_batches.gather_hashes(own_hashes)
    else:
        hashes = [own_hashes[i] for i in range(len(own_hashes))]
        agree(shard, {"batches": settings_fingerprint({"hashes": hashes})})
    reuse = store is not None and hashes == store.meta["batch_hashes"]
    if not reuse:
        failure = None
        if shard.rank == 0:
            try:
                cache.finalize(
                    [sources.get(i) for i in range(len(hashes))],
                    hashes,
                    extra={"layer": extractor.spec.to_dict()},
                )
            except Exception as error:
                failure = error
        collect_failures(shard, failure)
        store = cache.store()
        if store is None or store.meta["batch_hashes"] != hashes:
            raise CacheError(
                f"Rank {shard.rank} cannot read the merged store in {cache.path}; every rank "
                "needs the same cache_dir (on a file system they all share)."
            )
    return Batch(store.features, store.labels, store.logits, store.maps)


def _compute(extractor: Extractor, images: torch.Tensor, labels: torch.Tensor, width: int) -> Batch:
    batch = extractor(images, labels)
    if batch.logits.shape[1] != width:
        raise ModelError(
            f"The model's output width changed between batches ({width} -> {batch.logits.shape[1]})."
        )
    return batch


def _concat(batches: list[Batch]) -> Batch:
    maps = [b.maps for b in batches]
    return Batch(
        torch.cat([b.features for b in batches]),
        torch.cat([b.labels for b in batches]),
        torch.cat([b.logits for b in batches]),
        torch.cat(maps) if maps[0] is not None else None,
    )
