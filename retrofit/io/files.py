"""Small helpers for files retrofit writes or reads from others: atomic writes, bounded checks.

Writes go to a temporary name in the same folder and are renamed into place, so a crash leaves
the old file or the new one, never a torn one (exports, caches, reports, embeddings, pages).
Files from elsewhere (an export, a Hub download) are untrusted: names must stay inside their
folder, JSON is bounded in size and depth with no NaN/Infinity, values are checked by small
typed predicates, and a safetensors header is parsed here first so a hostile one gives a
RetrofitError rather than whatever the parser raises.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import struct
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from retrofit.errors import ExportCorruptedError, ExportSchemaError

MAX_CONFIG_BYTES = 64 << 20
MAX_JSON_DEPTH = 48
MAX_STRING = 1 << 16
MAX_HEADER_BYTES = 16 << 20
MAX_COUNT = 1 << 20  # classes, features, list lengths
MAX_FEATURE_DIM = 1 << 24
MAX_IMAGE_SIDE = 16384
MAX_FILE_BYTES = 1 << 40
SAFETENSORS_DTYPES = {
    "BOOL": 1,
    "U8": 1,
    "I8": 1,
    "F8_E5M2": 1,
    "F8_E4M3": 1,
    "I16": 2,
    "U16": 2,
    "F16": 2,
    "BF16": 2,
    "I32": 4,
    "U32": 4,
    "F32": 4,
    "I64": 8,
    "U64": 8,
    "F64": 8,
}


# ------------------------------------------------------------------------------ atomic writes


def as_umask_allows(path: str | os.PathLike) -> None:
    """Give a file the mode an ordinary `open()` would (0666 less the umask): safetensors
    writes 0600, which leaves an export copied to a shared folder unreadable to others."""
    mask = os.umask(0)
    os.umask(mask)
    os.chmod(path, 0o666 & ~mask)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    with open(tmp, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def atomic_save_safetensors(
    tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str]
) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp), metadata=metadata)
    except Exception as error:  # safetensors reports a full disk as its own error type
        tmp.unlink(missing_ok=True)
        if isinstance(error, OSError):
            raise
        if not path.parent.is_dir():  # removed meanwhile (by another process): callers retry
            raise FileNotFoundError(f"{path.parent} no longer exists") from error
        raise OSError(f"could not write {path.name} ({error})") from error
    as_umask_allows(tmp)
    os.replace(tmp, path)


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# ---------------------------------------------------------------------------- untrusted files


def safe_member(folder: Path, name: Any, what: str) -> Path:
    """`folder/name` for a plain file name that stays inside `folder`, else ExportSchemaError."""
    if (
        not isinstance(name, str)
        or not name
        or name in (".", "..")
        or "/" in name
        or "\\" in name
        or "\x00" in name
        or Path(name).is_absolute()
    ):
        raise ExportSchemaError(
            f"{what} names the file {name!r:.100}; an export may only name plain files inside "
            "its own folder."
        )
    path = folder / name
    if path.is_symlink():
        inside = folder.resolve()
        target = path.resolve()
        if inside not in target.parents and not _in_hub_blobs(folder, target):
            raise ExportSchemaError(
                f"{path} is a symlink that leaves the export folder; copy the real file into "
                "the export instead."
            )
    if path.exists() and not path.is_file():
        raise ExportSchemaError(f"{path} is not a regular file.")
    return path


def _in_hub_blobs(folder: Path, target: Path) -> bool:
    """A Hub cache snapshot (REPO/snapshots/COMMIT) links each file to REPO/blobs/HASH."""
    folder = folder.resolve()
    return folder.parent.name == "snapshots" and target.parent == folder.parent.parent / "blobs"


def read_json(path: Path, max_bytes: int = MAX_CONFIG_BYTES) -> Any:
    """Parse a JSON file of bounded size and depth, refusing NaN and Infinity."""
    size = path.stat().st_size
    if size > max_bytes:
        raise ExportSchemaError(
            f"{path} has {size} bytes, more than the {max_bytes} an export config may have."
        )
    try:
        with open(path, "rb") as handle:
            text = handle.read(max_bytes + 1).decode("utf-8")
        value = json.loads(text, parse_constant=_no_constant)
    except RecursionError as error:
        raise ExportSchemaError(f"{path} is nested too deeply to be an export config.") from error
    except (UnicodeDecodeError, ValueError) as error:
        raise ExportCorruptedError(
            f"{path} is not valid JSON ({str(error)[:200]}); the export is corrupted."
        ) from error
    check_depth(value, path.name)
    return value


def _no_constant(name: str) -> None:
    raise ValueError(f"{name} is not a JSON number")


def check_depth(value: Any, where: str, limit: int = MAX_JSON_DEPTH) -> None:
    """Raise when a JSON value nests deeper than `limit` (checked without recursion)."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > limit:
            raise ExportSchemaError(f"{where} nests deeper than {limit} levels.")
        if isinstance(item, dict):
            stack.extend((v, depth + 1) for v in item.values())
        elif isinstance(item, list):
            stack.extend((v, depth + 1) for v in item)
        elif isinstance(item, str) and len(item) > MAX_STRING:
            raise ExportSchemaError(f"{where} holds a string of {len(item)} characters.")


