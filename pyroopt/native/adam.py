r"""Adam, AdamW and Pyro's ClippedAdam in one pass over memory: the typed entries to
``pyroopt_adam_*`` and ``pyroopt_clipped_adam_*`` in :file:`adam.c`.

Computes exactly what :class:`torch.optim.Adam`'s single-tensor loop and
:class:`pyro.optim.clipped_adam.ClippedAdam` compute (see :mod:`pyroopt.kernels.adam`
and :mod:`pyroopt.kernels.clipped_adam` for the math), bitwise equal in float32 and
float64, on contiguous CPU tensors.

Example::

    >>> import torch
    >>> p, g, m, v = torch.zeros(2), torch.tensor([1.0, -2.0]), torch.zeros(2), torch.zeros(2)
    >>> adam_update([p], [g], [m], [v], [], [1], lr=0.1, betas=(0.9, 0.999), eps=1e-8,
    ...             weight_decay=0.0, decoupled=False, amsgrad=False, maximize=False)
    True
    >>> p  # the first step moves each element by lr against the sign of its gradient
    tensor([-0.1000,  0.1000])
"""

from __future__ import annotations

import ctypes
import functools
import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from pyroopt.native import _entry

#: the C loops (``{name}_f32``, ``{name}_f64``) and their C signatures
ADAM_LOOP = "pyroopt_adam"
CLIPPED_LOOP = "pyroopt_clipped_adam"
ADAM_ARGTYPES = (
    ctypes.c_int64,  # number of tensors
    *[_entry.POINTERS] * 5,  # params, grads, exp_avg, exp_avg_sq, max_exp_avg_sq
    _entry.INT64S,  # numels
    _entry.DOUBLES,  # per tensor: -lr / (1 - beta1^t)
    _entry.DOUBLES,  # per tensor: (1 - beta2^t) ** 0.5
    *[ctypes.c_double] * 6,  # 1 - beta1, beta2, 1 - beta2, eps, weight_decay, 1 - lr wd
    ctypes.c_int,  # decay: 0 none, 1 L2, 2 decoupled
    ctypes.c_int,  # amsgrad
    ctypes.c_int,  # maximize
    ctypes.c_void_p,  # torch's vector square root, or NULL
    ctypes.c_int,  # threads
    ctypes.c_int64,  # elements per thread, at least
)
CLIPPED_ARGTYPES = (
    ctypes.c_int64,  # number of tensors
    *[_entry.POINTERS] * 4,  # params, grads, exp_avg, exp_avg_sq
    _entry.INT64S,  # numels
    _entry.DOUBLES,  # per tensor: -(lr sqrt(1 - beta2^t) / (1 - beta1^t))
    *[ctypes.c_double] * 7,  # clip_norm, beta1, 1 - beta1, beta2, 1 - beta2, eps, wd
    ctypes.c_int,  # centered_variance
    ctypes.c_void_p,  # torch's vector square root, or NULL
    ctypes.c_int,  # threads
    ctypes.c_int64,  # elements per thread, at least
)

#: elements per thread; see :data:`pyroopt.native._entry.NUMEL_PER_THREAD`
MIN_NUMEL_PER_THREAD = _entry.NUMEL_PER_THREAD


@functools.cache
def _adam_function(dtype: torch.dtype) -> Any:
    return _entry.typed(ADAM_LOOP, dtype, ADAM_ARGTYPES)


@functools.cache
def _clipped_function(dtype: torch.dtype) -> Any:
    return _entry.typed(CLIPPED_LOOP, dtype, CLIPPED_ARGTYPES)


def _per_tensor(steps: Sequence[int], n: int) -> Sequence[int]:
    if len(steps) == n:
        return steps
    if len(steps) == 1:
        return [steps[0]] * n
    raise ValueError(f"{len(steps)} step counts for {n} tensors")


