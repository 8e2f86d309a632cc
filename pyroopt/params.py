"""The parameter table: what an optimizer knows of each parameter, keyed as Pyro keys it.

Pyro names parameters, and a name outlives its tensor: ``param_store.load``,
``clear_param_store`` or ``del store[name]`` followed by ``pyro.param(name, ...)`` give
the name a new tensor. The table therefore holds one :class:`Slot` per name (unnamed
tensors, which are not in the param store, are held by identity), and finds a slot
by tensor in O(1) for the hot path.

Entries are ordered by name, unnamed tensors after every named one in the order they
arrived, so that whatever order SVI's ``set`` of parameters comes in, buckets, buffers,
state and summed quantities (a global gradient norm) come out the same.

Example::

    >>> import torch
    >>> table = ParamTable()
    >>> a, b = torch.zeros(1), torch.zeros(2)
    >>> table.add(Slot(b, "b", bucket=None, clip={}))
    >>> table.add(Slot(a, "a", bucket=None, clip={}))
    >>> [slot.name for slot in table]
    ['a', 'b']
    >>> table.get(b).name, table.named("a").param is a
    ('b', True)
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Any

from torch import Tensor


class Slot:
    """One parameter: its tensor, Pyro name (``None`` if unnamed), bucket and clipping."""

    __slots__ = ("bucket", "clip", "name", "param", "sort_key")

    def __init__(self, param: Tensor, name: str | None, bucket: Any, clip: dict[str, float]):
        self.param = param
        self.name = name
        self.bucket = bucket
        self.clip = clip
        #: where the slot sorts: named ones by name, then unnamed ones by arrival
        self.sort_key: tuple[int, Any] = (0, name) if name is not None else (1, 0)


class ParamTable:
    """Slots by tensor identity (for stepping) and by Pyro name (for state)."""

    def __init__(self) -> None:
        #: id(param) -> slot. The slot holds the tensor, so its id is not reused while
        #: the entry exists; id() is a C call where ``Tensor.__hash__`` is a Python one.
        self.by_id: dict[int, Slot] = {}
        self._by_name: dict[str, Slot] = {}
        #: name -> slot.param, beside ``_by_name``, so that checking every name against
        #: the param store reads no slot
        self._named_params: dict[str, Tensor] = {}
        self._arrivals = itertools.count()

    def __len__(self) -> int:
        return len(self.by_id)

    def __iter__(self) -> Iterator[Slot]:
        """Every slot, in table order (see the module docstring)."""
        return iter(sorted(self.by_id.values(), key=_sort_key))

    def get(self, param: Tensor) -> Slot | None:
        return self.by_id.get(id(param))

    def named(self, name: str) -> Slot | None:
        return self._by_name.get(name)

    def by_name(self, name: str) -> Slot:
        """The slot named ``name``, which must exist."""
        return self._by_name[name]

    def add(self, slot: Slot) -> None:
        """Enter ``slot``; its name must be free (retire the old holder first)."""
        if slot.name is None:
            slot.sort_key = (1, next(self._arrivals))
        elif slot.name in self._by_name:
            raise KeyError(f"parameter name {slot.name!r} already has a slot")
        else:
            self._by_name[slot.name] = slot
            self._named_params[slot.name] = slot.param
        self.by_id[id(slot.param)] = slot

    def remove(self, slot: Slot) -> None:
        del self.by_id[id(slot.param)]
        if slot.name is not None:
            del self._by_name[slot.name]
            del self._named_params[slot.name]

    def unname(self, slot: Slot) -> None:
        """Let ``slot`` go on without its name (which now belongs to another tensor)."""
        del self._by_name[slot.name]  # type: ignore[arg-type]
        del self._named_params[slot.name]  # type: ignore[arg-type]
        slot.name = None
        slot.sort_key = (1, next(self._arrivals))

    def named_params(self) -> dict[str, Tensor]:
        """name -> tensor of every named slot (the table's own dict: do not change it)."""
        return self._named_params

    def rekey(self) -> dict[int, int]:
        """Index the slots anew after they were copied (``copy.deepcopy``, pickle), whose
        tensors have new ids; returns ``{old id: new id}``."""
        moved = {old: id(slot.param) for old, slot in self.by_id.items()}
        self.by_id = {id(slot.param): slot for slot in self.by_id.values()}
        return moved


def _sort_key(slot: Slot) -> tuple[int, Any]:
    return slot.sort_key