# ------------------------------------------------------------------- typed and bounded leaves


def whole(lo: int, hi: int) -> Callable[[Any], bool]:
    """An integer (not a bool) in [lo, hi]."""
    return lambda v: isinstance(v, int) and not isinstance(v, bool) and lo <= v <= hi


def real(lo: float = -math.inf, hi: float = math.inf) -> Callable[[Any], bool]:
    """A finite number (not a bool) in [lo, hi]."""
    return lambda v: (
        isinstance(v, (int, float))
        and not isinstance(v, bool)
        and math.isfinite(v)
        and lo <= v <= hi
    )


def text(max_len: int = 4096, pattern: str | None = None) -> Callable[[Any], bool]:
    """A string of at most `max_len` characters (matching `pattern` when given), no NUL."""
    compiled = re.compile(pattern) if pattern else None
    return lambda v: (
        isinstance(v, str)
        and len(v) <= max_len
        and "\x00" not in v
        and (compiled is None or compiled.fullmatch(v) is not None)
    )


def flag(v: Any) -> bool:
    return isinstance(v, bool)


def optional(check: Callable[[Any], bool]) -> Callable[[Any], bool]:
    return lambda v: v is None or check(v)


def one_of(*values: Any) -> Callable[[Any], bool]:
    return lambda v: v in values


def sizes(min_len: int, max_len: int, hi: int) -> Callable[[Any], bool]:
    """A list of min_len..max_len integers in [1, hi]."""
    item = whole(1, hi)
    return lambda v: isinstance(v, list) and min_len <= len(v) <= max_len and all(map(item, v))


def any_object(v: Any) -> bool:
    return isinstance(v, dict)


# ------------------------------------------------------------------------------ safetensors


def check_safetensors_header(path: Path) -> dict[str, Any]:
    """The parsed header of a safetensors file whose every entry fits the file exactly."""
    size = path.stat().st_size
    with open(path, "rb") as handle:
        head = handle.read(8)
        if len(head) < 8:
            raise _header_error(path, "the file is shorter than its 8-byte header length")
        (length,) = struct.unpack("<Q", head)
        if length > min(MAX_HEADER_BYTES, size - 8):
            raise _header_error(path, f"a header of {length} bytes does not fit the file")
        raw = handle.read(length)
    try:
        header = json.loads(raw.decode("utf-8"), parse_constant=_no_constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as error:
        raise _header_error(path, f"the header is not JSON ({str(error)[:100]})") from error
    if not isinstance(header, dict):
        raise _header_error(path, "the header is not a JSON object")
    metadata = header.get("__metadata__", {})
    if not isinstance(metadata, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()
    ):
        raise _header_error(path, "__metadata__ must map strings to strings")
    spans = []
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        spans.append(_tensor_span(path, name, entry))
    end = 0
    for start, stop in sorted(spans):
        if start != end:
            raise _header_error(path, "the tensors' data offsets overlap or leave gaps")
        end = stop
    if end != size - 8 - length:
        raise _header_error(path, "the tensors do not cover the file's data exactly")
    return header


def _tensor_span(path: Path, name: str, entry: Any) -> tuple[int, int]:
    if not isinstance(entry, dict) or entry.get("dtype") not in SAFETENSORS_DTYPES:
        raise _header_error(path, f"tensor {name!r:.80} has no known dtype")
    shape, offsets = entry.get("shape"), entry.get("data_offsets")
    if not (isinstance(shape, list) and len(shape) <= 8 and all(map(whole(0, 1 << 40), shape))):
        raise _header_error(path, f"tensor {name!r:.80} has an invalid shape")
    if not (
        isinstance(offsets, list) and len(offsets) == 2 and all(map(whole(0, 1 << 48), offsets))
    ):
        raise _header_error(path, f"tensor {name!r:.80} has invalid data offsets")
    start, stop = offsets
    if stop - start != math.prod(shape) * SAFETENSORS_DTYPES[entry["dtype"]]:
        raise _header_error(path, f"tensor {name!r:.80} does not match its data size")
    return start, stop


def _header_error(path: Path, why: str) -> ExportCorruptedError:
    return ExportCorruptedError(
        f"{path} cannot be read: it is not a valid safetensors file ({why}); the export is corrupted."
    )
