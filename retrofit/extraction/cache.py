"""On-disk feature cache: per-batch chunks while extracting, one memory-mapped store when done.

Layout under `<cache_dir>/<key>/`:
  chunks/chunk_00012.safetensors   one extracted batch, with its data fingerprint in metadata
  store/pooled.safetensors         features, labels, logits of every image
  store/maps.npy                   (N, D, H, W) float16 maps, memory-mapped on load
  store/meta.json                  batch fingerprints and sizes; written last, so a store
                                   without it is incomplete and never read
Every file is written to a temporary name and renamed, so a crash leaves either the old file
or the new one, never a torn one. Chunks let an interrupted extraction resume; the per-batch
fingerprints make sure rows are only reused for the very same pixels and labels.
Several processes may fill one key at once: chunks of the same batch are identical, and
finalising holds an exclusive file lock (`<key>/.lock`), reuses a store another process just
finished, and takes rows whose chunks that process already removed from its store. A store
whose files do not match the sizes and checksum in meta.json is ignored and recomputed.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import struct
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open

from retrofit.errors import CacheError
from retrofit.io.files import atomic_save_safetensors, atomic_write_bytes, sha256_of

logger = logging.getLogger(__name__)

STORE_VERSION = 1
CHUNK_WRITE_ATTEMPTS = 3  # another process may remove the chunks folder while we write into it
# safetensors dtype names of the tensors the store holds; numpy has no bfloat16, so it is
# memory-mapped as uint16 and viewed back
_SAFETENSORS_DTYPES = {
    torch.float32: ("F32", np.float32),
    torch.float16: ("F16", np.float16),
    torch.bfloat16: ("BF16", np.uint16),
    torch.int64: ("I64", np.int64),
}
_TORCH_DTYPES = {name: (dtype, np_type) for dtype, (name, np_type) in _SAFETENSORS_DTYPES.items()}


@dataclass
class Batch:
    """One batch's extracted tensors (CPU)."""

    features: torch.Tensor
    labels: torch.Tensor
    logits: torch.Tensor
    maps: torch.Tensor | None = None


class Store:
    """A complete extraction: pooled tensors in RAM, maps memory-mapped from disk."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.meta: dict[str, Any] = json.loads((path / "meta.json").read_text())
        if self.meta.get("version") != STORE_VERSION:
            raise CacheError(
                f"Cache store {path} has an unknown version; delete the folder to re-extract."
            )
        _verify_store_files(path, self.meta)
        pooled = open_pooled(path / "pooled.safetensors")
        self.features, self.labels, self.logits = (
            pooled["features"],
            pooled["labels"],
            pooled["logits"],
        )
        maps_file = path / "maps.npy"
        self.maps = (
            torch.from_numpy(np.load(maps_file, mmap_mode="c", allow_pickle=False))
            if maps_file.exists()
            else None
        )
        sizes = self.meta["batch_sizes"]
        self.offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(int).tolist()
        rows = {len(self.features), len(self.labels), len(self.logits), self.offsets[-1]}
        if len(rows) != 1 or (self.maps is not None and len(self.maps) != self.offsets[-1]):
            raise CacheError(f"Cache store {path} has inconsistent row counts.")

    def batch(self, index: int, fingerprint: str) -> Batch | None:
        hashes = self.meta["batch_hashes"]
        if index >= len(hashes) or hashes[index] != fingerprint:
            return None
        lo, hi = self.offsets[index], self.offsets[index + 1]
        maps = None if self.maps is None else self.maps[lo:hi]
        return Batch(self.features[lo:hi], self.labels[lo:hi], self.logits[lo:hi], maps)


def _verify_store_files(path: Path, meta: dict[str, Any]) -> None:
    """Raise CacheError when a store's files differ from what meta.json recorded."""
    pooled = path / "pooled.safetensors"
    if "pooled_sha256" in meta and sha256_of(pooled) != meta["pooled_sha256"]:
        raise CacheError(f"{pooled} does not match its checksum.")
    maps = path / "maps.npy"
    if (
        "maps_bytes" in meta
        and (maps.stat().st_size if maps.exists() else None) != meta["maps_bytes"]
    ):
        raise CacheError(f"{maps} does not have the size it was written with.")


