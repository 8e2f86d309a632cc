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

import ctypes
import functools
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from pyroopt.native import _entry

#: the C loop (``{LOOP}_f32``, ``{LOOP}_f64``) and its C signature
LOOP = "pyroopt_rmsprop"
ARGTYPES = (
    ctypes.c_int64,  # number of tensors
    *[_entry.POINTERS] * 5,  # params, grads, square_avg, grad_avg, momentum_buffer
    _entry.INT64S,  # numels
    *[ctypes.c_double] * 6,  # lr, alpha, 1 - alpha, eps, weight_decay, momentum
    ctypes.c_int,  # centered
    ctypes.c_int,  # maximize
    ctypes.c_void_p,  # torch's vector square root, or NULL
    ctypes.c_int,  # threads
    ctypes.c_int64,  # elements per thread, at least
)

#: elements per thread; see :data:`pyroopt.native._entry.NUMEL_PER_THREAD`
MIN_NUMEL_PER_THREAD = _entry.NUMEL_PER_THREAD


@functools.cache
def _function(dtype: torch.dtype) -> Any:
    return _entry.typed(LOOP, dtype, ARGTYPES)


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
    slots = (
        params,
        grads,
        square_avgs,
        grad_avgs if centered else None,
        bufs if momentum > 0 else None,
    )
    rest = (lr, alpha, 1 - alpha, eps, weight_decay, momentum, int(centered), int(maximize))
    return _entry.run_loop(
        function_for or _function, slots, rest, min_per_thread=MIN_NUMEL_PER_THREAD, root=True
    )
