r"""Adam and AdamW (Kingma & Ba, 2015; Loshchilov & Hutter, 2019), as torch computes them.

For each parameter :math:`\theta` with gradient :math:`g` at its own step :math:`t`:

.. math::

    m &\leftarrow \beta_1 m + (1-\beta_1) g, \qquad
    v \leftarrow \beta_2 v + (1-\beta_2) g^2, \qquad
    \hat v = \max(\hat v, v) \text{ (amsgrad)} \\
    \theta &\leftarrow \theta - \frac{\mathrm{lr}}{1-\beta_1^t}\,
        \frac{m}{\sqrt{v}/\sqrt{1-\beta_2^t} + \epsilon}

Weight decay adds :math:`\lambda\theta` to :math:`g` (Adam) or multiplies
:math:`\theta` by :math:`1-\mathrm{lr}\,\lambda` first (AdamW, or Adam with
``decoupled_weight_decay=True``). ``maximize`` negates :math:`g`.

Example::

    >>> import torch
    >>> from pyroopt.kernels.adam import ADAM
    >>> from pyroopt.kernels.base import Batch
    >>> group = dict(lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0,
    ...              amsgrad=False, maximize=False)
    >>> p, g = [torch.zeros(3)], [torch.ones(3)]
    >>> state = {k: [torch.zeros(3)] for k in ADAM.state_keys(group)}
    >>> ADAM.update(Batch(p, g, state, [1]), group, lambda v: float(v[0]))
    >>> p[0]
    tensor([-0.0010, -0.0010, -0.0010])
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from pyroopt.kernels._coef import addcdiv_, mul_
from pyroopt.kernels.base import Batch, CoefFn, FunctionFor, UpdateRule
from pyroopt.kernels.weight_decay import directed_grads
from pyroopt.native.adam import adam_update


def coefficients(group: Mapping[str, Any], step: int) -> tuple[float, float]:
    """torch's ``-step_size`` and ``bias_correction2_sqrt`` at ``step``, in Python floats:
    ``-(lr / (1 - beta1 ** step))`` and ``(1 - beta2 ** step) ** 0.5`` (a power, not
    ``math.sqrt``). The native loop computes the same bits in C
    (:file:`pyroopt/native/coefficients.h`).

    >>> coefficients({"lr": 0.1, "betas": (0.5, 0.75)}, 1)
    (-0.2, 0.5)
    """
    beta1, beta2 = group["betas"]
    return -(group["lr"] / (1 - beta1**step)), (1 - beta2**step) ** 0.5


class AdamRule(UpdateRule):
    has_native = True

    def __init__(self, decoupled: bool = False) -> None:
        self.decoupled = decoupled

    def state_keys(self, group: Mapping[str, Any]) -> tuple[str, ...]:
        keys = ("exp_avg", "exp_avg_sq")
        return (*keys, "max_exp_avg_sq") if group["amsgrad"] else keys

    def update(self, batch: Batch, group: Mapping[str, Any], coef: CoefFn) -> None:
        params, grads, state, steps = batch
        beta1, beta2 = group["betas"]
        lr, weight_decay, eps = group["lr"], group["weight_decay"], group["eps"]
        decoupled = self.decoupled or group.get("decoupled_weight_decay", False)
        grads = directed_grads(
            params,
            grads,
            maximize=group["maximize"],
            weight_decay=weight_decay,
            mode="decoupled" if decoupled else "l2",
            lr=lr,
        )
        exp_avgs, exp_avg_sqs = state["exp_avg"], state["exp_avg_sq"]
        torch._foreach_lerp_(exp_avgs, grads, 1 - beta1)
        mul_(exp_avg_sqs, beta2)
        torch._foreach_addcmul_(exp_avg_sqs, grads, grads, 1 - beta2)
        if group["amsgrad"]:
            torch._foreach_maximum_(state["max_exp_avg_sq"], exp_avg_sqs)
            exp_avg_sqs = state["max_exp_avg_sq"]
        pairs = [coefficients(group, t) for t in steps]
        neg_step_size = coef([step_size for step_size, _ in pairs])
        bias_correction2_sqrt = coef([root for _, root in pairs])
        denom = torch._foreach_sqrt(exp_avg_sqs)
        torch._foreach_div_(denom, bias_correction2_sqrt)
        torch._foreach_add_(denom, eps)
        addcdiv_(params, exp_avgs, denom, neg_step_size)

    def native_update(
        self, batch: Batch, group: Mapping[str, Any], function_for: FunctionFor | None = None
    ) -> bool:
        params, grads, state, steps = batch
        return adam_update(
            params,
            grads,
            state["exp_avg"],
            state["exp_avg_sq"],
            state.get("max_exp_avg_sq", ()),
            steps,
            lr=group["lr"],
            betas=group["betas"],
            eps=group["eps"],
            weight_decay=group["weight_decay"],
            decoupled=self.decoupled or group.get("decoupled_weight_decay", False),
            amsgrad=group["amsgrad"],
            maximize=group["maximize"],
            function_for=function_for,
        )


ADAM = AdamRule()
ADAMW = AdamRule(decoupled=True)
