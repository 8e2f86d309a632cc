"""One flat buffer standing for many tensors, and fast copies into it.

Copying 1000 small gradients into a flat buffer with ``torch._foreach_copy_`` costs one
dispatched copy per tensor (~1 µs each on CPU). ``torch.cat(..., out=...)`` copies a
whole run of tensors in one call, about four times faster, but needs the tensors of a
run to agree in every dimension but the first. :class:`FlatLayout` splits the tensors
into such runs once, so each gather is a handful of ``cat`` calls.

Example::

    >>> import torch
    >>> tensors = [torch.ones(2), torch.zeros(3), torch.full((2, 2), 2.0), torch.tensor(5.0)]
    >>> layout = FlatLayout([t.shape for t in tensors])
    >>> flat = torch.empty(layout.numel)
    >>> target = layout.target(flat)
    >>> layout.gather(tensors, target)
    >>> flat
    tensor([1., 1., 0., 0., 0., 2., 2., 2., 2., 5.])
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import Tensor


class _Run(NamedTuple):
    first: int  # index of the first tensor of the run
    stop: int  # index after the last
    start: int  # offset of the run in the flat buffer
    end: int
    rows: int  # the run's first dimensions added up
    trailing: tuple[int, ...]  # the dimensions after the first, shared by the run


class Target(NamedTuple):
    """A flat buffer prepared for :meth:`FlatLayout.gather`."""

    runs: list[Tensor]  # per run, the buffer's slice shaped (rows, *trailing)
    views: list[Tensor]  # per tensor, the buffer's slice shaped like the tensor


class FlatLayout:
    """Offsets of tensors of the given shapes, laid end to end in one flat buffer."""

    def __init__(self, shapes: Sequence[torch.Size]) -> None:
        self.shapes = list(shapes)
        self.numels = [s.numel() for s in self.shapes]
        self.numel = sum(self.numels)
        self.runs: list[_Run] = []
        self.scalars: list[int] = []  # 0-dim tensors cannot be concatenated
        offset = 0
        for i, shape in enumerate(self.shapes):
            if len(shape) == 0:
                self.scalars.append(i)
            else:
                trailing = tuple(shape[1:])
                last = self.runs[-1] if self.runs else None
                end = offset + self.numels[i]
                if last is not None and last.stop == i and last.trailing == trailing:
                    self.runs[-1] = last._replace(stop=i + 1, end=end, rows=last.rows + shape[0])
                else:
                    self.runs.append(_Run(i, i + 1, offset, end, shape[0], trailing))
            offset += self.numels[i]

    def views(self, flat: Tensor) -> list[Tensor]:
        """Slices of ``flat``, one per tensor, shaped like it."""
        chunks = flat.split(self.numels)
        return [c.view(s) for c, s in zip(chunks, self.shapes, strict=True)]

    def target(self, flat: Tensor) -> Target:
        """``flat`` prepared to receive :meth:`gather` copies."""
        runs = [flat[r.start : r.end].view(r.rows, *r.trailing) for r in self.runs]
        return Target(runs, self.views(flat))

    def gather(self, tensors: Sequence[Tensor], target: Target) -> None:
        """Copy ``tensors`` (of this layout's shapes) into the target's flat buffer."""
        for run, out in zip(self.runs, target.runs, strict=True):
            torch.cat(list(tensors[run.first : run.stop]), out=out)
        if self.scalars:
            torch._foreach_copy_(
                [target.views[i] for i in self.scalars], [tensors[i] for i in self.scalars]
            )
