"""Head methods, one file each; importing this package registers them all."""

from retrofit.heads import dense, flint, qpm, qsenn, sparse
from retrofit.heads.base import (
    HeadResult,
    available_heads,
    get_head,
    register_head,
    unregister_head,
)

__all__ = [
    "HeadResult",
    "available_heads",
    "dense",
    "flint",
    "get_head",
    "qpm",
    "qsenn",
    "register_head",
    "sparse",
    "unregister_head",
]
