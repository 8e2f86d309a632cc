r"""Adagrad in one pass over memory: the typed entry to ``pyroopt_adagrad_*`` in
:file:`adagrad.c`.

Computes exactly what :class:`torch.optim.Adagrad`'s single-tensor loop computes (see
:mod:`pyroopt.kernels.adagrad` for the math), bitwise equal in float32 and float64, on
contiguous CPU tensors.

Example::

    >>> import torch
    >>> p, g, s = torch.zeros(2), torch.tensor([2.0, -0.5]), torch.zeros(2)
    >>> adagrad_update([p], [g], [s], [True], [-0.1], initial_accumulator_value=0.0,
    ...                weight_decay=0.0, eps=1e-10, maximize=False)
    True
    >>> p, s
    (tensor([-0.1000,  0.1000]), tensor([4.0000, 0.2500]))
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
LOOP = "pyroopt_adagrad"
ARGTYPES = (
    ctypes.c_int64,  # number of tensors
    *[_entry.POINTERS] * 3,  # params, grads, sums
    _entry.INT64S,  # numels
    _entry.FLAGS,  # fresh: first step, the sum starts at the initial value
    _entry.DOUBLES,  # -clr per tensor
    *[ctypes.c_double] * 3,  # initial_accumulator_value, eps, weight_decay
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


def adagrad_update(
    params: Sequence[Tensor],
    grads: Sequence[Tensor],
    sums: Sequence[Tensor],
    fresh: Sequence[bool],
    neg_lrs: Sequence[float],
    *,
    initial_accumulator_value: float,
    weight_decay: float,
    eps: float,
    maximize: bool,
    function_for: Callable[[torch.dtype], Any] | None = None,
) -> bool:
    """One Adagrad step of every tensor in place; ``False`` (nothing changed) if it
    cannot run.

    ``neg_lrs`` holds each tensor's ``-clr`` (torch's ``lr / (1 + (step - 1) *
    lr_decay)``, negated, as a Python float). On a tensor's first step (``fresh``) its
    sum starts at ``initial_accumulator_value``, as torch creates it, whatever ``sums``
    holds. It runs where :func:`pyroopt.native.sgd.sgd_update` does.

    ``function_for`` picks the C function per dtype: by default this module's, which the
    library's self-check (:mod:`pyroopt.native.selfcheck`) has passed; the check itself
    passes the unchecked one.
    """
    if not (len(fresh) == len(neg_lrs) == len(params)):
        raise ValueError(f"{len(fresh)} flags and {len(neg_lrs)} rates for {len(params)} tensors")
    if not params:
        return True
    rest = (
        _entry.flags(fresh),
        _entry.doubles(neg_lrs),
        initial_accumulator_value,
        eps,
        weight_decay,
        int(maximize),
    )
    return _entry.run_loop(
        function_for or _function,
        (params, grads, sums),
        rest,
        min_per_thread=MIN_NUMEL_PER_THREAD,
        root=True,
    )
