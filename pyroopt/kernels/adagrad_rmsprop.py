r"""Pyro's AdagradRMSProp: Adagrad's step-size schedule with an RMSprop-style average.

For each parameter at its own step :math:`t` (Kucukelbir et al., 2016, ADVI):

.. math::

    s &\leftarrow \begin{cases} g^2 & t = 1 \\ (1-\tau) s + \tau g^2 & t > 1\end{cases},
    \qquad
    \theta \leftarrow \theta - \eta\, t^{-1/2 + \delta}\, \frac{g}{1 + \sqrt{s}}

with ``eta`` :math:`\eta`, ``t`` :math:`\tau` and ``delta`` :math:`\delta`. The numbers
are those of :class:`pyro.optim.adagrad_rmsprop.AdagradRMSProp`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from pyroopt.kernels._coef import addcdiv_, mul_
from pyroopt.kernels.base import Batch, CoefFn, UpdateRule
from pyroopt.native.adagrad_rmsprop import adagrad_rmsprop_update


class AdagradRMSPropRule(UpdateRule):
    step_as_tensor = False  # pyro keeps an int
    state_before_first_step = True  # pyro creates it with the optimizer
    has_native = True

    def state_keys(self, group: Mapping[str, Any]) -> tuple[str, ...]:
        return ("sum",)

    def update(self, batch: Batch, group: Mapping[str, Any], coef: CoefFn) -> None:
        params, grads, state, steps = batch
        sums, tau = state["sum"], group["t"]
        # pyro's own operations: s <- g * g on the first step (s is still zero: 0 * s
        # + g * g), then s *= 1 - t and s += (t * g) * g, two roundings where addcmul
        # would fuse the multiply-add.
        mul_(sums, coef([1.0 - tau if t > 1 else 0.0 for t in steps]))
        scaled = torch._foreach_mul(grads, coef([tau if t > 1 else 1.0 for t in steps]))
        torch._foreach_mul_(scaled, grads)
        torch._foreach_add_(sums, scaled)
        denom = torch._foreach_sqrt(sums)
        torch._foreach_add_(denom, 1.0)
        neg_lr = coef([-(group["eta"] * t ** (-0.5 + group["delta"])) for t in steps])
        addcdiv_(params, grads, denom, neg_lr)

    def native_update(self, batch: Batch, group: Mapping[str, Any]) -> bool:
        params, grads, state, steps = batch
        if not params:
            return True
        counts = list(steps) if len(steps) > 1 else [steps[0]] * len(params)
        return adagrad_rmsprop_update(
            params,
            grads,
            state["sum"],
            [t == 1 for t in counts],
            [-(group["eta"] * t ** (-0.5 + group["delta"])) for t in counts],
            t=group["t"],
        )
