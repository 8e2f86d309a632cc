r"""Stochastic gradient descent with momentum, as torch computes it.

.. math::

    g &\leftarrow \pm g + \lambda\theta, \qquad
    b \leftarrow \begin{cases} g & \text{first step} \\
        \mu b + (1-\tau) g & \text{after} \end{cases} \\
    \theta &\leftarrow \theta - \mathrm{lr}\,(g + \mu b \text{ if nesterov else } b)

with momentum :math:`\mu`, dampening :math:`\tau` and weight decay :math:`\lambda`;
without momentum the step is :math:`\theta \leftarrow \theta - \mathrm{lr}\,g`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from pyroopt.kernels._coef import mul_
from pyroopt.kernels.base import Batch, CoefFn, FunctionFor, UpdateRule
from pyroopt.kernels.weight_decay import directed_grads
from pyroopt.native.sgd import sgd_update


class SGDRule(UpdateRule):
    has_native = True
    saves_step = False

    def state_keys(self, group: Mapping[str, Any]) -> tuple[str, ...]:
        return ("momentum_buffer",) if group["momentum"] != 0 else ()

    def update(self, batch: Batch, group: Mapping[str, Any], coef: CoefFn) -> None:
        params, grads, state, steps = batch
        lr, momentum, weight_decay = group["lr"], group["momentum"], group["weight_decay"]
        grads = directed_grads(
            params, grads, maximize=group["maximize"], weight_decay=weight_decay, mode="l2", lr=lr
        )
        if momentum != 0:
            bufs = state["momentum_buffer"]
            # torch clones the gradient into a parameter's buffer on its first step and
            # updates it with mul_ then add_(alpha) (one fused multiply-add) after.
            fresh = [t == 1 for t in steps] if len(steps) > 1 else [steps[0] == 1] * len(bufs)
            if all(fresh):
                torch._foreach_copy_(bufs, grads)
            elif not any(fresh):
                mul_(bufs, momentum)
                torch._foreach_add_(bufs, grads, alpha=1 - group["dampening"])
            else:
                new = [i for i, f in enumerate(fresh) if f]
                old = [i for i, f in enumerate(fresh) if not f]
                torch._foreach_copy_([bufs[i] for i in new], [grads[i] for i in new])
                kept = [bufs[i] for i in old]
                mul_(kept, momentum)
                torch._foreach_add_(kept, [grads[i] for i in old], alpha=1 - group["dampening"])
            grads = torch._foreach_add(grads, bufs, alpha=momentum) if group["nesterov"] else bufs
        torch._foreach_add_(params, grads, alpha=-lr)

    def native_update(
        self, batch: Batch, group: Mapping[str, Any], function_for: FunctionFor | None = None
    ) -> bool:
        params, grads, state, steps = batch
        if not params:
            return True
        fresh = [t == 1 for t in steps] if len(steps) > 1 else [steps[0] == 1] * len(params)
        return sgd_update(
            params,
            grads,
            state.get("momentum_buffer", ()),
            fresh,
            lr=group["lr"],
            momentum=group["momentum"],
            dampening=group["dampening"],
            weight_decay=group["weight_decay"],
            nesterov=group["nesterov"],
            maximize=group["maximize"],
            function_for=function_for,
        )
