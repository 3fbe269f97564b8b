"""Head methods, one folder each (`methods/<name>/`), registered in `retrofit.registry.HEADS`.

A method folder holds everything the method owns: its head (`head.py`, which registers it),
its solver program, settings and metrics. `base` is the contract every head meets
(`HeadResult`, `register_head`, `get_head`); `prior` the per-class feature priors heads share.
Importing this package imports no method: the registry imports one on first use. The
contract's names are read from `base` lazily, as the old `retrofit.heads` package offered them.
"""

from __future__ import annotations

from typing import Any

_FROM_BASE = {"HeadResult", "available_heads", "get_head", "register_head", "unregister_head"}


def __getattr__(name: str) -> Any:
    if name in _FROM_BASE:
        from retrofit.methods import base

        return getattr(base, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
