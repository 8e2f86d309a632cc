"""One reduction of all of a step's gradients, whatever carries the bytes.

:class:`DistributedPyroOptim` is the part :class:`~pyroopt.HorovodOptimizer` and
:class:`~pyroopt.DistributedOptimizer` share; a :class:`Collectives` object says how
the bytes move (horovod or ``torch.distributed``).

Every step issues **one** sum-reduction that carries, beside the gradients, a small
float64 *header*:

- one row per worker (zeros except the worker's own row): whether its set of
  parameters changed since the last agreed set, how many parameters it passes, and a
  64-bit hash of their sorted names in four 16-bit pieces (exact in float32 and
  float64, so the rows come back bit for bit);
- one entry per parameter: how many workers hold a gradient for it.

The gradients travel in the layout of the last set of parameters all workers agreed
on, so the reduction has the same shape on every worker even when a worker's
parameters changed. When the rows disagree, or any worker's set changed, all workers
see it in the same reduced header and take the slow path together: they gather
each other's names, raise a :class:`RuntimeError` naming the difference if the names
disagree, else broadcast the values of new parameters from rank 0 and reduce again in
the new layout. A steady step (the same parameters as the step before, as in SVI)
costs exactly one collective.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, NamedTuple

import pyro
import pyro.optim
import torch
from torch import Tensor

from pyroopt import checkpoint
from pyroopt.optim import PyroOptim

#: header columns per worker: changed, count, four 16-bit hash pieces
ROW = 6


class Collectives(ABC):
    """The collectives a distributed optimizer needs; one subclass per backend."""

    rank: int
    size: int

    @abstractmethod
    def allreduce_sum(
        self,
        header: Tensor,
        groups: Sequence[Sequence[Tensor]],
        prescale: float,
        postscale: float,
        name: str,
    ) -> tuple[Tensor, list[Tensor]]:
        """Sum ``header`` and the gradients over workers in ONE collective.

        ``groups`` holds the gradients, one list per dtype; the answer holds the summed
        header (float64, unscaled) and one flat summed buffer per group, with the
        gradients multiplied by ``prescale`` before the sum and ``postscale`` after.
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


def names_signature(names: Sequence[str]) -> list[float]:
    """The count of ``names`` and a 64-bit hash of them in four 16-bit pieces."""
    digest = hashlib.blake2b("\0".join(names).encode(), digest_size=8).digest()
    pieces = [float(int.from_bytes(digest[i : i + 2], "little")) for i in range(0, 8, 2)]
    return [float(len(names)), *pieces]


class _Layout(NamedTuple):
    """One step's parameters, in name order, and what a reduction needs of them."""

    ids: frozenset[int]
    names: tuple[str, ...]
    params: list[Tensor]
    signature: list[float]
    tag: str  # a name for the reduction, equal on all workers for equal layouts
    groups: list[list[int]]  # indices into params, one list per dtype


def _layout(params: list[Tensor], ids: frozenset[int]) -> _Layout:
    store = pyro.get_param_store()
    named = []
    for p in params:
        if not isinstance(p, Tensor):
            raise TypeError(f"params must hold tensors, got {type(p).__name__}: {p!r}")
        name = store.param_name(p)
        if name is None:
            raise ValueError(
                f"a tensor of shape {tuple(p.shape)} passed to a distributed optimizer is not "
                "in Pyro's param store: workers match parameters by name, so every "
                "parameter must come from pyro.param (pass name.unconstrained())"
            )
        named.append((name, p))
    named.sort(key=lambda item: item[0])
    by_dtype: dict[torch.dtype, list[int]] = {}
    for i, (_, p) in enumerate(named):
        if p.is_sparse:
            raise ValueError("distributed optimizers do not support sparse parameters")
        by_dtype.setdefault(p.dtype, []).append(i)
    names = tuple(n for n, _ in named)
    return _Layout(
        ids,
        names,
        [p for _, p in named],
        (signature := names_signature(names)),
        "pyroopt." + ".".join(str(int(v)) for v in signature),
        [by_dtype[k] for k in sorted(by_dtype, key=str)],
    )


def describe_mismatch(names_by_rank: Sequence[Sequence[str]]) -> str:
    """A message naming how each worker's parameters differ from rank 0's."""
    reference = set(names_by_rank[0])
    lines = []
    for rank, names in enumerate(names_by_rank[1:], start=1):
        parts = []
        extra = sorted(set(names) - reference)
        if extra:
            parts.append(f"has {extra}, which rank 0 lacks")
        missing = sorted(reference - set(names))
        if missing:
            parts.append(f"lacks {missing}, which rank 0 has")
        if parts:
            lines.append(f"rank {rank} " + " and ".join(parts))
    return (
        "workers passed different parameters to the distributed optimizer in the same "
        "step (every worker must run the same model and guide): " + "; ".join(lines)
    )


