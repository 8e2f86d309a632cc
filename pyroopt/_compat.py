"""Every private torch (and Pyro) name pyroopt uses, each with a fallback for when it is
missing, and the public ones that older torch (down to setup.cfg's bound) lacks.

``torch._foreach_*`` ops need none: they are present in every torch >= 1.9 and are
the documented fast path of ``torch.optim`` (``foreach=True``), so a missing one
would mean a torch far below the supported range.
"""

from __future__ import annotations

import contextlib
import importlib
import itertools
import operator
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor


def get_scalar_dtype() -> torch.dtype:
    """dtype of torch.optim's ``step`` tensors: float64 under a float64 default, else float32.

    ``torch.optim.optimizer._get_scalar_dtype`` (private); the fallback is its rule.
    """
    optimizer = importlib.import_module("torch.optim.optimizer")
    private = getattr(optimizer, "_get_scalar_dtype", None)
    if private is not None:
        return private()
    return torch.float64 if torch.get_default_dtype() == torch.float64 else torch.float32


def storage_use_count() -> Callable[[Any], int] | None:
    """``torch._C._storage_Use_Count`` (private): how many users a storage has.

    None where torch lacks it; callers then treat every storage as possibly shared.
    """
    return getattr(torch._C, "_storage_Use_Count", None)


def increment_version(tensors: Sequence[Tensor]) -> None:
    """Bump autograd's version counter of ``tensors`` after writing them behind its back.

    ``torch._C._increment_version`` (private) takes a list in recent torch and one
    tensor in older ones (torch 2.4 refuses a list with a RuntimeError); without it an
    in-place ``mul_(1)`` (exact, -0.0 and NaN kept) under ``no_grad`` bumps the counter
    the public way.
    """
    private = getattr(torch._C, "_increment_version", None)
    if private is not None:
        try:
            private(list(tensors))
            return
        except (TypeError, RuntimeError):
            for t in tensors:
                private(t)
            return
    with torch.no_grad():
        for t in tensors:
            t.mul_(1)


@contextlib.contextmanager
def safe_globals(classes: Sequence[Any]) -> Iterator[None]:
    """Let ``torch.load(..., weights_only=True)`` build ``classes`` inside the block.

    ``torch.serialization.safe_globals`` (torch 2.5+) allows them for the block only;
    torch 2.4 has only ``add_safe_globals``, which allows them from then on (pyroopt
    passes plain-data classes, pyro's and torch's constraints).
    """
    serialization = torch.serialization
    scoped = getattr(serialization, "safe_globals", None)
    if scoped is not None:
        with scoped(list(classes)):
            yield
        return
    serialization.add_safe_globals(list(classes))
    yield


def moved_in_store(store: Any, named: Mapping[str, Tensor]) -> list[str]:
    """The names in ``named`` (name -> tensor) under which Pyro's param store no longer
    knows their tensors: where ``store.param_name(named[name]) != name``.

    ``param_name`` hashes a tensor through the Python-level ``Tensor.__hash__`` (about
    0.3 us a lookup), so the store's private ``_params`` (name -> tensor) is asked
    first, in C, whether each name still holds its tensor. A name that does is one
    ``param_name`` confirms: the store sets both maps together, and only a tensor
    object set under two names (which no Pyro call does) could break that. Only the
    other names are asked of ``param_name``; without that dict, every name is.
    """
    private = getattr(store, "_params", None)
    unsure: Iterable[str] = named
    if isinstance(private, dict):
        held = map(operator.is_, map(private.get, named), named.values())
        unsure = itertools.compress(named, map(operator.not_, held))
    return [name for name in unsure if store.param_name(named[name]) != name]
