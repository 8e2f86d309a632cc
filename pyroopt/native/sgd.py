r"""SGD in one pass over memory: the typed entry to ``pyroopt_sgd_*`` in :file:`sgd.c`.

Computes exactly what :class:`torch.optim.SGD`'s single-tensor loop computes (see
:mod:`pyroopt.kernels.sgd` for the math), bitwise equal in float32 and float64, on
contiguous CPU tensors.

Example::

    >>> import torch
    >>> p, g, buf = torch.zeros(2), torch.tensor([1.0, -2.0]), torch.zeros(2)
    >>> sgd_update([p], [g], [buf], [True], lr=0.1, momentum=0.9, dampening=0.0,
    ...            weight_decay=0.0, nesterov=False, maximize=False)
    True
    >>> p, buf  # the first step takes the gradient as the buffer
    (tensor([-0.1000,  0.2000]), tensor([ 1., -2.]))
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from pyroopt.native import _entry, specs

#: the C loop (``{LOOP}_f32``, ``{LOOP}_f64``) and its arguments
SPEC = specs.SGD
LOOP = SPEC.name

#: elements per thread; see :data:`pyroopt.native._entry.NUMEL_PER_THREAD`
MIN_NUMEL_PER_THREAD = _entry.NUMEL_PER_THREAD


@functools.cache
def _function(dtype: torch.dtype) -> Any:
    return _entry.typed(SPEC, dtype)


def sgd_update(
    params: Sequence[Tensor],
    grads: Sequence[Tensor],
    bufs: Sequence[Tensor],
    fresh: Sequence[bool],
    *,
    lr: float,
    momentum: float,
    dampening: float,
    weight_decay: float,
    nesterov: bool,
    maximize: bool,
    function_for: Callable[[torch.dtype], Any] | None = None,
) -> bool:
    """One SGD step of every tensor in place; ``False`` (nothing changed) if it cannot run.

    ``bufs`` are torch's ``momentum_buffer`` (not read or written, and may be empty,
    when ``momentum`` is 0). On a tensor's first step (``fresh``) its buffer becomes
    its gradient, as torch clones it, whatever ``bufs`` holds.

    It runs when the native library is loaded and all tensors are contiguous (and not
    lazily negated), on the CPU, and of one dtype, float32 or float64, with matching
    sizes. Every tensor it writes is marked modified for autograd.

    ``function_for`` picks the C function per dtype: by default this module's, which the
    library's self-check (:mod:`pyroopt.native.selfcheck`) has passed; the check itself
    passes the unchecked one.
    """
    if len(fresh) != len(params):
        raise ValueError(f"fresh has {len(fresh)} flags for {len(params)} tensors")
    if not params:
        return True
    tensors = {
        "params": params,
        "grads": grads,
        "momentum_buffers": bufs if momentum != 0 else None,  # read with momentum only
    }
    values = {
        "fresh": _entry.flags(fresh),
        "lr": lr,
        "weight_decay": weight_decay,
        "momentum": momentum,
        "dampening": dampening,
        "nesterov": int(nesterov),
        "maximize": int(maximize),
    }
    return _entry.run_loop(
        function_for or _function, SPEC, tensors, values, min_per_thread=MIN_NUMEL_PER_THREAD
    )