class DistributedPyroOptim(pyro.optim.PyroOptim):
    """A pyroopt optimizer whose gradients are reduced over workers before each step.

    Holds the wrapped :class:`~pyroopt.PyroOptim` (or
    :class:`~pyroopt.PyroLRScheduler`) and delegates every attribute it does not define
    to it (``optim_objs``, ``step`` and ``get_last_lr`` of a scheduler, ...). It is a
    :class:`pyro.optim.PyroOptim`, so :class:`pyro.infer.SVI` accepts it.

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
        if not (
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
        self._agreed: _Layout | None = None  # the last layout all workers agreed on
        self._current: _Layout | None = None  # the layout of the last call, cached
        self._synced: dict[int, Tensor] = {}  # parameters already equal on all workers
        self._calls = 0
        self._window: dict[int, Tensor] = {}  # accumulated gradients, by id(param)
        self._window_params: dict[int, Tensor] = {}
        #: how many collectives the last call issued (1 on a steady step)
        self.last_collectives = 0

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

        Every worker must call this with the same parameters (by name). Parameters this
        optimizer has not seen before are first overwritten with rank 0's values.

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
        params = list({id(p): p for p in params}.values())
        if self.backward_passes_per_step > 1:
            self._accumulate(params)
            self._calls += 1
            if self._calls % self.backward_passes_per_step:
                self.last_collectives = 0
                return
            params = self._close_window()
        self.last_collectives = 0
        ids = frozenset(map(id, params))
        layout = self._current
        if layout is None or layout.ids != ids:
            layout = self._current = _layout(params, ids)
        if not self._reduce(layout, changed=self._agreed is None or self._agreed.ids != ids):
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

    def _reduce(self, layout: _Layout, changed: bool) -> bool:
        """One collective: the header, and the gradients in the agreed layout.

        Sets the reduced gradients and answers True when all workers pass the agreed
        parameters; answers False (gradients untouched) when they must agree anew.
        """
        comm = self._comm
        agreed = self._agreed if self._agreed is not None else _EMPTY
        if changed:
            local = {}  # a worker whose parameters changed reduces zeros in the old layout
            present = dict(zip(layout.names, layout.params, strict=True))
            for name in agreed.names:
                if name in present:
                    local[name] = present[name]
        size, n = comm.size, len(agreed.params)
        header = torch.zeros(size * ROW + n, dtype=torch.float64)
        header[comm.rank * ROW : (comm.rank + 1) * ROW] = torch.tensor(
            [float(changed), *layout.signature], dtype=torch.float64
        )
        params = agreed.params if not changed else [local.get(nm) for nm in agreed.names]
        grads = []
        has_grad = []
        for p, q in zip(params, agreed.params, strict=True):
            g = None if p is None else p.grad
            has_grad.append(g is not None)
            if g is None:
                g = torch.zeros_like(q)
            elif g.is_sparse:
                raise ValueError("distributed optimizers do not support sparse gradients")
            grads.append(g.reshape(-1))
        if n:
            header[size * ROW :] = torch.tensor(has_grad, dtype=torch.float64)
        groups = [[grads[i] for i in group] for group in agreed.groups]
        f = self.gradient_predivide_factor
        prescale, postscale = (1.0 / f, f / size) if self.average else (1.0, 1.0)
        summed, flats = comm.allreduce_sum(header, groups, prescale, postscale, name=agreed.tag)
        self.last_collectives += 1
        rows = summed[: size * ROW].view(size, ROW)
        if bool(rows[:, 0].any()) or not bool((rows == rows[0]).all()):
            return False
        counts = summed[size * ROW :].tolist()
        for group, flat in zip(agreed.groups, flats, strict=True):
            members = [agreed.params[i] for i in group]
            if flat.dtype != members[0].dtype:
                flat = flat.to(members[0].dtype)
            pieces = flat.split([p.numel() for p in members])
            for i, p, piece in zip(group, members, pieces, strict=True):
                # no worker had a gradient: None, so the local step skips it
                p.grad = piece.view(p.shape) if counts[i] else None
        return True

    def _agree(self, layout: _Layout) -> None:
        """Make every worker's parameters equal, or raise naming how they differ."""
        comm = self._comm
        new = [
            n for n, p in zip(layout.names, layout.params, strict=True) if id(p) not in self._synced
        ]
        gathered = comm.allgather_object((layout.names, new))
        self.last_collectives += 1
        names_by_rank = [tuple(names) for names, _ in gathered]
        if any(names != names_by_rank[0] for names in names_by_rank):
            raise RuntimeError(describe_mismatch(names_by_rank))
        fresh = set().union(*(set(n) for _, n in gathered))
        if fresh:
            by_name = dict(zip(layout.names, layout.params, strict=True))
            self._broadcast_values([by_name[n] for n in sorted(fresh)])
        self._synced = {id(p): p for p in layout.params}
        self._agreed = layout

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


_EMPTY = _Layout(frozenset(), (), [], names_signature(()), "pyroopt.empty", [])
