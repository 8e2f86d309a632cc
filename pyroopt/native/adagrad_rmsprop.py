r"""Pyro's AdagradRMSProp in one pass over memory: the typed entry to
``pyroopt_adagrad_rmsprop_*`` in :file:`adagrad_rmsprop.c`.

Computes exactly what :class:`pyro.optim.adagrad_rmsprop.AdagradRMSProp` computes (see
:mod:`pyroopt.kernels.adagrad_rmsprop` for the math), bitwise equal in float32 and
float64, on contiguous CPU tensors.

Example::

    >>> import torch
    >>> p, g, s = torch.zeros(2), torch.tensor([3.0, -1.0]), torch.zeros(2)
    >>> adagrad_rmsprop_update([p], [g], [s], [True], [-1.0], t=0.1)
    True
    >>> p, s  # g / (1 + |g|) on the first step
    (tensor([-0.7500,  0.5000]), tensor([9., 1.]))
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
LOOP = "pyroopt_adagrad_rmsprop"
ARGTYPES = (
    ctypes.c_int64,  # number of tensors
    *[_entry.POINTERS] * 3,  # params, grads, sums
    _entry.INT64S,  # numels
    _entry.FLAGS,  # fresh: first step, the sum becomes g * g
    _entry.DOUBLES,  # -eta * step ** (-0.5 + delta) per tensor
    *[ctypes.c_double] * 2,  # 1 - t, t
    ctypes.c_void_p,  # torch's vector square root, or NULL
    ctypes.c_int,  # threads
    ctypes.c_int64,  # elements per thread, at least
)

#: elements per thread; see :data:`pyroopt.native._entry.NUMEL_PER_THREAD`
MIN_NUMEL_PER_THREAD = _entry.NUMEL_PER_THREAD


@functools.cache
def _function(dtype: torch.dtype) -> Any:
    return _entry.typed(LOOP, dtype, ARGTYPES)


def adagrad_rmsprop_update(
    params: Sequence[Tensor],
    grads: Sequence[Tensor],
    sums: Sequence[Tensor],
    fresh: Sequence[bool],
    neg_lrs: Sequence[float],
    *,
    t: float,
    function_for: Callable[[torch.dtype], Any] | None = None,
) -> bool:
    """One AdagradRMSProp step of every tensor in place; ``False`` (nothing changed) if
    it cannot run.

    ``neg_lrs`` holds each tensor's ``-lr``, pyro's ``eta * step ** (-0.5 + delta)``
    negated; on a tensor's first step (``fresh``) its sum becomes ``g * g``, whatever
    ``sums`` holds. It runs where :func:`pyroopt.native.sgd.sgd_update` does.

    ``function_for`` picks the C function per dtype: by default this module's, which the
    library's self-check (:mod:`pyroopt.native.selfcheck`) has passed; the check itself
    passes the unchecked one.
    """
    if not (len(fresh) == len(neg_lrs) == len(params)):
        raise ValueError(f"{len(fresh)} flags and {len(neg_lrs)} rates for {len(params)} tensors")
    if not params:
        return True
    rest = (_entry.flags(fresh), _entry.doubles(neg_lrs), 1.0 - t, t)
    return _entry.run_loop(
        function_for or _function,
        (params, grads, sums),
        rest,
        min_per_thread=MIN_NUMEL_PER_THREAD,
        root=True,
    )
