"""Silence a native library's writes to the process's stdout (file descriptor 1).

CBC as shipped with python-mip 2.0 (cbcbox) crashes in branch-and-bound when its log level is
0 (a null output handler in strong-branching statistics), so retrofit always runs it at log
level 1 and, when progress is off, points fd 1 at /dev/null for the duration of the solve.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def native_stdout_silenced(enabled: bool = True) -> Iterator[None]:
    """Redirect fd 1 to /dev/null inside the block (a no-op when not enabled)."""
    if not enabled:
        yield
        return
    sys.stdout.flush()
    saved = os.dup(1)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 1)
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)
        os.close(devnull)
