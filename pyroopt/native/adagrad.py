r"""Adagrad in one pass over memory: the typed entry to ``pyroopt_adagrad_*`` in
:file:`adagrad.c`.

Computes exactly what :class:`torch.optim.Adagrad`'s single-tensor loop computes (see
:mod:`pyroopt.kernels.adagrad` for the math), bitwise equal in float32 and float64, on
contiguous CPU tensors.

Example::

    >>> import torch
    >>> p, g, s = torch.zeros(2), torch.tensor([2.0, -0.5]), torch.zeros(2)
    >>> adagrad_update([p], [g], [s], [1], lr=0.1, lr_decay=0.0,
    ...                initial_accumulator_value=0.0, weight_decay=0.0, eps=1e-10,
    ...                maximize=False)
    True
    >>> p, s
    (tensor([-0.1000,  0.1000]), tensor([4.0000, 0.2500]))
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from pyroopt.native import _entry, specs

#: the C loop (``{LOOP}_f32``, ``{LOOP}_f64``) and its arguments
SPEC = specs.ADAGRAD
LOOP = SPEC.name

#: elements per thread; see :data:`pyroopt.native._entry.NUMEL_PER_THREAD`
MIN_NUMEL_PER_THREAD = _entry.NUMEL_PER_THREAD


@functools.cache
def _function(dtype: torch.dtype) -> Any:
    return _entry.typed(SPEC, dtype)


def adagrad_update(
    params: Sequence[Tensor],
    grads: Sequence[Tensor],
    sums: Sequence[Tensor],
    steps: Sequence[int],
    *,
    lr: float,
    lr_decay: float,
    initial_accumulator_value: float,
    weight_decay: float,
    eps: float,
    maximize: bool,
    function_for: Callable[[torch.dtype], Any] | None = None,
) -> bool:
    """One Adagrad step of every tensor in place; ``False`` (nothing changed) if it
    cannot run.

    ``steps`` are the counts after this step, one per tensor or one for all; the loop
    computes each tensor's ``clr`` from its count as torch does in Python
    (:file:`coefficients.h`). On a tensor's first step its sum starts at
    ``initial_accumulator_value``, as torch creates it, whatever ``sums`` holds. It runs
    where :func:`pyroopt.native.sgd.sgd_update` does.

    ``function_for`` picks the C function per dtype: by default this module's, which the
    library's self-check (:mod:`pyroopt.native.selfcheck`) has passed; the check itself
    passes the unchecked one.
    """
    if not params:
        return True
    values = {
        "steps": _entry.step_counts(steps, len(params)),
        "lr": lr,
        "lr_decay": lr_decay,
        "initial_accumulator_value": initial_accumulator_value,
        "eps": eps,
        "weight_decay": weight_decay,
        "maximize": int(maximize),
    }
    return _entry.run_loop(
        function_for or _function,
        SPEC,
        {"params": params, "grads": grads, "sums": sums},
        values,
        min_per_thread=MIN_NUMEL_PER_THREAD,
    )