class FeatureCache:
    """The cache folder of one (model, layer, data, settings) key."""

    def __init__(self, root: str | os.PathLike, key: str) -> None:
        self.root = Path(root)
        self.path = self.root / key
        self.chunks = self.path / "chunks"
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            probe = self.path / f".write-test-{uuid.uuid4().hex}"
            probe.write_bytes(b"ok")
            probe.unlink()
        except OSError as error:
            raise CacheError(
                f"Cannot write to the cache directory {self.root} ({error.strerror or error}). "
                "Pass cache_dir= a writable folder, or cache_dir=None to keep features in memory."
            ) from error

    def store(self) -> Store | None:
        """The complete store, or None when there is none (or it is unreadable and so ignored)."""
        if not (self.path / "store" / "meta.json").exists():
            return None
        try:
            return Store(self.path / "store")
        except FileNotFoundError:  # another process is swapping its store in right now
            return None
        except Exception as error:  # corrupted: recomputed and replaced, never trusted
            logger.warning(
                "ignoring the corrupted feature cache %s (%s); recomputing it",
                self.path / "store",
                error,
            )
            return None

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """Hold an exclusive lock on this key, so that one process at a time finalises."""
        try:
            import fcntl
        except ImportError:  # no flock (Windows): renames keep each file whole regardless
            yield
            return
        with open(self.path / ".lock", "a+b") as handle:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle.fileno(), fcntl.LOCK_UN)

    def _chunk_path(self, index: int) -> Path:
        return self.chunks / f"chunk_{index:06d}.safetensors"

    def has_chunk(self, index: int, fingerprint: str) -> bool:
        """Whether batch `index` was already extracted from exactly this data."""
        try:
            with safe_open(str(self._chunk_path(index)), framework="pt") as handle:
                return (handle.metadata() or {}).get("batch") == fingerprint
        except Exception:  # missing or unreadable: recompute
            return False

    def read_chunk(self, index: int, fingerprint: str, with_maps: bool = True) -> Batch | None:
        path = self._chunk_path(index)
        if not path.exists():
            return None
        try:
            with safe_open(str(path), framework="pt") as handle:
                if (handle.metadata() or {}).get("batch") != fingerprint:
                    return None
                names = [k for k in handle.keys() if with_maps or k != "maps"]  # noqa: SIM118
                tensors = {k: handle.get_tensor(k) for k in names}
        except Exception:  # a chunk that cannot be read is recomputed, never trusted
            return None
        return Batch(tensors["features"], tensors["labels"], tensors["logits"], tensors.get("maps"))

    def write_chunk(self, index: int, fingerprint: str, batch: Batch) -> None:
        tensors = {"features": batch.features, "labels": batch.labels, "logits": batch.logits}
        if batch.maps is not None:
            tensors["maps"] = batch.maps
        for attempt in range(CHUNK_WRITE_ATTEMPTS):
            try:
                self.chunks.mkdir(exist_ok=True)
                atomic_save_safetensors(tensors, self._chunk_path(index), {"batch": fingerprint})
                return
            except FileNotFoundError:  # another process finalised and removed the folder
                if attempt == CHUNK_WRITE_ATTEMPTS - 1:
                    raise CacheError(
                        f"Could not write a feature chunk: {self.chunks} keeps disappearing."
                    ) from None
            except OSError as error:
                raise CacheError(
                    f"Could not write a feature chunk to {self.chunks}: {error}. Check the folder "
                    "is writable and free disk space, then run again: finished chunks are reused."
                ) from error

    def finalize(
        self,
        sources: list[Batch | None],
        hashes: list[str],
        extra: dict[str, Any],
    ) -> Store:
        """Write a new store from per-batch sources (None: read the chunk), then swap it in."""
        with self._locked():
            current = self.store()
            if current is not None and current.meta["batch_hashes"] == hashes:
                # another process finished the same extraction meanwhile; the chunks this one
                # wrote are in its store, so they go like that process's own
                shutil.rmtree(self.chunks, ignore_errors=True)
                return current
            return self._finalize_locked(sources, hashes, extra, current)

    def _finalize_locked(
        self,
        sources: list[Batch | None],
        hashes: list[str],
        extra: dict[str, Any],
        current: Store | None,
    ) -> Store:
        tmp = self.path / f"store.tmp-{uuid.uuid4().hex}"
        tmp.mkdir()
        try:

            def load(index: int, with_maps: bool) -> Batch:
                batch = sources[index] or self.read_chunk(index, hashes[index], with_maps=with_maps)
                if batch is None and current is not None:
                    batch = current.batch(index, hashes[index])
                if batch is None:
                    raise CacheError(
                        f"A feature chunk in {self.chunks} vanished while finalising; run again."
                    )
                return batch

            sizes = write_pooled(
                tmp / "pooled.safetensors", len(sources), lambda i: load(i, with_maps=False)
            )
            first_maps = load(0, with_maps=True).maps
            if first_maps is not None:
                map_shape = tuple(first_maps.shape[1:])
                out = np.lib.format.open_memmap(
                    tmp / "maps.npy",
                    mode="w+",
                    dtype=np.float16,
                    shape=(sum(sizes), *map_shape),
                )
                offset = 0
                for i in range(len(sources)):
                    maps = load(i, with_maps=True).maps
                    out[offset : offset + maps.shape[0]] = maps.numpy()
                    offset += maps.shape[0]
                out.flush()
                del out
            meta = {
                "version": STORE_VERSION,
                "batch_hashes": hashes,
                "batch_sizes": sizes,
                "pooled_sha256": sha256_of(tmp / "pooled.safetensors"),
                "maps_bytes": (tmp / "maps.npy").stat().st_size if first_maps is not None else None,
                **extra,
            }
            atomic_write_bytes(tmp / "meta.json", json.dumps(meta, indent=1).encode())
            self._swap_in(tmp)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        shutil.rmtree(self.chunks, ignore_errors=True)
        return Store(self.path / "store")

    def _swap_in(self, tmp: Path) -> None:
        target = self.path / "store"
        old = self.path / f"store.old-{uuid.uuid4().hex}"
        if target.exists():
            os.replace(target, old)
        os.replace(tmp, target)
        shutil.rmtree(old, ignore_errors=True)