def adam_update(
    params: Sequence[Tensor],
    grads: Sequence[Tensor],
    exp_avgs: Sequence[Tensor],
    exp_avg_sqs: Sequence[Tensor],
    max_exp_avg_sqs: Sequence[Tensor],
    steps: Sequence[int],
    *,
    lr: float,
    betas: tuple[float, float],
    eps: float,
    weight_decay: float,
    decoupled: bool,
    amsgrad: bool,
    maximize: bool,
    function_for: Callable[[torch.dtype], Any] | None = None,
) -> bool:
    """One Adam step of every tensor in place; ``False`` (nothing changed) if it cannot run.

    ``steps`` are the counts after this step, one per tensor or one for all.
    ``max_exp_avg_sqs`` are used only under ``amsgrad`` (else may be empty);
    ``decoupled`` is AdamW's weight decay. It runs when the native library is loaded and
    all tensors are contiguous (not lazily negated), on the CPU, of one dtype (float32
    or float64), with matching sizes. It never writes the gradients.

    ``function_for`` picks the C function per dtype: by default this module's, which the
    library's self-check (:mod:`pyroopt.native.selfcheck`) has passed; the check itself
    passes the unchecked one.
    """
    if not params:
        return True
    steps = _per_tensor(steps, len(params))
    beta1, beta2 = betas
    # torch.optim.Adam's own expressions, in Python floats (step_size = lr / bc1, then
    # negated; bias_correction2 ** 0.5)
    step_sizes = [-(lr / (1 - beta1**t)) for t in steps]
    bc2_sqrts = [(1 - beta2**t) ** 0.5 for t in steps]
    decay = 0 if weight_decay == 0 else (2 if decoupled else 1)
    slots = (params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs if amsgrad else None)
    rest = (
        _entry.doubles(step_sizes),
        _entry.doubles(bc2_sqrts),
        1 - beta1,
        beta2,
        1 - beta2,
        eps,
        weight_decay,
        1 - lr * weight_decay,
        decay,
        int(amsgrad),
        int(maximize),
    )
    return _entry.run_loop(
        function_for or _adam_function, slots, rest, min_per_thread=MIN_NUMEL_PER_THREAD, root=True
    )


def clipped_adam_update(
    params: Sequence[Tensor],
    grads: Sequence[Tensor],
    exp_avgs: Sequence[Tensor],
    exp_avg_sqs: Sequence[Tensor],
    steps: Sequence[int],
    *,
    lr: float,
    betas: tuple[float, float],
    eps: float,
    weight_decay: float,
    clip_norm: float,
    centered_variance: bool,
    function_for: Callable[[torch.dtype], Any] | None = None,
) -> bool:
    """One step of Pyro's ClippedAdam on every tensor in place (``lr`` already decayed
    for this call); ``False`` (nothing changed) if it cannot run.

    Like pyro, it clamps the gradients in place to ``[-clip_norm, clip_norm]``. It runs
    where :func:`adam_update` does.

    ``function_for`` picks the C function per dtype: by default this module's, which the
    library's self-check (:mod:`pyroopt.native.selfcheck`) has passed; the check itself
    passes the unchecked one.
    """
    if not params:
        return True
    steps = _per_tensor(steps, len(params))
    beta1, beta2 = betas
    # pyro's step_size = lr * math.sqrt(bias_correction2) / bias_correction1, negated
    step_sizes = [-(lr * math.sqrt(1 - beta2**t) / (1 - beta1**t)) for t in steps]
    rest = (
        _entry.doubles(step_sizes),
        clip_norm,
        beta1,
        1 - beta1,
        beta2,
        1 - beta2,
        eps,
        weight_decay,
        int(centered_variance),
    )
    return _entry.run_loop(
        function_for or _clipped_function,
        (params, grads, exp_avgs, exp_avg_sqs),
        rest,
        min_per_thread=MIN_NUMEL_PER_THREAD,
        root=True,
        writes_grads=True,  # clamped in place, as pyro does
    )
