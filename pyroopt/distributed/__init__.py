"""Data-parallel training: gradients of a step reduced in one collective.

- :class:`HorovodOptimizer` — horovod (one ``hvd.allreduce_`` of one flat buffer per
  step), a drop-in for :class:`pyro.optim.HorovodOptimizer`.
- :class:`DistributedOptimizer` — ``torch.distributed`` (one flat ``all_reduce``).
- :func:`shard` — this worker's part of the data.
- :class:`ElasticState` — commit, restore and sync Pyro training when workers die
  or join (horovod elastic, torchrun ``--nnodes MIN:MAX``).

Modules: :mod:`~pyroopt.distributed.reduce` (the shared wrapper),
:mod:`~pyroopt.distributed.buffer` (the flat buffer a step travels in),
:mod:`~pyroopt.distributed.layout` (parameters by name, mismatch messages),
:mod:`~pyroopt.distributed.schedule` (schedules, the averaged plateau metric),
:mod:`~pyroopt.distributed.collectives` (what a backend provides),
:mod:`~pyroopt.distributed.elastic` (elastic training).

Horovod is imported only when a :class:`HorovodOptimizer` is built.
"""

from pyroopt.distributed.collectives import Collectives
from pyroopt.distributed.data import shard, shard_bounds, world
from pyroopt.distributed.elastic import ElasticState, read_commit
from pyroopt.distributed.horovod import HorovodOptimizer
from pyroopt.distributed.reduce import DistributedPyroOptim
from pyroopt.distributed.torch_dist import DistributedOptimizer

__all__ = [
    "Collectives",
    "DistributedOptimizer",
    "DistributedPyroOptim",
    "ElasticState",
    "HorovodOptimizer",
    "read_commit",
    "shard",
    "shard_bounds",
    "world",
]
