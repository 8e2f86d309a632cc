"""HorovodOptimizer: pyro.optim's Horovod wrapper, with one grouped allreduce per step."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pyro.optim
import torch
from torch import Tensor

from pyroopt.distributed.reduce import Collectives, DistributedPyroOptim


def _horovod() -> Any:
    try:
        import horovod.torch as hvd
    except ImportError as e:
        raise ImportError(
            "HorovodOptimizer needs horovod built with PyTorch support "
            "(HOROVOD_WITH_PYTORCH=1 pip install horovod)"
        ) from e
    if not hvd.is_initialized():
        raise RuntimeError(
            "horovod is not initialized: call horovod.torch.init() in every worker before "
            "building a HorovodOptimizer (and launch the workers with horovodrun)"
        )
    return hvd


class HorovodCollectives(Collectives):
    """Collectives over horovod's global process set.

    :param compression: ``hvd.Compression.none`` or ``hvd.Compression.fp16``; applied to
        the gradients only (the header always travels in float64).
    """

    def __init__(self, compression: Any = None) -> None:
        self._hvd = hvd = _horovod()
        self.compression = hvd.Compression.none if compression is None else compression
        self.rank = int(hvd.rank())
        self.size = int(hvd.size())

    def allreduce_sum(
        self,
        header: Tensor,
        groups: Sequence[Sequence[Tensor]],
        prescale: float,
        postscale: float,
        name: str,
    ) -> tuple[Tensor, list[Tensor]]:
        hvd = self._hvd
        tensors = [header]
        contexts = []
        for group in groups:
            flat = torch.cat(list(group))
            if prescale != 1.0:
                flat.mul_(prescale)
            compressed, ctx = self.compression.compress(flat)
            tensors.append(compressed)
            contexts.append(ctx)
        out = hvd.grouped_allreduce(tensors, op=hvd.Sum, name=name)
        flats = []
        for reduced, ctx in zip(out[1:], contexts, strict=True):
            flat = self.compression.decompress(reduced, ctx)
            if postscale != 1.0:
                flat.mul_(postscale)
            flats.append(flat)
        return out[0], flats

    def allgather_object(self, obj: Any) -> list[Any]:
        return list(self._hvd.allgather_object(obj, name="pyroopt.names"))

    def broadcast_object(self, obj: Any) -> Any:
        return self._hvd.broadcast_object(obj, root_rank=0, name="pyroopt.state")

    def broadcast_(self, flat: Tensor) -> None:
        self._hvd.broadcast_(flat, root_rank=0, name=f"pyroopt.values.{flat.dtype}")


class HorovodOptimizer(DistributedPyroOptim):
    """A drop-in :class:`pyro.optim.HorovodOptimizer`: one grouped allreduce per step.

    pyro.optim wraps every parameter in its own ``horovod.torch.DistributedOptimizer``,
    so each step issues one allreduce per parameter. This wrapper reduces all of a
    step's gradients in a single ``hvd.grouped_allreduce`` (one flat buffer per
    dtype, in the order of the parameters' names), then steps the wrapped pyroopt
    optimizer locally. Parameters first seen in a step, and state given to
    :meth:`set_state` / :meth:`load`, are broadcast from rank 0, so all workers stay
    equal; workers that pass different parameters get a :class:`RuntimeError` naming
    the difference instead of a hang. See :mod:`pyroopt.distributed.reduce`.

    The keywords are those of ``horovod.torch.DistributedOptimizer`` that make sense
    here:

    :param pyro_optim: a pyroopt optimizer or scheduler, e.g. ``pyroopt.Adam(...)``.
    :param op: ``hvd.Average`` (default) or ``hvd.Sum``. ``hvd.Adasum`` raises
        :class:`ValueError`: horovod's gloo backend has no Adasum on CPU ("No Adasum
        operation enabled"), and Adasum cannot carry the sum-reduced header that
        keeps this wrapper to one collective.
    :param compression: ``hvd.Compression.none`` (default) or ``hvd.Compression.fp16``.
    :param gradient_predivide_factor: with ``hvd.Average``, scale by ``1 / f`` before
        the sum and by ``f / size`` after.
    :param backward_passes_per_step: accumulate gradients locally over this many calls
        and reduce and step on the last (see :meth:`__call__`).
    :param num_groups: accepted for compatibility; no effect (one group already).
    :param groups: accepted for compatibility; no effect (one group already).
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
