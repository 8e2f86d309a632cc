r"""Rprop in one pass over memory: the typed entry to ``pyroopt_rprop_*`` in :file:`rprop.c`.

Computes exactly what :class:`torch.optim.Rprop` computes (see
:mod:`pyroopt.kernels.rprop` for the math), bitwise equal in float32 and float64, on
contiguous CPU tensors.

Example::

    >>> import torch
    >>> p, g = torch.zeros(3), torch.tensor([1.0, -1.0, 0.0])
    >>> prev, size = torch.tensor([1.0, 1.0, 1.0]), torch.full((3,), 0.1)
    >>> rprop_update([p], [g], [prev], [size], [False], lr=0.1, etas=(0.5, 1.2),
    ...              step_sizes=(1e-6, 50.0), maximize=False)
    True
    >>> p, size, prev  # grew where the sign held, shrank and skipped where it flipped
    (tensor([-0.1200,  0.0000,  0.0000]), tensor([0.1200, 0.0500, 0.1000]), tensor([1., 0., 0.]))
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from pyroopt.native import _entry, specs

#: the C loop (``{LOOP}_f32``, ``{LOOP}_f64``) and its arguments
SPEC = specs.RPROP
LOOP = SPEC.name

#: elements per thread; see :data:`pyroopt.native._entry.NUMEL_PER_THREAD`
MIN_NUMEL_PER_THREAD = _entry.NUMEL_PER_THREAD


@functools.cache
def _function(dtype: torch.dtype) -> Any:
    """The C entry for ``dtype``, typed; ``None`` without the library, for other dtypes,
    or where its self-check turned it off (:func:`pyroopt.native._entry.typed`)."""
    return _entry.typed(SPEC, dtype)


def rprop_update(
    params: Sequence[Tensor],
    grads: Sequence[Tensor],
    prevs: Sequence[Tensor],
    sizes: Sequence[Tensor],
    fresh: Sequence[bool],
    *,
    lr: float,
    etas: tuple[float, float],
    step_sizes: tuple[float, float],
    maximize: bool,
    function_for: Callable[[torch.dtype], Any] | None = None,
) -> bool:
    r"""One Rprop step of every tensor in place; ``False`` (nothing changed) if it cannot run.

    ``prevs`` and ``sizes`` are the state (torch's ``prev`` and ``step_size``) and
    ``step_sizes`` the bounds :math:`(\Delta_{\min}, \Delta_{\max})`. On a tensor's first
    step (``fresh``) its step size starts at ``lr``, as torch creates it, whatever
    ``sizes`` holds; its ``prev`` must then be zero.

    It runs when the native library is loaded and all tensors are contiguous (and not
    lazily negated), on the CPU, and of one dtype, float32 or float64, with matching
    sizes. Every tensor it writes is marked modified for autograd, as an in-place torch
    operation would be.

    ``function_for`` picks the C function per dtype: by default this module's, which the
    library's self-check (:mod:`pyroopt.native.selfcheck`) has passed; the check itself
    passes the unchecked one.
    """
    if len(fresh) != len(params):  # the loop reads one flag per tensor
        raise ValueError(f"fresh has {len(fresh)} flags for {len(params)} tensors")
    if not params:
        return True
    tensors = {"params": params, "grads": grads, "prevs": prevs, "step_sizes": sizes}
    values = {
        "fresh": _entry.flags(fresh),
        "lr": lr,
        "eta_minus": etas[0],
        "eta_plus": etas[1],
        "step_size_min": step_sizes[0],
        "step_size_max": step_sizes[1],
        "maximize": int(maximize),
    }
    return _entry.run_loop(
        function_for or _function, SPEC, tensors, values, min_per_thread=MIN_NUMEL_PER_THREAD
    )
