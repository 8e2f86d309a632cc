r"""Pyro's ClippedAdam: Adam with elementwise gradient clamping and learning-rate decay.

For each parameter at its own step :math:`t`, with :math:`c` = ``clip_norm``:

.. math::

    g &\leftarrow \operatorname{clamp}(g, -c, c) + \lambda\theta, \qquad
    m \leftarrow \beta_1 m + (1-\beta_1) g, \\
    v &\leftarrow \beta_2 v + (1-\beta_2)\, r^2, \quad
        r = g - m \text{ if centered\_variance else } g, \\
    \theta &\leftarrow \theta - \mathrm{lr}\,\frac{\sqrt{1-\beta_2^t}}{1-\beta_1^t}
        \frac{m}{\sqrt v + \epsilon}

and ``lr`` is multiplied by ``lrd`` on every call of the optimizer, before the update.
Despite its name, ``clip_norm`` bounds each gradient *element*, not a norm. The numbers
are those of :class:`pyro.optim.clipped_adam.ClippedAdam`. Like it, pyroopt may clamp
``param.grad`` in place (it does when it updates parameters one by one, not when it
works on a flat copy of the gradients): do not read gradients after the step.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch

from pyroopt.kernels._coef import addcdiv_, mul_
from pyroopt.kernels.base import Batch, CoefFn, FunctionFor, UpdateRule
from pyroopt.kernels.weight_decay import directed_grads
from pyroopt.native.adam import clipped_adam_update


def step_size(group: Mapping[str, Any], step: int) -> float:
    """pyro's step size at ``step``, negated, in Python floats:
    ``-(lr * math.sqrt(1 - beta2 ** step) / (1 - beta1 ** step))``. The native loop
    computes the same bits in C (:file:`pyroopt/native/coefficients.h`).

    >>> step_size({"lr": 0.1, "betas": (0.5, 0.75)}, 1)
    -0.1
    """
    beta1, beta2 = group["betas"]
    return -(group["lr"] * math.sqrt(1 - beta2**step) / (1 - beta1**step))


class ClippedAdamRule(UpdateRule):
    step_as_tensor = False  # pyro keeps an int
    has_native = True

    def state_keys(self, group: Mapping[str, Any]) -> tuple[str, ...]:
        return ("exp_avg", "exp_avg_sq")

    def advances_group(self, group: Mapping[str, Any]) -> bool:
        return group["lrd"] != 1

    def advance_group(self, group: dict[str, Any]) -> None:
        group["lr"] *= group["lrd"]

    def update(self, batch: Batch, group: Mapping[str, Any], coef: CoefFn) -> None:
        params, grads, state, steps = batch
        beta1, beta2 = group["betas"]
        lr, clip = group["lr"], group["clip_norm"]
        for g in grads:  # in place, as pyro's ClippedAdam does: no new memory per step
            g.clamp_(-clip, clip)
        grads = directed_grads(
            params, grads, maximize=False, weight_decay=group["weight_decay"], mode="l2", lr=lr
        )
        exp_avgs, exp_avg_sqs = state["exp_avg"], state["exp_avg_sq"]
        mul_(exp_avgs, beta1)
        torch._foreach_add_(exp_avgs, grads, alpha=1 - beta1)
        spread = torch._foreach_sub(grads, exp_avgs) if group["centered_variance"] else grads
        mul_(exp_avg_sqs, beta2)
        torch._foreach_addcmul_(exp_avg_sqs, spread, spread, 1 - beta2)
        denom = torch._foreach_sqrt(exp_avg_sqs)
        torch._foreach_add_(denom, group["eps"])
        neg_step_size = coef([step_size(group, t) for t in steps])
        addcdiv_(params, exp_avgs, denom, neg_step_size)

    def native_update(
        self, batch: Batch, group: Mapping[str, Any], function_for: FunctionFor | None = None
    ) -> bool:
        params, grads, state, steps = batch
        return clipped_adam_update(
            params,
            grads,
            state["exp_avg"],
            state["exp_avg_sq"],
            steps,
            lr=group["lr"],
            betas=group["betas"],
            eps=group["eps"],
            weight_decay=group["weight_decay"],
            clip_norm=group["clip_norm"],
            centered_variance=group["centered_variance"],
            function_for=function_for,
        )
