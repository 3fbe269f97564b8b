"""Replace an export folder whole: write a staging sibling, swap it in, recover a killed swap."""

from __future__ import annotations

import logging
import os
import shutil
import socket
import uuid
from pathlib import Path

from retrofit.errors import ExportError
from retrofit.export.layout import CONFIG_FILE, EXPORT_FILES, MODEL_FILE

logger = logging.getLogger(__name__)


def check_save_target(target: Path, overwrite: bool) -> None:
    """Refuse a target that is a file, holds files no export has, or holds export-named
    files without being an export (a user's own README.md) unless overwrite=True."""
    if target.exists() and not target.is_dir():
        raise ExportError(f"{target} exists and is not a folder; pick a folder path to save to.")
    if not target.is_dir():
        return
    names = set(os.listdir(target))
    foreign = sorted(names - EXPORT_FILES)
    if foreign:
        raise ExportError(
            f"Saving replaces the whole folder {target}, which holds other files "
            f"({', '.join(foreign[:5])}{', ...' if len(foreign) > 5 else ''}); save into "
            "an empty or new folder."
        )
    if names and CONFIG_FILE not in names and not overwrite:
        raise ExportError(
            f"{target} holds {', '.join(sorted(names))} but is not a retrofit export; pass "
            "overwrite=True (CLI: --overwrite) to replace them, or save into another folder."
        )


def recover_interrupted_save(target: Path) -> Path | None:
    """Move back the previous export that a save killed between its two renames left at
    `.NAME.old-*`, when `target` itself is missing; returns the restored folder or None."""
    if target.exists() or not target.parent.is_dir():
        return None
    for old in sorted(target.parent.glob(f".{target.name}.old-*"), key=_mtime, reverse=True):
        if not (old.is_dir() and (old / CONFIG_FILE).is_file() and (old / MODEL_FILE).is_file()):
            continue
        try:
            os.rename(old, target)
        except OSError:  # another process restored or saved it first
            return target if target.is_dir() else None
        logger.warning("restored %s from %s, left there by an interrupted save", target, old.name)
        return target
    return None


def owner_tag() -> str:
    """host~pid of this process, so a later save can tell a killed save's leftovers."""
    return f"{socket.gethostname().replace('.', '_')}~{os.getpid()}"


def remove_dead_stagings(target: Path) -> None:
    """Delete staging folders of saves on this host whose process no longer exists."""
    host = owner_tag().split("~")[0]
    for staging in target.parent.glob(f".{target.name}.saving-{host}~*-*"):
        pid = staging.name.rsplit("~", 1)[1].split("-", 1)[0]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(staging, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, owned by someone else
        return True
    return True


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


def swap_in(staging: Path, target: Path) -> None:
    """Rename any old export aside, the new one in, then delete the old one."""
    old = target.parent / f".{target.name}.old-{uuid.uuid4().hex}"
    if target.exists():
        os.replace(target, old)
    try:
        os.replace(staging, target)
    except OSError as error:
        if old.exists() and not target.exists():
            os.replace(old, target)
        raise ExportError(
            f"Could not move the new export into {target} ({error.strerror or error}); another "
            "process may have saved there at the same time. The previous export is kept."
        ) from error
    fsync(target.parent)
    shutil.rmtree(old, ignore_errors=True)
    for leftover in target.parent.glob(f".{target.name}.old-*"):  # superseded by a kill -9
        shutil.rmtree(leftover, ignore_errors=True)


def fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
