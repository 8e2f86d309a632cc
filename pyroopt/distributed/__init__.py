"""Data-parallel training: gradients of a step reduced in one collective.

- :class:`HorovodOptimizer` — horovod (``hvd.grouped_allreduce``), a drop-in for
  :class:`pyro.optim.HorovodOptimizer`.
- :class:`DistributedOptimizer` — ``torch.distributed`` (one flat ``all_reduce``).
- :func:`shard` — this worker's part of the data.

Horovod is imported only when a :class:`HorovodOptimizer` is built.
"""

from pyroopt.distributed.data import shard, shard_bounds, world
from pyroopt.distributed.horovod import HorovodOptimizer
from pyroopt.distributed.reduce import DistributedPyroOptim
from pyroopt.distributed.torch_dist import DistributedOptimizer

__all__ = [
    "DistributedOptimizer",
    "DistributedPyroOptim",
    "HorovodOptimizer",
    "shard",
    "shard_bounds",
    "world",
]
