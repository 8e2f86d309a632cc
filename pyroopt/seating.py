"""Parameter values kept in one flat buffer, so a flat update needs no scatter.

A bucket of many small parameters runs its update on one flat buffer. Copying the
result back into 1000 separate tensors costs about 1 µs per tensor, far more than the
update itself. Instead, :class:`FlatValues` *seats* each parameter on a slice of one
flat buffer (``param.data = slice``): the parameter stays the same tensor object, with
the same values, shape and gradient, but its storage is now part of the buffer, and an
update of the buffer is an update of the parameter.

Seating is only done where nobody can tell the difference:

- a parameter is seated only if it is contiguous and no tensor outside the buffer's
  parameters shares its storage (a view taken with ``.detach()``, ``.data`` or slicing,
  or weight tying by views, would otherwise stop following the parameter); parameters
  that share one storage among themselves alone (as a param store loaded from a file
  saved with seated parameters does) are seated together;
- when the bucket changes and the buffer must be rebuilt, seated parameters move to the
  new buffer only if no tensor outside the bucket holds a view of the old one;
  otherwise they stay where they are and are copied in and out on every step (the
  behaviour without seating);
- a parameter given new storage by its owner (``param.data = other``, as
  ``Module.to`` or ``PyroModule`` attribute assignment do) is noticed on the next step:
  its data pointer no longer matches, and the bucket rebuilds the buffer from the
  parameters' current values;
- after every update, the parameters' autograd version counters are bumped, as an
  in-place update of the parameter itself would, so a graph that saved a parameter
  still detects that it changed.

Example::

    >>> import torch
    >>> from pyroopt.flat import FlatLayout
    >>> a, b = torch.zeros(2, requires_grad=True), torch.ones(3, requires_grad=True)
    >>> values = FlatValues([a, b], FlatLayout([a.shape, b.shape]), previous=None)
    >>> values.seated == [a, b]
    True
    >>> values.buffer.add_(1.0)
    tensor([1., 1., 2., 2., 2.])
    >>> values.stored()
    >>> a
    tensor([1., 1.], requires_grad=True)
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import torch
from torch import Tensor

from pyroopt._compat import increment_version, storage_use_count
from pyroopt.flat import FlatLayout

_use_count = storage_use_count()


def _raw_count(t: Tensor) -> int:
    storage = t.untyped_storage()  # held while counting: it may count as a user itself
    return int(_use_count(storage._cdata)) if _use_count is not None else 0


def _one_user() -> int:
    only = torch.empty(1)
    return _raw_count(only)


#: what torch counts for a storage that one tensor holds
_ONE_USER = _one_user()


def _storage_users(t: Tensor) -> int:
    """How many tensors share ``t``'s storage, counted by torch (0 if torch cannot)."""
    if _use_count is None:
        return 0
    return _raw_count(t) - _ONE_USER + 1


def _storage(t: Tensor) -> int:
    return int(t.untyped_storage().data_ptr())


def _same_storage(t: Tensor, buffer: Tensor) -> bool:
    return t.untyped_storage().data_ptr() == buffer.untyped_storage().data_ptr()


class FlatValues:
    """The values of ``params`` in one flat buffer laid out by ``layout``.

    ``previous`` is the buffer this one replaces (the same bucket before parameters
    joined or left), whose seated parameters move here when that is safe.
    """

    def __init__(
        self, params: Sequence[Tensor], layout: FlatLayout, previous: FlatValues | None
    ) -> None:
        first = params[0]
        movable = previous.release(params) if previous is not None else set()
        # zeros: the gaps of an aligned layout are stepped with the rest and must stay finite
        self.buffer = torch.zeros(layout.numel, dtype=first.dtype, device=first.device)
        #: each parameter's slice of the buffer, in the order of ``params``
        self.views = views = tuple(layout.views(self.buffer))
        with torch.no_grad():
            torch._foreach_copy_(views, list(params))
        self.params = list(params)
        self.seated: list[Tensor] = []
        self.unseated: list[Tensor] = []
        self.unseated_views: list[Tensor] = []
        # A storage that only members of this buffer use (parameters loaded together
        # from one file, or seated together before a save) is nobody else's either.
        members: Counter[int] = Counter(_storage(p) for p in params)
        own = [_storage_users(p) == members[_storage(p)] for p in params]
        for p, view, alone in zip(params, views, own, strict=True):
            if p.is_contiguous() and (id(p) in movable or alone):
                with torch.no_grad():
                    p.data = view
                self.seated.append(p)
            else:
                self.unseated.append(p)
                self.unseated_views.append(view)
        self.pointers = [p.data_ptr() for p in self.seated]

    def intact(self) -> bool:
        """Whether every seated parameter still lives in the buffer."""
        return list(map(Tensor.data_ptr, self.seated)) == self.pointers

    def loaded(self) -> Tensor:
        """The buffer, after copying in the current values of unseated parameters."""
        if self.unseated:
            with torch.no_grad():
                torch._foreach_copy_(self.unseated_views, self.unseated)
        return self.buffer

    def stored(self) -> None:
        """Hand an update of the buffer to the parameters."""
        if self.unseated:
            with torch.no_grad():
                torch._foreach_copy_(self.unseated, self.unseated_views)
        increment_version(self.params)

    def release(self, keep: Sequence[Tensor]) -> set[int]:
        """Give up the buffer; returns the ids of parameters in ``keep`` that may move.

        They may move only when no tensor outside this object shares the buffer. Then a
        seated parameter that is not kept gets storage of its own again (nobody can see
        the copy), so the old buffer can be freed.
        """
        # still in its own seat (a parameter given another's memory, ``p.data = q.data``,
        # shares the buffer but not as its seat, and must stay where it was put)
        still = [
            p
            for p, pointer in zip(self.seated, self.pointers, strict=True)
            if p.data_ptr() == pointer and _same_storage(p, self.buffer)
        ]
        ours = 1 + len(still) + len(self.views)  # the buffer, its seats, our views of it
        if _use_count is None or _storage_users(self.buffer) != ours:
            return set()
        kept = {id(p) for p in keep}
        with torch.no_grad():
            for p in still:
                if id(p) not in kept:
                    p.data = p.detach().clone()
        return {id(p) for p in still if id(p) in kept}
