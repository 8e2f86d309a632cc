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

from pyroopt.kernels.base import Batch, CoefFn, UpdateRule
from pyroopt.kernels.weight_decay import directed_grads


class SGDRule(UpdateRule):
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
            # A parameter's first step sets its buffer to the gradient (torch clones it).
            keep = coef([momentum if t > 1 else 0.0 for t in steps])
            take = coef([1 - group["dampening"] if t > 1 else 1.0 for t in steps])
            torch._foreach_mul_(bufs, keep)
            if isinstance(take, float):
                torch._foreach_add_(bufs, grads, alpha=take)
            else:
                torch._foreach_add_(bufs, torch._foreach_mul(grads, take))
            grads = torch._foreach_add(grads, bufs, alpha=momentum) if group["nesterov"] else bufs
        torch._foreach_add_(params, grads, alpha=-lr)
