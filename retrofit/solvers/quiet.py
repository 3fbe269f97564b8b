"""Keep the MIP solvers' own output off the terminal, and print retrofit's one-line summaries.

CBC and HiGHS write their logs from C to the process's stdout (file descriptor 1), where
Python's `sys.stdout` cannot catch them; HiGHS prints its banner as soon as a model is set up.
CBC as shipped with python-mip 2.0 (cbcbox) crashes in branch-and-bound when its log level is
0 (a null output handler in strong-branching statistics), so retrofit always runs it at log
level 1 and instead points fds 1 and 2 at /dev/null around every native call, unless the
solver log was asked for (`RetrofitConfig.solver_log`, `--solver-log` on the command line).
What retrofit itself reports goes to stderr as one line per solve, when progress is on.
"""

from __future__ import annotations

import ctypes
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager, suppress

_shown = False  # solver_log_shown() turns the solver log on for solves without a config


@contextmanager
def solver_log_shown(show: bool = True) -> Iterator[None]:
    """Show the solver log of every solve inside the block (for callers that pass no config,
    such as the edit re-solve)."""
    global _shown
    previous, _shown = _shown, bool(show) or _shown
    try:
        yield
    finally:
        _shown = previous


def solver_log_wanted(requested: bool = False) -> bool:
    """Whether the solver's native log should reach the terminal."""
    return bool(requested) or _shown


@contextmanager
def solver_output(show: bool = False) -> Iterator[None]:
    """Around native solver calls: fds 1 and 2 go to /dev/null unless `show`. C's stdio
    buffers are flushed on the way out either way, so no buffered log leaks out later."""
    if show:
        try:
            yield
        finally:
            _flush_c_stdio()
        return
    for stream in (sys.stdout, sys.stderr):
        _flush(stream)
    saved = [os.dup(1), os.dup(2)]
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 1)
        os.dup2(devnull, 2)
        yield
    finally:
        _flush_c_stdio()
        for stream in (sys.stdout, sys.stderr):
            _flush(stream)
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in (*saved, devnull):
            os.close(fd)


def progress_line(text: str) -> None:
    """One line of retrofit's own progress on stderr, kept clear of any tqdm bar."""
    from tqdm.auto import tqdm

    tqdm.write(text, file=sys.stderr)


def _flush(stream: object) -> None:
    with suppress(AttributeError, OSError, ValueError):  # a closed or replaced stream
        stream.flush()  # type: ignore[attr-defined]


def _flush_c_stdio() -> None:
    """fflush(NULL): what CBC or HiGHS left in C's stdout buffer goes where fd 1 points now."""
    with suppress(OSError, AttributeError, TypeError):  # no C library to ask (e.g. Windows)
        ctypes.CDLL(None).fflush(None)