def open_pooled(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file, memory-mapped (copy-on-write) instead of read into RAM.

    Fitting then reads the rows it touches from disk (the page cache), so a cache larger than
    the memory can be used; safetensors' own loader would copy every tensor into RAM.
    """
    with open(path, "rb") as handle:
        (header_size,) = struct.unpack("<Q", handle.read(8))
        header = json.loads(handle.read(header_size))
    header.pop("__metadata__", None)
    start = 8 + header_size
    tensors = {}
    for name, info in header.items():
        if info["dtype"] not in _TORCH_DTYPES:
            raise CacheError(
                f"{path} holds {name} as {info['dtype']}, which the store never writes."
            )
        dtype, np_type = _TORCH_DTYPES[info["dtype"]]
        lo, hi = info["data_offsets"]
        shape = tuple(info["shape"])
        count = int(np.prod(shape)) if shape else 1
        if count == 0:
            tensors[name] = torch.empty(shape, dtype=dtype)
            continue
        array = np.memmap(path, dtype=np_type, mode="c", offset=start + lo, shape=(count,))
        if array.nbytes != hi - lo:
            raise CacheError(f"{path} is inconsistent ({name}); delete the folder to re-extract.")
        tensor = torch.from_numpy(array)
        tensors[name] = (tensor.view(dtype) if np_type is np.uint16 else tensor).reshape(shape)
    return tensors


def write_pooled(path: Path, count: int, load: Callable[[int], Batch]) -> list[int]:
    """Write the features, labels and logits of batches 0..count-1 as one safetensors file.

    Streams batch by batch (each loaded twice: shapes, then bytes), so finalising never holds
    more than one batch in memory. Returns the batch sizes.
    """
    names = ("features", "labels", "logits")
    sizes: list[int] = []
    widths: dict[str, tuple[int, ...]] = {}
    dtypes: dict[str, torch.dtype] = {}
    for i in range(count):
        batch = load(i)
        sizes.append(int(batch.features.shape[0]))
        for name in names:
            tensor = getattr(batch, name)
            if name in dtypes and (tensor.dtype, tuple(tensor.shape[1:])) != (
                dtypes[name],
                widths[name],
            ):
                raise CacheError(
                    f"Feature chunks in {path.parent.parent} disagree on {name}; delete the "
                    "folder and extract again."
                )
            dtypes[name], widths[name] = tensor.dtype, tuple(tensor.shape[1:])
    total = sum(sizes)
    header: dict[str, Any] = {}
    offset = 0
    for name in names:
        shape = [total, *widths[name]]
        nbytes = int(np.prod(shape)) * torch.empty(0, dtype=dtypes[name]).element_size()
        header[name] = {
            "dtype": _SAFETENSORS_DTYPES[dtypes[name]][0],
            "shape": shape,
            "data_offsets": [offset, offset + nbytes],
        }
        offset += nbytes
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)
    data_start = 8 + len(encoded)
    written = dict.fromkeys(names, 0)
    with open(path, "wb") as handle:
        handle.write(struct.pack("<Q", len(encoded)))
        handle.write(encoded)
        handle.truncate(data_start + offset)
        for i in range(count):
            batch = load(i)
            for name in names:
                data = getattr(batch, name).contiguous().view(torch.uint8).numpy().tobytes()
                handle.seek(data_start + header[name]["data_offsets"][0] + written[name])
                handle.write(data)
                written[name] += len(data)
        handle.flush()
        os.fsync(handle.fileno())
    return sizes
