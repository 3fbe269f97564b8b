"""Process groups for the distributed tests: Gloo over the loopback interface only."""

from __future__ import annotations

import socket
from datetime import timedelta

import torch.distributed as dist


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def join_gloo(rank: int, world: int, port: int) -> None:
    """Join a Gloo group on 127.0.0.1; a peer that dies is noticed within 20 s, not hung on."""
    dist.init_process_group(
        "gloo",
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=world,
        timeout=timedelta(seconds=20),
    )
