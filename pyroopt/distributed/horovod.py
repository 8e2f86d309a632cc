"""HorovodOptimizer: pyro.optim's Horovod wrapper, with one allreduce per step."""

from __future__ import annotations

from typing import Any

import pyro.optim
import torch
from torch import Tensor

from pyroopt.distributed.collectives import Collectives
from pyroopt.distributed.reduce import DistributedPyroOptim
from pyroopt.distributed.torch_dist import delegate_inherited
from pyroopt.optim import PyroOptim


def _horovod() -> Any:
    try:
        import horovod.torch as hvd
    except ImportError as e:
        raise ImportError(
            "HorovodOptimizer needs horovod built with PyTorch support; horovod.torch "
            f"did not import ({e}). Run `python -m pyroopt.horovod_build` to build and "
            "install horovod 0.28.1 with PyTorch and Gloo against your torch"
        ) from e
    if not hvd.is_initialized():
        raise RuntimeError(
            "horovod is not initialized: call horovod.torch.init() in every worker before "
            "building a HorovodOptimizer (and launch the workers with horovodrun)"
        )
    return hvd


class HorovodCollectives(Collectives):
    """Collectives over horovod's global process set.

    The header and the gradients travel in ONE flat buffer and one in-place
    ``hvd.allreduce_`` (one tensor: no grouping, no second dtype to negotiate).

    :param compression: ``hvd.Compression.none`` or ``hvd.Compression.fp16``. With
        fp16, the gradients travel in float16 and the header in float64, in one
        ``hvd.grouped_allreduce`` of the two.
    """

    def __init__(self, compression: Any = None) -> None:
        self._hvd = hvd = _horovod()
        self.compression = hvd.Compression.none if compression is None else compression
        self.rank = int(hvd.rank())
        self.size = int(hvd.size())

    def refresh(self) -> None:
        """Horovod's rank and size after ``hvd.shutdown(); hvd.init()`` (an elastic reset)."""
        self.rank = int(self._hvd.rank())
        self.size = int(self._hvd.size())

    def allreduce_(self, buffer: Tensor, exact: int, name: str) -> None:
        hvd = self._hvd
        if self.compression is hvd.Compression.none or exact == buffer.numel():
            hvd.allreduce_(buffer, op=hvd.Sum, name=name)
            return
        # compressed: the header travels apart, in float64, in the same grouped call
        grads, ctx = self.compression.compress(buffer[exact:])
        header, reduced = hvd.grouped_allreduce(
            [buffer[:exact].to(torch.float64), grads], op=hvd.Sum, name=name
        )
        buffer[:exact].copy_(header)
        buffer[exact:].copy_(self.compression.decompress(reduced, ctx))

    def allgather_object(self, obj: Any) -> list[Any]:
        return list(self._hvd.allgather_object(obj, name="pyroopt.names"))

    def broadcast_object(self, obj: Any) -> Any:
        return self._hvd.broadcast_object(obj, root_rank=0, name="pyroopt.state")

    def broadcast_(self, flat: Tensor) -> None:
        self._hvd.broadcast_(flat, root_rank=0, name=f"pyroopt.values.{flat.dtype}")


