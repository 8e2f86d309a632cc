r"""Rprop, resilient backpropagation (Riedmiller & Braun, 1993), as torch computes it.

Each element keeps its own step size :math:`\Delta` (starting at ``lr``) and the
previous gradient :math:`g'`:

.. math::

    \Delta &\leftarrow \operatorname{clamp}\bigl(\Delta\cdot
        \begin{cases}\eta_+ & g g' > 0\\ \eta_- & g g' < 0 \\ 1 & \text{else}\end{cases},
        \Delta_{\min}, \Delta_{\max}\bigr), \\
    g &\leftarrow 0 \text{ where } g g' < 0, \qquad
    \theta \leftarrow \theta - \operatorname{sign}(g)\,\Delta, \qquad g' \leftarrow g

with ``etas`` :math:`(\eta_-, \eta_+)` and ``step_sizes`` :math:`(\Delta_{\min},
\Delta_{\max})`; ``maximize`` negates :math:`g` first.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from pyroopt.kernels._coef import TensorList, mul_
from pyroopt.kernels.base import CoefFn, UpdateRule
from pyroopt.kernels.weight_decay import directed_grads


class RpropRule(UpdateRule):
    def state_keys(self, group: Mapping[str, Any]) -> tuple[str, ...]:
        return ("prev", "step_size")

    def reads_params(self, group: Mapping[str, Any]) -> bool:
        return False

    def update(
        self,
        params: TensorList,
        grads: TensorList,
        state: Mapping[str, TensorList],
        steps: Sequence[int],
        group: Mapping[str, Any],
        coef: CoefFn,
    ) -> None:
        eta_minus, eta_plus = group["etas"]
        low, high = group["step_sizes"]
        prevs, step_sizes = state["prev"], state["step_size"]
        grads = directed_grads(
            params, grads, maximize=group["maximize"], weight_decay=0.0, mode="l2", lr=0.0
        )
        if any(t == 1 for t in steps):
            # torch creates the step size at a parameter's first step, filled with lr.
            mul_(step_sizes, coef([0.0 if t == 1 else 1.0 for t in steps]))
            torch._foreach_add_(step_sizes, coef([group["lr"] if t == 1 else 0.0 for t in steps]))
        # sigma = sign(g g') in {-1, 0, 1}. Everything below is arithmetic on sigma:
        # comparisons and torch.where cost several times more per element on CPU.
        sigma = torch._foreach_mul(grads, prevs)
        torch._foreach_sign_(sigma)
        # The step-size factor as the parabola through (-1, eta_-), (0, 1), (1, eta_+).
        half_spread, bend = (eta_plus - eta_minus) / 2, (eta_plus + eta_minus) / 2 - 1
        factors = torch._foreach_mul(sigma, half_spread)
        torch._foreach_add_(factors, 1.0)
        torch._foreach_addcmul_(factors, sigma, sigma, bend)
        torch._foreach_mul_(step_sizes, factors)
        torch._foreach_clamp_min_(step_sizes, low)
        torch._foreach_clamp_max_(step_sizes, high)
        # g' <- g + g min(sigma, 0): zero where the sign flipped, g elsewhere, exactly.
        torch._foreach_clamp_max_(sigma, 0.0)
        torch._foreach_copy_(prevs, grads)
        torch._foreach_addcmul_(prevs, grads, sigma)
        torch._foreach_addcmul_(params, torch._foreach_sign(prevs), step_sizes, -1)
