"""DistributedOptimizer: the same one-collective reduction on ``torch.distributed``."""

from __future__ import annotations

from typing import Any

import pyro.optim
import torch
import torch.distributed as dist
from torch import Tensor

from pyroopt.distributed.collectives import Collectives
from pyroopt.distributed.reduce import DistributedPyroOptim
from pyroopt.optim import PyroOptim


# An attribute that a wrapper's class inherits from a class it derives from only to pass
# ``isinstance`` checks, read from the wrapped optimizer instead (what ``__getattr__``
# would do without the inheritance). No docstring: the docs list no such attribute.
class _Delegated:
    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __get__(self, obj: Any, objtype: Any = None) -> Any:
        if obj is None:
            return self
        return getattr(obj._optim, self.name)


def delegate_inherited(cls: type, *facades: type) -> type:
    """Make ``cls`` (a :class:`DistributedPyroOptim` that also derives from ``facades``,
    for ``isinstance``) read every attribute that ``facades`` and their bases define, and
    the wrapper's own classes do not, from the wrapped optimizer. Returns ``cls``."""
    borrowed = [
        k for k in cls.__mro__ if k is not object and any(issubclass(f, k) for f in facades)
    ]
    own = {name for k in cls.__mro__ if k not in borrowed for name in vars(k)}
    for name in {name for k in borrowed for name in vars(k)} - own:
        if not (name.startswith("__") and name.endswith("__")):
            setattr(cls, name, _Delegated(name))
    return cls


class TorchCollectives(Collectives):
    """Collectives over a ``torch.distributed`` process group (gloo on CPU).

    The header and every gradient travel in ONE flat buffer and one in-place
    ``all_reduce``; the buffer takes the widest gradient dtype, at least float32.
    """

    def __init__(self, process_group: Any = None) -> None:
        if not (dist.is_available() and dist.is_initialized()):
            raise RuntimeError(
                "torch.distributed is not initialized: call "
                "torch.distributed.init_process_group('gloo') in every worker (e.g. "
                "launched with torchrun) before building a DistributedOptimizer"
            )
        self.group = process_group
        self.rank = int(dist.get_rank(process_group))
        self.size = int(dist.get_world_size(process_group))
        if self.rank < 0:
            raise ValueError("this process is not a member of the given process_group")
        # collectives name their source by global rank
        self._root = 0 if process_group is None else dist.get_global_rank(process_group, 0)
        if dist.get_backend(process_group) == "nccl":  # it reduces CUDA tensors only
            self.device = torch.device("cuda", torch.cuda.current_device())

    def refresh(self) -> None:
        """The group's rank and size as ``torch.distributed`` reports them now."""
        self.rank = int(dist.get_rank(self.group))
        self.size = int(dist.get_world_size(self.group))

    def allreduce_(self, buffer: Tensor, exact: int, name: str) -> None:
        dist.all_reduce(buffer, op=dist.ReduceOp.SUM, group=self.group)

    def allgather_object(self, obj: Any) -> list[Any]:
        out: list[Any] = [None] * self.size
        dist.all_gather_object(out, obj, group=self.group)
        return out

    def broadcast_object(self, obj: Any) -> Any:
        box = [obj]
        dist.broadcast_object_list(box, src=self._root, group=self.group)
        return box[0]

    def broadcast_(self, flat: Tensor) -> None:
        dist.broadcast(flat, src=self._root, group=self.group)


_OPS = {"average": True, "avg": True, "mean": True, "sum": False}


class DistributedOptimizer(DistributedPyroOptim, PyroOptim):
    """Wrap a pyroopt optimizer for data-parallel training on ``torch.distributed``.

    An instance is a :class:`pyroopt.PyroOptim` (and so a :class:`pyro.optim.PyroOptim`);
    what it does not define itself comes from the wrapped optimizer.

    Each call copies all gradients of the step, in the order of the parameters'
    names, into one flat buffer (kept from step to step), issues one in-place
    ``all_reduce``, divides by the number of workers (for ``op="average"``) and points
    each ``p.grad`` at its reduced part before the wrapped optimizer steps. Parameters
    first seen in a step, and state given to :meth:`set_state` / :meth:`load`, are
    broadcast from rank 0; workers that pass different parameters (names, shapes or
    dtypes) get a :class:`RuntimeError` naming the difference instead of a hang. A
    wrapped ``ReduceLROnPlateau`` decides on the mean of the workers' metrics (see
    :meth:`step`). See :mod:`pyroopt.distributed.reduce`.

    :param pyro_optim: a pyroopt optimizer or scheduler, e.g. ``pyroopt.Adam(...)``.
    :param process_group: the group to reduce over; ``None`` is the default group.
    :param op: ``"average"`` (default) or ``"sum"``; ``dist.ReduceOp.AVG`` /
        ``dist.ReduceOp.SUM`` also work.
    :param gradient_predivide_factor: with ``"average"``, scale by ``1 / f`` before
        the sum and by ``f / size`` after.
    :param backward_passes_per_step: accumulate gradients locally over this many calls
        and reduce and step on the last (see :meth:`__call__`).

    Example (in a script launched with ``torchrun --nproc_per_node 2 train.py``)::

        import torch.distributed as dist
        import pyro, pyroopt

        dist.init_process_group("gloo")
        optim = pyroopt.DistributedOptimizer(pyroopt.Adam({"lr": 0.01}))
        svi = pyro.infer.SVI(model, guide, optim, pyro.infer.Trace_ELBO())
        data = pyroopt.distributed.shard(full_data)  # this worker's part
        for step in range(1000):
            svi.step(data)
        optim.save("optim.pt")  # written by rank 0 only
    """

    def __init__(
        self,
        pyro_optim: pyro.optim.PyroOptim,
        process_group: Any = None,
        *,
        op: Any = "average",
        gradient_predivide_factor: float = 1.0,
        backward_passes_per_step: int = 1,
    ) -> None:
        if isinstance(op, dist.ReduceOp.RedOpType) or type(op).__name__ == "RedOpType":
            average = {dist.ReduceOp.AVG: True, dist.ReduceOp.SUM: False}.get(op)
        else:
            average = _OPS.get(str(op).lower()) if isinstance(op, str) else None
        if average is None:
            raise ValueError(f"op must be 'average' or 'sum', got {op!r}")
        super().__init__(
            pyro_optim,
            TorchCollectives(process_group),
            average=average,
            gradient_predivide_factor=gradient_predivide_factor,
            backward_passes_per_step=backward_passes_per_step,
        )
        self.process_group = process_group


delegate_inherited(DistributedOptimizer, PyroOptim)
