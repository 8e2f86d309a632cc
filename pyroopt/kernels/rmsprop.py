r"""RMSprop (Hinton, 2012; centered form from Graves, 2013), as torch computes it.

.. math::

    g &\leftarrow \pm g + \lambda\theta, \qquad
    v \leftarrow \alpha v + (1-\alpha) g^2, \qquad
    \bar g \leftarrow \alpha \bar g + (1-\alpha) g \text{ (centered)} \\
    d &= \sqrt{v - \bar g^2 \text{ (centered) }} + \epsilon, \qquad
    b \leftarrow \mu b + g / d, \qquad
    \theta \leftarrow \theta - \mathrm{lr}\, b \quad (\text{or } \theta - \mathrm{lr}\,g/d
    \text{ without momentum})
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from pyroopt.kernels._coef import mul_
from pyroopt.kernels.base import Batch, CoefFn, FunctionFor, UpdateRule
from pyroopt.kernels.weight_decay import directed_grads
from pyroopt.native.rmsprop import rmsprop_update


class RMSpropRule(UpdateRule):
    has_native = True

    def state_keys(self, group: Mapping[str, Any]) -> tuple[str, ...]:
        keys: tuple[str, ...] = ("square_avg",)
        if group["momentum"] > 0:
            keys += ("momentum_buffer",)
        if group["centered"]:
            keys += ("grad_avg",)
        return keys

    def update(self, batch: Batch, group: Mapping[str, Any], coef: CoefFn) -> None:
        params, grads, state, _steps = batch
        lr, alpha, eps = group["lr"], group["alpha"], group["eps"]
        grads = directed_grads(
            params,
            grads,
            maximize=group["maximize"],
            weight_decay=group["weight_decay"],
            mode="l2",
            lr=lr,
        )
        square_avgs = state["square_avg"]
        mul_(square_avgs, alpha)
        torch._foreach_addcmul_(square_avgs, grads, grads, 1 - alpha)
        if group["centered"]:
            grad_avgs = state["grad_avg"]
            torch._foreach_lerp_(grad_avgs, grads, 1 - alpha)
            avg = torch._foreach_addcmul(square_avgs, grad_avgs, grad_avgs, -1)
            torch._foreach_sqrt_(avg)
        else:
            avg = torch._foreach_sqrt(square_avgs)
        torch._foreach_add_(avg, eps)
        if group["momentum"] > 0:
            bufs = state["momentum_buffer"]
            mul_(bufs, group["momentum"])
            torch._foreach_addcdiv_(bufs, grads, avg)
            torch._foreach_add_(params, bufs, alpha=-lr)
        else:
            torch._foreach_addcdiv_(params, grads, avg, -lr)

    def native_update(
        self, batch: Batch, group: Mapping[str, Any], function_for: FunctionFor | None = None
    ) -> bool:
        params, grads, state, _steps = batch
        return rmsprop_update(
            params,
            grads,
            state["square_avg"],
            state.get("grad_avg", ()),
            state.get("momentum_buffer", ()),
            lr=group["lr"],
            alpha=group["alpha"],
            eps=group["eps"],
            weight_decay=group["weight_decay"],
            momentum=group["momentum"],
            centered=group["centered"],
            maximize=group["maximize"],
            function_for=function_for,
        )
