"""One flat buffer standing for many tensors, and fast copies into it.

Copying 1000 small gradients into a flat buffer with ``torch._foreach_copy_`` costs one
dispatched copy per tensor (~1 µs each on CPU). ``torch.cat(..., out=...)`` copies a
whole run of tensors in one call, about four times faster, but needs the tensors of a
run to agree in every dimension but the first and to lie end to end. :class:`FlatLayout`
splits the tensors into such runs once, so each gather is a handful of ``cat`` calls.

With ``align`` > 1 every tensor's slice starts at a multiple of ``align`` elements, so a
buffer that starts where torch's CPU allocator starts one (64 bytes) gives each slice
the alignment a tensor of its own would have. That matters to parameters seated in a
buffer (:mod:`pyroopt.seating`): MKL's matrix multiply takes other paths, with other
summation orders and other bits, for operands at other alignments (``F.linear`` with a
float64 weight at an odd element offset differed in 46-109 of 3200 outputs). The gaps
between slices hold zeros that nothing reads. A gather into such a layout concatenates
into a packed scratch buffer first and then moves each group of equal-sized tensors into
its aligned slices with one strided copy (a single ``_foreach_copy_`` for all groups).

Example::

    >>> import torch
    >>> tensors = [torch.ones(2), torch.zeros(3), torch.full((2, 2), 2.0), torch.tensor(5.0)]
    >>> layout = FlatLayout([t.shape for t in tensors])
    >>> flat = torch.empty(layout.numel)
    >>> target = layout.target(flat)
    >>> layout.gather(tensors, target)
    >>> flat
    tensor([1., 1., 0., 0., 0., 2., 2., 2., 2., 5.])
    >>> aligned = FlatLayout([t.shape for t in tensors], align=4)
    >>> aligned.offsets, aligned.numel
    ([0, 4, 8, 12], 16)
    >>> flat = torch.zeros(aligned.numel)
    >>> aligned.gather(tensors, aligned.target(flat))
    >>> flat
    tensor([1., 1., 0., 0., 0., 0., 0., 0., 2., 2., 2., 2., 5., 0., 0., 0.])
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import Tensor

#: the alignment of the storage torch's CPU allocator hands out, in bytes
TORCH_ALIGNMENT_BYTES = 64


def torch_alignment(dtype: torch.dtype) -> int:
    """:data:`TORCH_ALIGNMENT_BYTES` in elements of ``dtype``.

    >>> torch_alignment(torch.float32), torch_alignment(torch.float64)
    (16, 8)
    """
    return max(1, TORCH_ALIGNMENT_BYTES // torch.empty(0, dtype=dtype).element_size())


class _Run(NamedTuple):
    first: int  # index of the first tensor of the run
    stop: int  # index after the last
    start: int  # offset of the run in the packed buffer
    end: int
    rows: int  # the run's first dimensions added up
    trailing: tuple[int, ...]  # the dimensions after the first, shared by the run


class _Group(NamedTuple):
    """Consecutive tensors of one size, moved from the packed to the aligned buffer."""

    first: int
    stop: int
    numel: int  # of each tensor


class Target(NamedTuple):
    """A flat buffer prepared for :meth:`FlatLayout.gather`."""

    runs: list[Tensor]  # per run, the packed buffer's slice shaped (rows, *trailing)
    views: tuple[Tensor, ...]  # per tensor, the flat buffer's slice shaped like the tensor
    #: ``(to, from)`` lists of one ``_foreach_copy_`` from the packed buffer into the
    #: aligned one; empty when the layout has no gaps (the runs land in place)
    moves: tuple[list[Tensor], list[Tensor]]


class FlatLayout:
    """Offsets of tensors of the given shapes in one flat buffer, each starting at a
    multiple of ``align`` elements (end to end for ``align=1``)."""

    def __init__(self, shapes: Sequence[torch.Size], align: int = 1) -> None:
        if align < 1:
            raise ValueError(f"align must be a positive number of elements, got {align}")
        self.shapes = list(shapes)
        self.numels = [s.numel() for s in self.shapes]
        self.offsets: list[int] = []
        offset = 0
        for n in self.numels:
            self.offsets.append(offset)
            offset += -(-n // align) * align
        self.numel = offset
        self.packed_numel = sum(self.numels)
        #: whether some tensor's slice does not start where the one before it ends
        self.gaps = self.numel != self.packed_numel
        self.runs: list[_Run] = []
        self.scalars: list[int] = []  # 0-dim tensors cannot be concatenated
        packed = 0
        for i, shape in enumerate(self.shapes):
            if len(shape) == 0:
                self.scalars.append(i)
            else:
                trailing = tuple(shape[1:])
                last = self.runs[-1] if self.runs else None
                end = packed + self.numels[i]
                if last is not None and last.stop == i and last.trailing == trailing:
                    self.runs[-1] = last._replace(stop=i + 1, end=end, rows=last.rows + shape[0])
                else:
                    self.runs.append(_Run(i, i + 1, packed, end, shape[0], trailing))
            packed += self.numels[i]
        self._groups: list[_Group] = []
        if self.gaps:
            scalars = set(self.scalars)
            for i, n in enumerate(self.numels):
                last_group = self._groups[-1] if self._groups else None
                if i in scalars or n == 0:
                    continue
                if last_group is not None and last_group.stop == i and last_group.numel == n:
                    self._groups[-1] = last_group._replace(stop=i + 1)
                else:
                    self._groups.append(_Group(i, i + 1, n))

    def views(self, flat: Tensor) -> list[Tensor]:
        """Slices of ``flat``, one per tensor, shaped like it."""
        if not self.gaps:
            chunks = flat.split(self.numels)
            return [c.view(s) for c, s in zip(chunks, self.shapes, strict=True)]
        return [
            flat[o : o + n].view(s)
            for o, n, s in zip(self.offsets, self.numels, self.shapes, strict=True)
        ]

    def target(self, flat: Tensor) -> Target:
        """``flat`` prepared to receive :meth:`gather` copies (with a packed scratch
        buffer of :attr:`packed_numel` elements where the layout has gaps)."""
        views = tuple(self.views(flat))
        if not self.gaps:
            runs = [flat[r.start : r.end].view(r.rows, *r.trailing) for r in self.runs]
            return Target(runs, views, ([], []))
        packed = torch.empty(self.packed_numel, dtype=flat.dtype, device=flat.device)
        runs = [packed[r.start : r.end].view(r.rows, *r.trailing) for r in self.runs]
        starts = [0]
        for n in self.numels:
            starts.append(starts[-1] + n)
        to, source = [views[i] for i in self.scalars], []
        for g in self._groups:
            k = g.stop - g.first
            stride = self.offsets[g.first + 1] - self.offsets[g.first] if k > 1 else g.numel
            begin = self.offsets[g.first]
            to.append(flat[begin : begin + k * stride].view(k, stride)[:, : g.numel])
            source.append(packed[starts[g.first] : starts[g.stop]].view(k, g.numel))
        return Target(runs, views, (to, source))

    def gather(self, tensors: Sequence[Tensor], target: Target) -> None:
        """Copy ``tensors`` (of this layout's shapes) into the target's flat buffer."""
        for run, out in zip(self.runs, target.runs, strict=True):
            torch.cat(list(tensors[run.first : run.stop]), out=out)
        to, source = target.moves
        if to:
            # the 0-dim tensors first in ``to``, straight from the tensors themselves
            scalars = [tensors[i] for i in self.scalars]
            torch._foreach_copy_(to, [*scalars, *source])
        elif self.scalars:
            torch._foreach_copy_(
                [target.views[i] for i in self.scalars], [tensors[i] for i in self.scalars]
            )
