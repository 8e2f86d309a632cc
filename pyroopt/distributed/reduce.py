"""One reduction of all of a step's gradients, whatever carries the bytes.

:class:`DistributedPyroOptim` is the part :class:`~pyroopt.HorovodOptimizer` and
:class:`~pyroopt.DistributedOptimizer` share; a
:class:`~pyroopt.distributed.collectives.Collectives` object says how the bytes move.

Every step issues **one** sum-reduction of one flat buffer (see
:mod:`pyroopt.distributed.buffer`) that carries, beside the gradients, a small header:
each worker's row (whether its set of parameters changed since the last agreed set,
how many parameters it passes, a 64-bit hash of their names) and, per parameter, how
many workers hold a gradient for it.

The gradients travel in the layout of the last set of parameters all workers agreed
on, so the reduction has the same shape on every worker even when a worker's
parameters changed. When the rows disagree, or any worker's set changed, all workers
see it in the same reduced header and take the slow path together: they gather each
other's names, shapes and dtypes, raise a :class:`RuntimeError` naming the difference
if they disagree, else broadcast the values of new parameters from rank 0 and reduce
again in the new layout. A steady step (the same parameters as the step before, as in
SVI) costs exactly one collective, and its buffer, views and header are reused.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterable, Mapping
from typing import Any

import pyro.optim
import torch
from torch import Tensor

from pyroopt import checkpoint
from pyroopt.distributed.buffer import GradBuffer
from pyroopt.distributed.collectives import Collectives
from pyroopt.distributed.layout import EMPTY, Layout, describe_mismatch, make_layout
from pyroopt.distributed.schedule import step_schedule
from pyroopt.optim import PyroOptim

__all__ = ["DistributedPyroOptim"]


class DistributedPyroOptim(pyro.optim.PyroOptim):
    """A pyroopt optimizer whose gradients are reduced over workers before each step.

    Holds the wrapped :class:`~pyroopt.PyroOptim` (or
    :class:`~pyroopt.PyroLRScheduler`) and delegates every attribute it does not define
    to it (``optim_objs``, ``get_last_lr`` of a scheduler, ...). It is a
    :class:`pyro.optim.PyroOptim`, so :class:`pyro.infer.SVI` accepts it.

    After a step, each ``p.grad`` is a view of a buffer the next step reuses (clone it
    to keep it); SVI replaces the gradients with fresh zeros anyway.

    :param pyro_optim: the optimizer to wrap.
    :param collectives: how workers talk (see the subclasses).
    :param average: divide the summed gradients by the number of workers.
    :param gradient_predivide_factor: with ``average``, multiply by
        ``1 / gradient_predivide_factor`` before the sum and by
        ``gradient_predivide_factor / size`` after (as horovod does, to keep low
        precision sums in range).
    :param backward_passes_per_step: reduce and step on every k-th call only; see
        :meth:`__call__`.
    """

    def __init__(
        self,
        pyro_optim: pyro.optim.PyroOptim,
        collectives: Collectives,
        *,
        average: bool = True,
        gradient_predivide_factor: float = 1.0,
        backward_passes_per_step: int = 1,
    ) -> None:
        # pyro.optim.PyroOptim.__init__ is not called: this class only delegates.
        if not isinstance(pyro_optim, PyroOptim):
            raise TypeError(
                "a distributed optimizer wraps a pyroopt optimizer (e.g. pyroopt.Adam(...) "
                f"or a pyroopt scheduler), got {type(pyro_optim).__name__}"
            )
        if isinstance(pyro_optim, DistributedPyroOptim):
            raise TypeError("this optimizer is already distributed; do not wrap it twice")
        if isinstance(gradient_predivide_factor, bool) or not (
            isinstance(gradient_predivide_factor, (int, float)) and gradient_predivide_factor > 0
        ):
            raise ValueError(
                f"gradient_predivide_factor must be a positive number, got "
                f"{gradient_predivide_factor!r}"
            )
        if gradient_predivide_factor != 1.0 and not average:
            raise ValueError("gradient_predivide_factor is only supported when averaging")
        if (
            isinstance(backward_passes_per_step, bool)
            or not isinstance(backward_passes_per_step, int)
            or backward_passes_per_step < 1
        ):
            raise ValueError(
                f"backward_passes_per_step must be an integer >= 1, got "
                f"{backward_passes_per_step!r}"
            )
        self._optim = pyro_optim
        self._comm = collectives
        self.average = average
        self.gradient_predivide_factor = float(gradient_predivide_factor)
        self.backward_passes_per_step = backward_passes_per_step
        #: how many collectives the last call issued (1 on a steady step)
        self.last_collectives = 0
        self._start_world()

    def _start_world(self) -> None:
        """Scales, agreed layout, buffer and gradient window for the current workers."""
        comm = self._comm
        f, size = self.gradient_predivide_factor, comm.size
        self._prescale, self._postscale = (1.0 / f, f / size) if self.average else (1.0, 1.0)
        self._agreed: Layout = EMPTY  # the last layout all workers agreed on
        self._current: Layout | None = None  # the layout of the last call, cached
        # of the agreed layout
        self._buffer = GradBuffer(EMPTY, comm.rank, size, comm.device)
        self._synced: dict[int, Tensor] = {}  # parameters already equal on all workers
        self._calls = 0
        self._window: dict[int, Tensor] = {}  # accumulated gradients, by id(param)
        self._window_params: dict[int, Tensor] = {}

    def reset_world(self) -> None:
        """Start over with the workers present now, after an elastic reset.

        Reads the rank and the number of workers again (an average then divides by the
        live count), forgets the agreed parameters (the next step agrees anew and
        broadcasts rank 0's values) and drops gradients accumulated in an open
        ``backward_passes_per_step`` window. The wrapped optimizer's state stays.
        :class:`~pyroopt.distributed.ElasticState` calls it on every reset; call it
        yourself after re-initializing the backend by hand.
        """
        self._comm.refresh()
        self._start_world()

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or name in ("_optim", "_comm"):
            raise AttributeError(name)
        return getattr(self._optim, name)

    @property
    def rank(self) -> int:
        """This worker's rank."""
        return self._comm.rank

    @property
    def size(self) -> int:
        """The number of workers."""
        return self._comm.size

    @property
    def wrapped(self) -> pyro.optim.PyroOptim:
        """The local optimizer that steps the parameters."""
        return self._optim

    # -- stepping ---------------------------------------------------------------------
    def __call__(self, params: Iterable[Tensor], *args: Any, **kwargs: Any) -> None:
        """Reduce the gradients of ``params`` over all workers, then step them locally.

        Every worker must call this with the same parameters (by name, shape and
        dtype). Parameters this optimizer has not seen before are first overwritten
        with rank 0's values.

        With ``backward_passes_per_step=k > 1``, calls 1 to k-1 of each window only add
        a copy of each ``p.grad`` to a sum the optimizer holds; they leave ``p.grad``
        as it is (SVI then zeroes it) and step nothing. Call k sets each ``p.grad`` of
        every parameter passed during the window to that sum plus its own gradient
        (the sum of the k passes, as horovod's ``backward_passes_per_step`` sums,
        not their mean), reduces over workers and steps.
        """
        if isinstance(params, Tensor) or not isinstance(params, Iterable):
            raise TypeError(
                f"params must be an iterable of tensors (e.g. a list or set), got "
                f"{type(params).__name__}"
            )
        params = list(params)
        if self.backward_passes_per_step > 1:
            self._accumulate(list({id(p): p for p in params}.values()))  # each once
            self._calls += 1
            if self._calls % self.backward_passes_per_step:
                self.last_collectives = 0
                return
            params = self._close_window()
        self.last_collectives = 0
        ids = frozenset(map(id, params))
        layout = self._current
        if layout is None or layout.ids != ids:
            layout = self._current = make_layout(list({id(p): p for p in params}.values()))
        if not self._reduce(layout, changed=self._agreed.ids != ids):
            self._agree(layout)
            if not self._reduce(layout, changed=False):
                raise RuntimeError(  # pragma: no cover - workers diverged mid-step
                    "workers disagreed on the parameters right after agreeing on them"
                )
        self._optim(layout.params, *args, **kwargs)

    def _accumulate(self, params: list[Tensor]) -> None:
        with torch.no_grad():
            for p in params:
                self._window_params.setdefault(id(p), p)
                if p.grad is None:
                    continue
                total = self._window.get(id(p))
                if total is None:
                    self._window[id(p)] = p.grad.detach().clone()
                else:
                    total.add_(p.grad)

    def _close_window(self) -> list[Tensor]:
        params = list(self._window_params.values())
        for p in params:
            p.grad = self._window.get(id(p))
        self._window = {}
        self._window_params = {}
        return params

    def _reduce(self, layout: Layout, changed: bool) -> bool:
        """One collective: the header, and the gradients in the agreed layout.

        Sets the reduced gradients and answers True when all workers pass the agreed
        parameters; answers False (gradients untouched) when they must agree anew.
        A worker whose parameters changed sends only its header: every worker sees
        the change in the reduced header and discards this sum.
        """
        buf = self._buffer
        if changed:
            buf.pack_changed(layout.signature)
        else:
            buf.pack()
            if self._prescale != 1.0:
                buf.grads.mul_(self._prescale)
        self._comm.allreduce_(buf.buffer, buf.exact, buf.name)
        self.last_collectives += 1
        if changed or not buf.all_agree():
            return False
        if self._postscale != 1.0:
            buf.grads.mul_(self._postscale)
        buf.unpack()
        return True

    def _agree(self, layout: Layout) -> None:
        """Make every worker's parameters equal, or raise naming how they differ."""
        comm = self._comm
        kinds = [(tuple(p.shape), str(p.dtype)) for p in layout.params]
        new = [
            n for n, p in zip(layout.names, layout.params, strict=True) if id(p) not in self._synced
        ]
        gathered = comm.allgather_object((layout.names, kinds, new))
        self.last_collectives += 1
        names_by_rank = [tuple(names) for names, _, _ in gathered]
        if any(names != names_by_rank[0] for names in names_by_rank):
            raise RuntimeError(describe_mismatch(names_by_rank))
        for rank, (_, other, _) in enumerate(gathered[1:], start=1):
            differ = [
                f"{name!r} is {theirs[1]}{list(theirs[0])} on rank {rank} but "
                f"{ours[1]}{list(ours[0])} on rank 0"
                for name, ours, theirs in zip(layout.names, gathered[0][1], other, strict=True)
                if tuple(ours) != tuple(theirs)
            ]
            if differ:
                raise RuntimeError(
                    "workers passed parameters of different shapes or dtypes to the "
                    "distributed optimizer (every worker must run the same model and "
                    "guide): " + "; ".join(differ)
                )
        fresh = set().union(*(set(n) for _, _, n in gathered))
        if fresh:
            by_name = dict(zip(layout.names, layout.params, strict=True))
            self._broadcast_values([by_name[n] for n in sorted(fresh)])
        self._synced = {id(p): p for p in layout.params}
        self._agreed = layout
        self._buffer = GradBuffer(layout, comm.rank, comm.size, comm.device)

    def _broadcast_values(self, params: list[Tensor]) -> None:
        by_dtype: dict[torch.dtype, list[Tensor]] = {}
        for p in params:
            by_dtype.setdefault(p.dtype, []).append(p)
        with torch.no_grad():
            for dtype in sorted(by_dtype, key=str):
                group = by_dtype[dtype]
                flat = torch.cat([p.detach().reshape(-1) for p in group])
                own = flat.clone() if self._comm.rank != 0 else flat
                self._comm.broadcast_(flat)
                self.last_collectives += 1
                if not torch.equal(own, flat):
                    warnings.warn(
                        "a new parameter started from a different value on this worker "
                        "than on rank 0; rank 0's value now holds everywhere, but the "
                        "gradient of this step was computed at each worker's own value. "
                        "Seed every worker alike (pyro.set_rng_seed) for exact results.",
                        RuntimeWarning,
                        stacklevel=4,
                    )
                torch._foreach_copy_(
                    group,
                    [
                        piece.view(p.shape)
                        for p, piece in zip(
                            group, flat.split([p.numel() for p in group]), strict=True
                        )
                    ],
                )

    # -- schedules --------------------------------------------------------------------
    def step(self, *args: Any, **kwargs: Any) -> None:
        """Advance the wrapped scheduler's schedules by one epoch, alike on every worker.

        Call it on every worker. Schedules that take no argument advance locally (no
        collective: every worker holds the same schedule). ``ReduceLROnPlateau`` takes
        a metric, which usually differs between workers (each sees its own data): the
        metric is first averaged over the workers (**one** float64 sum-reduction of
        one number), so every worker takes the same decision on the same value.

        Example (on every worker)::

            optim = pyroopt.HorovodOptimizer(
                pyroopt.ReduceLROnPlateau(
                    {"optimizer": torch.optim.Adam, "optim_args": {"lr": 0.01}}
                )
            )
            for epoch in range(100):
                loss = svi.step(data)
                optim.step(loss)  # the mean loss over the workers decides

        :raises TypeError: the wrapped optimizer has no schedule, the metric is missing
            or is not a number.
        """
        step_schedule(self._optim, self._comm, args, kwargs)

    # -- state ------------------------------------------------------------------------
    def get_state(self) -> dict[str, Any]:
        """The wrapped optimizer's state (equal on all workers)."""
        state: dict[str, Any] = self._optim.get_state()
        return state

    def set_state(self, state_dict: Mapping[str, Any]) -> None:
        """Apply rank 0's ``state_dict`` on every worker (collective: call it on all)."""
        self._set_state(state_dict, "state_dict")

    def _set_state(self, state_dict: Mapping[str, Any], where: str) -> None:
        state = self._comm.broadcast_object(state_dict if self._comm.rank == 0 else None)
        self._optim._set_state(state, where)

    def save(self, filename: str | os.PathLike[str], *, all_ranks: bool = False) -> None:
        """Write the state on rank 0 only (every worker holds the same state).

        ``all_ranks=True`` writes on every worker, e.g. to a local disk of each host.
        """
        if all_ranks or self._comm.rank == 0:
            self._optim.save(filename)

    def load(
        self,
        filename: str | os.PathLike[str],
        map_location: Any = None,
        *,
        weights_only: bool = True,
    ) -> None:
        """Read ``filename`` on rank 0 and apply its state on every worker.

        Collective: call it on all workers. Only rank 0 needs the file; an error
        reading it is raised on every worker (none is left waiting).
        """
        path = os.fspath(filename)
        payload: Any = None
        if self._comm.rank == 0:
            try:
                payload = (
                    "ok",
                    checkpoint.load_state(path, map_location, weights_only=weights_only),
                )
            except Exception as e:
                payload = ("error", f"{type(e).__name__}: {e}")
        status, value = self._comm.broadcast_object(payload)
        if status != "ok":
            raise RuntimeError(f"rank 0 could not load {path}: {value}")
        self._optim._set_state(value, path)
