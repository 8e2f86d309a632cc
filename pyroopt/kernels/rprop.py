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

No torch kernel computes this in one pass. On the CPU, in float32 and float64, the
engine runs pyroopt's C loop (:mod:`pyroopt.native.rprop`, bitwise equal to torch);
elsewhere, or without that library, a chain of torch passes (:meth:`RpropRule.update`),
also equal to torch.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from pyroopt.kernels._coef import mul_
from pyroopt.kernels.base import Batch, CoefFn, FunctionFor, UpdateRule
from pyroopt.kernels.weight_decay import directed_grads
from pyroopt.native.rprop import rprop_update


class RpropRule(UpdateRule):
    """Rprop as :meth:`update` (a chain of torch passes, any device) and as
    :meth:`native_update` (one pass of pyroopt's C loop, CPU float32/float64)."""

    has_native = True

    def state_keys(self, group: Mapping[str, Any]) -> tuple[str, ...]:
        return ("prev", "step_size")

    def update(self, batch: Batch, group: Mapping[str, Any], coef: CoefFn) -> None:
        params, grads, state, steps = batch
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
        # The previous gradients are only read through sigma = sign(g g'), so sigma is
        # computed in their place. sign(NaN) is 0 in torch, as "neither > 0 nor < 0".
        torch._foreach_mul_(prevs, grads)
        torch._foreach_sign_(prevs)
        # Everything below is arithmetic on sigma in {-1, 0, 1} (comparisons and
        # torch.where cost several times more per element on CPU), each step exact for
        # any 0 < eta_- < 1 < eta_+, as torch requires: the factor is
        # max(sigma eta_+, 1) * max(1 + min(sigma, 0), eta_-), one of which is 1.
        factors = torch._foreach_mul(prevs, eta_plus)
        torch._foreach_clamp_min_(factors, 1.0)
        torch._foreach_clamp_max_(prevs, 0.0)
        torch._foreach_add_(prevs, 1.0)  # keep = 0 where the sign flipped, 1 elsewhere
        torch._foreach_mul_(factors, torch._foreach_clamp_min(prevs, eta_minus))
        torch._foreach_mul_(step_sizes, factors)
        torch._foreach_clamp_min_(step_sizes, low)
        torch._foreach_clamp_max_(step_sizes, high)
        # g' <- g, and +0 where the sign flipped, as torch assigns it (keep * g would
        # give -0 for a negative g there, and NaN for an infinite one)
        flipped = [keep == 0 for keep in prevs]
        torch._foreach_copy_(prevs, grads)
        for prev, mask in zip(prevs, flipped, strict=True):
            prev.masked_fill_(mask, 0.0)
        torch._foreach_addcmul_(params, torch._foreach_sign(prevs), step_sizes, -1)

    def native_update(
        self, batch: Batch, group: Mapping[str, Any], function_for: FunctionFor | None = None
    ) -> bool:
        params, grads, state, steps = batch
        if not params:
            return True
        fresh = [t == 1 for t in steps] if len(steps) > 1 else [steps[0] == 1] * len(params)
        return rprop_update(
            params,
            grads,
            state["prev"],
            state["step_size"],
            fresh,
            lr=group["lr"],
            etas=group["etas"],
            step_sizes=group["step_sizes"],
            maximize=group["maximize"],
            function_for=function_for,
        )
