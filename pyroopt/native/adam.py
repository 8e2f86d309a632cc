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

import functools
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from pyroopt.native import _entry, specs

#: the C loops (``{name}_f32``, ``{name}_f64``) and their arguments
ADAM_SPEC, CLIPPED_SPEC = specs.ADAM, specs.CLIPPED_ADAM
ADAM_LOOP, CLIPPED_LOOP = ADAM_SPEC.name, CLIPPED_SPEC.name

#: elements per thread; see :data:`pyroopt.native._entry.NUMEL_PER_THREAD`
MIN_NUMEL_PER_THREAD = _entry.NUMEL_PER_THREAD


@functools.cache
def _adam_function(dtype: torch.dtype) -> Any:
    return _entry.typed(ADAM_SPEC, dtype)


@functools.cache
def _clipped_function(dtype: torch.dtype) -> Any:
    return _entry.typed(CLIPPED_SPEC, dtype)


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

    ``steps`` are the counts after this step, one per tensor or one for all; the loop
    computes each tensor's bias corrections from its count as torch does in Python
    (:file:`coefficients.h`).
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
    tensors = {
        "params": params,
        "grads": grads,
        "exp_avgs": exp_avgs,
        "exp_avg_sqs": exp_avg_sqs,
        "max_exp_avg_sqs": max_exp_avg_sqs if amsgrad else None,
    }
    values = {
        "steps": _entry.step_counts(steps, len(params)),
        "lr": lr,
        "beta1": betas[0],
        "beta2": betas[1],
        "eps": eps,
        "weight_decay": weight_decay,
        "decay": 0 if weight_decay == 0 else (2 if decoupled else 1),
        "amsgrad": int(amsgrad),
        "maximize": int(maximize),
    }
    return _entry.run_loop(
        function_for or _adam_function,
        ADAM_SPEC,
        tensors,
        values,
        min_per_thread=MIN_NUMEL_PER_THREAD,
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
    tensors = {"params": params, "grads": grads, "exp_avgs": exp_avgs, "exp_avg_sqs": exp_avg_sqs}
    values = {
        "steps": _entry.step_counts(steps, len(params)),
        "lr": lr,
        "beta1": betas[0],
        "beta2": betas[1],
        "eps": eps,
        "weight_decay": weight_decay,
        "clip_norm": clip_norm,
        "centered_variance": int(centered_variance),
    }
    return _entry.run_loop(
        function_for or _clipped_function,
        CLIPPED_SPEC,
        tensors,
        values,
        min_per_thread=MIN_NUMEL_PER_THREAD,
        writes_grads=True,  # clamped in place, as pyro does
    )
