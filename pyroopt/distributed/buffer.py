"""The flat buffer a step's reduction travels in, built once per agreed layout.

One 1-D tensor holds, in this order:

- the *header*: ``size`` rows of :data:`ROW` numbers (zeros except the worker's own
  row: whether its parameters changed since the last agreed set, their count and a
  64-bit hash of their names in four 16-bit pieces), then one number per parameter
  (1 when the worker holds a gradient for it);
- every gradient of the agreed layout, in name order.

Its dtype is the widest gradient dtype, at least float32: every header number is an
integer below 2**24, so sums of them are exact. The buffer, the views of each
gradient in it and the header a steady step sends are made once per layout, so a
steady step only copies the gradients in (a few ``torch.cat`` calls, see
:class:`pyroopt.flat.FlatLayout`), reduces, checks the header with one comparison
and points each ``p.grad`` at its view.

Example::

    >>> import pyro, torch
    >>> from pyroopt.distributed.layout import make_layout
    >>> pyro.clear_param_store()
    >>> a = pyro.param("a", torch.zeros(2)).unconstrained()
    >>> buf = GradBuffer(make_layout([a]), rank=0, size=1)
    >>> a.grad = torch.tensor([1.0, 2.0])
    >>> buf.pack()
    >>> buf.exact  # header: changed, count, 4 hash pieces; then 1 has-grad flag
    7
    >>> buf.buffer[buf.exact :]
    tensor([1., 2.])
"""

from __future__ import annotations

import operator
from itertools import repeat

import torch
from torch import Tensor

from pyroopt.distributed.layout import Layout
from pyroopt.flat import FlatLayout

#: header numbers per worker: changed, count, four 16-bit hash pieces
ROW = 6

_IS_SPARSE = operator.attrgetter("is_sparse")


def buffer_dtype(params: list[Tensor]) -> torch.dtype:
    """The widest dtype of ``params``, at least float32."""
    dtype = torch.float32
    for p in params:
        dtype = torch.promote_types(dtype, p.dtype)
    return dtype


class GradBuffer:
    """Header and gradients of one agreed layout, in one flat tensor.

    :param layout: the parameters all workers agreed on.
    :param rank: this worker's rank.
    :param size: the number of workers.
    :param device: where the buffer lives when ``layout`` has no parameters (else
        where the parameters are, e.g. CUDA for nccl).
    """

    def __init__(
        self, layout: Layout, rank: int, size: int, device: torch.device | None = None
    ) -> None:
        params = layout.params
        self.params = params
        self.size = size
        self.rank = rank
        self.dtype = dtype = buffer_dtype(params)
        self.rows = size * ROW
        #: header length: the part of the buffer that must be reduced exactly
        self.exact = self.rows + len(params)
        numel = sum(p.numel() for p in params)
        self.device = device = params[0].device if params else torch.device(device or "cpu")
        self.buffer = torch.zeros(self.exact + numel, dtype=dtype, device=device)
        #: the collective's name: equal on workers with equal layouts and buffers
        self.name = f"{layout.tag}.{self.buffer.numel()}.{str(dtype).removeprefix('torch.')}"
        self.header = self.buffer[: self.exact]
        self.grads = self.buffer[self.exact :]
        self._layout = FlatLayout([p.shape for p in params])
        self._target = self._layout.target(self.grads)
        #: each gradient's place in the buffer, shaped like its parameter
        self.views = self._target.views
        #: every parameter has the buffer's dtype: ``p.grad`` can be its view, and a
        #: few ``torch.cat`` calls copy all gradients in (see :mod:`pyroopt.flat`)
        self.same_dtype = all(p.dtype == dtype for p in params)
        steady = torch.tensor([0.0, *layout.signature], dtype=dtype, device=device)
        self._template = torch.zeros(self.exact, dtype=dtype, device=device)
        self._template[rank * ROW : (rank + 1) * ROW] = steady
        self._template[self.rows :] = 1.0
        # what the reduced header of a step where all workers agree and hold every
        # gradient looks like
        self._expected = steady.repeat(size)
        self._expected_full = torch.cat(
            [self._expected, torch.full((len(params),), float(size), dtype=dtype, device=device)]
        )
        self._all_held = False  # set by all_agree(): every worker held every gradient

    # -- before the reduction ---------------------------------------------------------
    def pack(self) -> None:
        """Write the steady header and copy every ``p.grad`` in (zeros for None).

        :raises ValueError: a gradient is sparse.
        """
        self.header.copy_(self._template)
        grads = [p.grad for p in self.params]
        views = self.views
        # C-level scans, since this is hot: no gradient is missing or sparse, and
        # none is already in place (accumulated into since the last step)
        if not any(map(operator.is_, grads, repeat(None))):
            if any(map(_IS_SPARSE, grads)):
                raise ValueError("distributed optimizers do not support sparse gradients")
            if not any(map(operator.is_, grads, views)):
                if self.same_dtype:
                    self._layout.gather(grads, self._target)  # type: ignore[arg-type]
                else:
                    torch._foreach_copy_(views, grads)  # type: ignore[arg-type]  # no None
                return
        sources: list[Tensor] = []
        targets: list[Tensor] = []
        missing: list[int] = []
        for i, (g, v) in enumerate(zip(grads, views, strict=True)):
            if g is None:
                missing.append(i)
            elif g is not v:  # a gradient already in place (accumulated into) stays
                if g.is_sparse:
                    raise ValueError("distributed optimizers do not support sparse gradients")
                sources.append(g)
                targets.append(v)
        if sources:
            torch._foreach_copy_(targets, sources)
        if missing:
            torch._foreach_zero_([views[i] for i in missing])
            self.header[torch.tensor(missing) + self.rows] = 0.0

    def pack_changed(self, signature: tuple[float, ...]) -> None:
        """Write the header of a worker whose parameters changed (``signature``: its new
        set). The gradient part is left as it is (the reduction keeps its shape): every
        worker sees the change in the reduced header and discards this sum.
        """
        self.header.zero_()
        self.header[self.rank * ROW : (self.rank + 1) * ROW] = torch.tensor(
            [1.0, *signature], dtype=self.dtype, device=self.device
        )

    # -- after the reduction ----------------------------------------------------------
    def all_agree(self) -> bool:
        """Whether every worker passed the agreed parameters, unchanged."""
        self._all_held = torch.equal(self.header, self._expected_full)
        return self._all_held or torch.equal(self.header[: self.rows], self._expected)

    def unpack(self) -> None:
        """Point each ``p.grad`` at its reduced gradient; None where no worker had one.

        Call after :meth:`all_agree` answered True.
        """
        if self._all_held and self.same_dtype:
            for p, v in zip(self.params, self.views, strict=True):
                p.grad = v
            return
        held = self.header[self.rows :].tolist()
        for p, v, count in zip(self.params, self.views, held, strict=True):
            # no worker had a gradient: None, so the local step skips it
            p.grad = None if not count else v if v.dtype == p.dtype else v.to(p.dtype)
