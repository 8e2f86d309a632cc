r"""Pyro's AdagradRMSProp: Adagrad's step-size schedule with an RMSprop-style average.

For each parameter at its own step :math:`t` (Kucukelbir et al., 2016, ADVI):

.. math::

    s &\leftarrow \begin{cases} g^2 & t = 1 \\ (1-\tau) s + \tau g^2 & t > 1\end{cases},
    \qquad
    \theta \leftarrow \theta - \eta\, t^{-1/2 + \delta}\, \frac{g}{1 + \sqrt{s}}

with ``eta`` :math:`\eta`, ``t`` :math:`\tau` and ``delta`` :math:`\delta`. The numbers
are those of :class:`pyro.optim.adagrad_rmsprop.AdagradRMSProp`, complex parameters
included: like it, :meth:`AdagradRMSPropRule.update` computes in complex arithmetic
(:math:`g^2` is the complex square, not :math:`|g|^2` or a pair of real squares).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from pyroopt.kernels._coef import TensorList, addcdiv_, mul_
from pyroopt.kernels.base import Batch, CoefFn, FunctionFor, UpdateRule
from pyroopt.native.adagrad_rmsprop import adagrad_rmsprop_update


def learning_rate(group: Mapping[str, Any], step: int) -> float:
    """pyro's step size at ``step``: ``eta * step ** (-0.5 + delta)``. The native loop
    computes the same bits in C (:file:`pyroopt/native/coefficients.h`)."""
    return group["eta"] * step ** (-0.5 + group["delta"])


class AdagradRMSPropRule(UpdateRule):
    step_as_tensor = False  # pyro keeps an int
    state_before_first_step = True  # pyro creates it with the optimizer
    complex_as_real = False  # pyro squares a complex gradient as a complex number
    has_native = True

    def state_keys(self, group: Mapping[str, Any]) -> tuple[str, ...]:
        return ("sum",)

    def update(self, batch: Batch, group: Mapping[str, Any], coef: CoefFn) -> None:
        params, grads, state, steps = batch
        sums, tau = state["sum"], group["t"]
        (new_sums, new_grads), (old_sums, old_grads) = _by_first_step(steps, sums, grads)
        if new_sums:
            # pyro's own operations: the sum is replaced by g * g on the first step ...
            torch._foreach_copy_(new_sums, torch._foreach_mul(new_grads, new_grads))
        if old_sums:
            # ... and after it s *= 1 - t, then s += (t * g) * g: two roundings where
            # addcmul would fuse the multiply-add
            mul_(old_sums, 1.0 - tau)
            scaled = torch._foreach_mul(old_grads, tau)
            torch._foreach_mul_(scaled, old_grads)
            torch._foreach_add_(old_sums, scaled)
        denom = torch._foreach_sqrt(sums)
        torch._foreach_add_(denom, 1.0)
        neg_lr = coef([-learning_rate(group, t) for t in steps])
        addcdiv_(params, grads, denom, neg_lr)

    def native_update(
        self, batch: Batch, group: Mapping[str, Any], function_for: FunctionFor | None = None
    ) -> bool:
        params, grads, state, steps = batch
        if not params:
            return True
        return adagrad_rmsprop_update(
            params,
            grads,
            state["sum"],
            steps,
            eta=group["eta"],
            delta=group["delta"],
            t=group["t"],
            function_for=function_for,
        )


def _by_first_step(
    steps: Sequence[int], *lists: TensorList
) -> tuple[tuple[TensorList, ...], tuple[TensorList, ...]]:
    """``lists`` split into the tensors at their first step and the others.

    ``steps`` holds one count per tensor, or a single count standing for all.
    """
    if len(steps) == 1 or all(t == steps[0] for t in steps):
        everything: tuple[TensorList, ...] = lists
        nothing: tuple[TensorList, ...] = tuple([] for _ in lists)
        return (everything, nothing) if steps[0] == 1 else (nothing, everything)
    first = [t == 1 for t in steps]
    return (
        tuple([x for x, f in zip(xs, first, strict=True) if f] for xs in lists),
        tuple([x for x, f in zip(xs, first, strict=True) if not f] for xs in lists),
    )
