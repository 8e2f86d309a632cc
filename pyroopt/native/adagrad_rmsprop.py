r"""Pyro's AdagradRMSProp in one pass over memory: the typed entry to
``pyroopt_adagrad_rmsprop_*`` in :file:`adagrad_rmsprop.c`.

Computes exactly what :class:`pyro.optim.adagrad_rmsprop.AdagradRMSProp` computes (see
:mod:`pyroopt.kernels.adagrad_rmsprop` for the math), bitwise equal in float32 and
float64, on contiguous CPU tensors.

Example::

    >>> import torch
    >>> p, g, s = torch.zeros(2), torch.tensor([3.0, -1.0]), torch.zeros(2)
    >>> adagrad_rmsprop_update([p], [g], [s], [1], eta=1.0, delta=0.0, t=0.1)
    True
    >>> p, s  # g / (1 + |g|) on the first step
    (tensor([-0.7500,  0.5000]), tensor([9., 1.]))
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from pyroopt.native import _entry, specs

#: the C loop (``{LOOP}_f32``, ``{LOOP}_f64``) and its arguments
SPEC = specs.ADAGRAD_RMSPROP
LOOP = SPEC.name

#: elements per thread; see :data:`pyroopt.native._entry.NUMEL_PER_THREAD`
MIN_NUMEL_PER_THREAD = _entry.NUMEL_PER_THREAD


@functools.cache
def _function(dtype: torch.dtype) -> Any:
    return _entry.typed(SPEC, dtype)


def adagrad_rmsprop_update(
    params: Sequence[Tensor],
    grads: Sequence[Tensor],
    sums: Sequence[Tensor],
    steps: Sequence[int],
    *,
    eta: float,
    delta: float,
    t: float,
    function_for: Callable[[torch.dtype], Any] | None = None,
) -> bool:
    """One AdagradRMSProp step of every tensor in place; ``False`` (nothing changed) if
    it cannot run.

    ``steps`` are the counts after this step, one per tensor or one for all; the loop
    computes each tensor's step size, pyro's ``eta * step ** (-0.5 + delta)``, from its
    count as pyro does in Python (:file:`coefficients.h`). On a tensor's first step its
    sum becomes ``g * g``, whatever ``sums`` holds. It runs where
    :func:`pyroopt.native.sgd.sgd_update` does.

    ``function_for`` picks the C function per dtype: by default this module's, which the
    library's self-check (:mod:`pyroopt.native.selfcheck`) has passed; the check itself
    passes the unchecked one.
    """
    if not params:
        return True
    values = {"steps": _entry.step_counts(steps, len(params)), "eta": eta, "delta": delta, "t": t}
    return _entry.run_loop(
        function_for or _function,
        SPEC,
        {"params": params, "grads": grads, "sums": sums},
        values,
        min_per_thread=MIN_NUMEL_PER_THREAD,
    )
