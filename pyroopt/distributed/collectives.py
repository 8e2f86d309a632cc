"""The collectives a distributed optimizer needs, whatever carries the bytes.

One subclass per backend: :class:`~pyroopt.distributed.horovod.HorovodCollectives`
and :class:`~pyroopt.distributed.torch_dist.TorchCollectives`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import torch
from torch import Tensor


class Collectives(ABC):
    """How workers talk: one sum-reduction, object gather/broadcast, tensor broadcast.

    Subclasses set ``rank`` and ``size``. Every method is collective: all workers call
    it, in the same order.

    Example: a single worker talking to itself, enough to run a
    :class:`~pyroopt.distributed.DistributedPyroOptim` in one process::

        >>> import pyro, torch, pyroopt
        >>> from pyroopt.distributed import DistributedPyroOptim
        >>> class Loopback(Collectives):
        ...     rank, size = 0, 1
        ...     def allreduce_(self, buffer, exact, name): pass
        ...     def allgather_object(self, obj): return [obj]
        ...     def broadcast_object(self, obj): return obj
        ...     def broadcast_(self, flat): pass
        >>> pyro.clear_param_store()
        >>> x = pyro.param("x", torch.ones(2)).unconstrained()
        >>> optim = DistributedPyroOptim(pyroopt.SGD({"lr": 0.5}), Loopback())
        >>> x.grad = torch.ones(2)
        >>> optim([x])
        >>> x
        tensor([0.5000, 0.5000], requires_grad=True)
        >>> optim.last_collectives  # reduce, gather names, broadcast new values, reduce
        4
        >>> x.grad = torch.ones(2)
        >>> optim([x])
        >>> optim.last_collectives  # a steady step
        1
    """

    rank: int
    size: int
    #: where buffers that hold no gradient (the metric of a plateau schedule, the
    #: header of an empty step) live: the CPU, or the GPU for nccl
    device: torch.device = torch.device("cpu")

    @abstractmethod
    def allreduce_(self, buffer: Tensor, exact: int, name: str) -> None:
        """Sum the 1-D ``buffer`` over all workers, in place, in ONE collective.

        The first ``exact`` entries must come back exactly (they hold small integers:
        the consistency header); the rest may travel compressed.
        ``name`` is equal on all workers for buffers of equal layout.
        """

    @abstractmethod
    def allgather_object(self, obj: Any) -> list[Any]:
        """Every worker's ``obj``, by rank."""

    @abstractmethod
    def broadcast_object(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every worker."""

    @abstractmethod
    def broadcast_(self, flat: Tensor) -> None:
        """Overwrite ``flat`` with rank 0's ``flat``, in place."""

    def refresh(self) -> None:  # noqa: B027 - optional: most backends' worlds never change
        """Read ``rank`` and ``size`` again after the workers changed (an elastic reset).

        The default keeps them: a backend whose world cannot change needs nothing.
        """

    def mean(self, value: float, name: str) -> float:
        """The mean of ``value`` over all workers: one float64 sum-reduction.

        Every worker gets the same bits (the sum is computed once per element and
        shared), so decisions taken on the answer agree across workers.
        """
        buffer = torch.tensor([float(value)], dtype=torch.float64, device=self.device)
        self.allreduce_(buffer, 1, name)
        return float(buffer.item()) / self.size