class HorovodOptimizer(DistributedPyroOptim, PyroOptim, pyro.optim.HorovodOptimizer):
    """A drop-in :class:`pyro.optim.HorovodOptimizer`: one allreduce per step.

    An instance is a :class:`pyro.optim.HorovodOptimizer` and a :class:`pyroopt.PyroOptim`;
    what it does not define itself comes from the wrapped optimizer.

    pyro.optim wraps every parameter in its own ``horovod.torch.DistributedOptimizer``,
    so each step issues one allreduce per parameter. This wrapper reduces all of a
    step's gradients in a single in-place ``hvd.allreduce_`` of one flat buffer (in
    the order of the parameters' names, in the widest gradient dtype, at least
    float32), then steps the wrapped pyroopt optimizer locally. Parameters first seen
    in a step, and state given to :meth:`set_state` / :meth:`load`, are broadcast from
    rank 0, so all workers stay equal; workers that pass different parameters (names,
    shapes or dtypes) get a :class:`RuntimeError` naming the difference instead of a
    hang. A wrapped ``ReduceLROnPlateau`` decides on the mean of the workers' metrics
    (see :meth:`step`). See :mod:`pyroopt.distributed.reduce`.

    The keywords are those of ``horovod.torch.DistributedOptimizer`` that make sense
    here:

    :param pyro_optim: a pyroopt optimizer or scheduler, e.g. ``pyroopt.Adam(...)``.
    :param op: ``hvd.Average`` (default) or ``hvd.Sum``. ``hvd.Adasum`` raises
        :class:`ValueError`: horovod built with gloo and without MPI has no Adasum
        ("No Adasum operation enabled"), and Adasum cannot carry the sum-reduced
        header that keeps this wrapper to one collective.
    :param compression: ``hvd.Compression.none`` (default) or ``hvd.Compression.fp16``
        (the gradients travel in float16, the header apart in float64, in one
        ``hvd.grouped_allreduce``).
    :param gradient_predivide_factor: with ``hvd.Average``, scale by ``1 / f`` before
        the sum and by ``f / size`` after.
    :param backward_passes_per_step: accumulate gradients locally over this many calls
        and reduce and step on the last (see :meth:`__call__`).
    :param num_groups: accepted for compatibility; no effect (one buffer already).
    :param groups: accepted for compatibility; no effect (one buffer already).
    :param sparse_as_dense: accepted for compatibility; sparse gradients are rejected.
    :param process_set: only horovod's global process set is supported.

    Example (in a script launched with ``horovodrun -np 2 --gloo python train.py``)::

        import horovod.torch as hvd
        import pyro, pyroopt

        hvd.init()
        optim = pyroopt.HorovodOptimizer(pyroopt.Adam({"lr": 0.01}))
        svi = pyro.infer.SVI(model, guide, optim, pyro.infer.Trace_ELBO())
        data = pyroopt.distributed.shard(full_data)  # this worker's part
        for step in range(1000):
            svi.step(data)
        optim.save("optim.pt")  # written by rank 0 only

    Horovod's background thread starts each collective on its next cycle
    (``HOROVOD_CYCLE_TIME``, 1 ms by default, or ``horovodrun --cycle-time-ms``); on
    small CPU jobs that latency, not the bytes, is most of this wrapper's cost, and
    ``pyroopt.DistributedOptimizer`` on ``torch.distributed`` has none of it.
    """

    def __init__(
        self,
        pyro_optim: pyro.optim.PyroOptim,
        *,
        op: Any = None,
        compression: Any = None,
        gradient_predivide_factor: float = 1.0,
        backward_passes_per_step: int = 1,
        num_groups: int = 0,
        groups: Any = None,
        sparse_as_dense: bool = False,
        process_set: Any = None,
    ) -> None:
        hvd = _horovod()
        if op is None:
            op = hvd.Average
        if op == hvd.Adasum:
            raise ValueError(
                "op=hvd.Adasum is not supported by pyroopt.HorovodOptimizer: horovod's gloo "
                "backend has no Adasum on CPU, and Adasum cannot carry the sum-reduced "
                "consistency header of pyroopt's single collective; use hvd.Average or "
                "hvd.Sum"
            )
        if op not in (hvd.Average, hvd.Sum):
            raise ValueError(f"op must be hvd.Average or hvd.Sum, got {op!r}")
        if process_set is not None and process_set is not hvd.global_process_set:
            raise ValueError("HorovodOptimizer supports only horovod's global process set")
        if compression is not None and not (
            hasattr(compression, "compress") and hasattr(compression, "decompress")
        ):
            raise TypeError(
                f"compression must be hvd.Compression.none or hvd.Compression.fp16, got "
                f"{compression!r}"
            )
        super().__init__(
            pyro_optim,
            HorovodCollectives(compression),
            average=op == hvd.Average,
            gradient_predivide_factor=gradient_predivide_factor,
            backward_passes_per_step=backward_passes_per_step,
        )
        self.op = op
        self.compression = self._comm.compression  # type: ignore[attr-defined]


delegate_inherited(HorovodOptimizer, PyroOptim, pyro.optim.HorovodOptimizer)
