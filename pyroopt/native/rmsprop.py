r"""RMSprop in one pass over memory: the typed entry to ``pyroopt_rmsprop_*`` in
:file:`rmsprop.c`.

Computes exactly what :class:`torch.optim.RMSprop`'s single-tensor loop computes (see
:mod:`pyroopt.kernels.rmsprop` for the math), bitwise equal in float32 and float64, on
contiguous CPU tensors.

Example::

    >>> import torch
    >>> p, g, v = torch.zeros(2), torch.tensor([1.0, -2.0]), torch.zeros(2)
    >>> rmsprop_update([p], [g], [v], [], [], lr=0.01, alpha=0.99, eps=1e-8,
    ...                weight_decay=0.0, momentum=0.0, centered=False, maximize=False)
    True
    >>> p  # g / sqrt(0.01 g^2) = 10 sign(g)
    tensor([-0.1000,  0.1000])
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from pyroopt.native import _entry, specs

#: the C loop (``{LOOP}_f32``, ``{LOOP}_f64``) and its arguments
SPEC = specs.RMSPROP
LOOP = SPEC.name

#: elements per thread; see :data:`pyroopt.native._entry.NUMEL_PER_THREAD`
MIN_NUMEL_PER_THREAD = _entry.NUMEL_PER_THREAD


@functools.cache
def _function(dtype: torch.dtype) -> Any:
    return _entry.typed(SPEC, dtype)


def rmsprop_update(
    params: Sequence[Tensor],
    grads: Sequence[Tensor],
    square_avgs: Sequence[Tensor],
    grad_avgs: Sequence[Tensor],
    bufs: Sequence[Tensor],
    *,
    lr: float,
    alpha: float,
    eps: float,
    weight_decay: float,
    momentum: float,
    centered: bool,
    maximize: bool,
    function_for: Callable[[torch.dtype], Any] | None = None,
) -> bool:
    """One RMSprop step of every tensor in place; ``False`` (nothing changed) if it
    cannot run.

    ``grad_avgs`` (torch's ``grad_avg``) are used only when ``centered``, ``bufs``
    (``momentum_buffer``) only when ``momentum > 0``; otherwise they may be empty.
    It runs where :func:`pyroopt.native.sgd.sgd_update` does.

    ``function_for`` picks the C function per dtype: by default this module's, which the
    library's self-check (:mod:`pyroopt.native.selfcheck`) has passed; the check itself
    passes the unchecked one.
    """
    if not params:
        return True
    tensors = {
        "params": params,
        "grads": grads,
        "square_avgs": square_avgs,
        "grad_avgs": grad_avgs if centered else None,
        "momentum_buffers": bufs if momentum > 0 else None,
    }
    values = {
        "lr": lr,
        "alpha": alpha,
        "eps": eps,
        "weight_decay": weight_decay,
        "momentum": momentum,
        "centered": int(centered),
        "maximize": int(maximize),
    }
    return _entry.run_loop(
        function_for or _function, SPEC, tensors, values, min_per_thread=MIN_NUMEL_PER_THREAD
    )
