"""A step's parameters in the order all workers share: by name in Pyro's param store.

Example::

    >>> import pyro, torch
    >>> pyro.clear_param_store()
    >>> b = pyro.param("b", torch.zeros(2)).unconstrained()
    >>> a = pyro.param("a", torch.zeros(3)).unconstrained()
    >>> make_layout([b, a]).names
    ('a', 'b')
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import NamedTuple

import pyro
from torch import Tensor


def names_signature(names: Sequence[str]) -> tuple[float, ...]:
    """The count of ``names`` and a 64-bit hash of them in four 16-bit pieces.

    Every value is an integer below 2**24, exact in float32 and float64, so a sum
    that adds zeros to it gives it back bit for bit.
    """
    digest = hashlib.blake2b("\0".join(names).encode(), digest_size=8).digest()
    pieces = [float(int.from_bytes(digest[i : i + 2], "little")) for i in range(0, 8, 2)]
    return (float(len(names)), *pieces)


class Layout(NamedTuple):
    """One step's parameters, sorted by name, and the identity of that set."""

    ids: frozenset[int]
    names: tuple[str, ...]
    params: list[Tensor]
    signature: tuple[float, ...]
    #: a name for collectives in this layout, equal on all workers for equal layouts
    tag: str


def make_layout(params: Sequence[Tensor]) -> Layout:
    """The :class:`Layout` of ``params`` (tensors from ``pyro.param``, no duplicates).

    :raises TypeError: an entry is not a tensor.
    :raises ValueError: a tensor is not in Pyro's param store, or is sparse.
    """
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
        if p.is_sparse:
            raise ValueError(
                f"distributed optimizers do not support sparse parameters ({name!r} is sparse)"
            )
        named.append((name, p))
    named.sort(key=lambda item: item[0])
    names = tuple(n for n, _ in named)
    signature = names_signature(names)
    return Layout(
        frozenset(map(id, params)),
        names,
        [p for _, p in named],
        signature,
        "pyroopt." + ".".join(str(int(v)) for v in signature),
    )


EMPTY = make_layout([])


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
