"""The gloo process group of one torchrun attempt, keyed apart from earlier attempts.

torchrun hands every attempt of a restarted job the same store; a restarted group that
read the last attempt's keys would try to connect to a dead rank's old port. Each
attempt's group therefore keeps its keys under ``{prefix}/attempt_{n}``.
"""

from __future__ import annotations

import os

import torch.distributed as dist


def init_attempt_group(prefix: str) -> None:
    """``dist.init_process_group("gloo")`` over this attempt's part of torchrun's store."""
    rank, size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    agent_store = os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True"
    base = dist.TCPStore(
        os.environ["MASTER_ADDR"],
        int(os.environ["MASTER_PORT"]),
        size,
        is_master=rank == 0 and not agent_store,
    )
    attempt = os.environ["TORCHELASTIC_RESTART_COUNT"]
    store = dist.PrefixStore(f"{prefix}/attempt_{attempt}", base)
    dist.init_process_group("gloo", store=store, rank=rank, world_size=size)
