"""Split data between workers: each rank takes one contiguous block."""

from __future__ import annotations

import os
from typing import overload

from torch import Tensor


def world() -> tuple[int, int]:
    """``(rank, world_size)`` of this worker, from horovod or ``torch.distributed``.

    Asks an initialized horovod first, then an initialized default process group, then
    the environment a launcher sets (``HOROVOD_RANK``/``HOROVOD_SIZE`` or
    ``RANK``/``WORLD_SIZE``).
    """
    try:
        import horovod.torch as hvd

        if hvd.is_initialized():
            return int(hvd.rank()), int(hvd.size())
    except ImportError:
        pass
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    for rank_key, size_key in (("HOROVOD_RANK", "HOROVOD_SIZE"), ("RANK", "WORLD_SIZE")):
        if rank_key in os.environ and size_key in os.environ:
            return int(os.environ[rank_key]), int(os.environ[size_key])
    raise ValueError(
        "cannot tell this worker's rank: initialize horovod or torch.distributed, or pass "
        "rank= and world_size="
    )


def shard_bounds(n: int, rank: int, world_size: int) -> tuple[int, int]:
    """``[start, stop)`` of ``rank``'s block when ``n`` items are split in order.

    Blocks differ in length by at most one; the first ``n % world_size`` ranks take
    the longer ones.
    """
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
    if n < 0:
        raise ValueError(f"cannot split a negative number of items ({n})")
    base, extra = divmod(n, world_size)
    start = rank * base + min(rank, extra)
    return start, start + base + (rank < extra)


@overload
def shard(data: int, rank: int | None = None, world_size: int | None = None) -> range: ...


@overload
def shard(data: Tensor, rank: int | None = None, world_size: int | None = None) -> Tensor: ...


def shard(
    data: int | Tensor, rank: int | None = None, world_size: int | None = None
) -> range | Tensor:
    """This worker's part of ``data``: a block of rows of a tensor, or of ``range(n)``.

    Unlike ``torch.utils.data.DistributedSampler`` the split is contiguous and not
    padded, so every item is used exactly once; blocks differ in length by at most
    one. To have averaged gradients equal the full-batch gradient, scale each
    worker's likelihood by ``full size / block size`` (a ``pyro.plate`` with
    ``size=n`` and ``subsample=`` the block does it).

    :param data: a tensor (split along its first dimension) or a number of items.
    :param rank: this worker's rank; by default from horovod / ``torch.distributed``.
    :param world_size: the number of workers; by default likewise.

    Example::

        >>> import torch
        >>> shard(torch.arange(5), rank=0, world_size=2)
        tensor([0, 1, 2])
        >>> shard(5, rank=1, world_size=2)
        range(3, 5)
    """
    if rank is None or world_size is None:
        found_rank, found_size = world()
        rank = found_rank if rank is None else rank
        world_size = found_size if world_size is None else world_size
    if isinstance(data, Tensor):
        if data.dim() == 0:
            raise ValueError("cannot shard a 0-dimensional tensor")
        start, stop = shard_bounds(data.shape[0], rank, world_size)
        return data[start:stop]
    if isinstance(data, bool) or not isinstance(data, int):
        raise TypeError(f"data must be a tensor or a number of items, got {type(data).__name__}")
    start, stop = shard_bounds(data, rank, world_size)
    return range(start, stop)
