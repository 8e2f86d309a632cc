r"""Adagrad (Duchi, Hazan & Singer, 2011), as torch computes it.

For each parameter at its own step :math:`t`:

.. math::

    g &\leftarrow \pm g + \lambda\theta, \qquad
    s \leftarrow s + g^2 \quad (s = s_0 \text{ before the first step}), \\
    \theta &\leftarrow \theta - \frac{\mathrm{lr}}{1 + (t-1)\,\mathrm{lr\_decay}}\,
        \frac{g}{\sqrt{s} + \epsilon}

with weight decay :math:`\lambda` and ``initial_accumulator_value`` :math:`s_0`;
``maximize`` negates :math:`g` first. The numbers are those of
:class:`torch.optim.Adagrad`'s single-tensor loop.

torch creates ``sum`` (filled with :math:`s_0`) and a ``step`` of 0 with the optimizer,
before any step: :meth:`AdagradRule.initial_state` gives that state. The update also
starts every parameter at its first step from :math:`s_0`, whatever ``sum`` holds, so
it computes torch's numbers from zero-initialised state too.

Example::

    >>> import torch
    >>> from pyroopt.kernels._coef import per_param
    >>> from pyroopt.kernels.base import Batch
    >>> group = dict(lr=0.1, lr_decay=0.0, weight_decay=0.0, initial_accumulator_value=0.0,
    ...              eps=1e-10, maximize=False)
    >>> p, g = [torch.zeros(2)], [torch.tensor([2.0, -0.5])]
    >>> state = AdagradRule().initial_state(p[0], group)
    >>> AdagradRule().update(Batch(p, g, {"sum": [state["sum"]]}, [1]), group, per_param)
    >>> p[0]
    tensor([-0.1000,  0.1000])
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from pyroopt.kernels._coef import addcdiv_
from pyroopt.kernels.base import Batch, CoefFn, FunctionFor, UpdateRule
from pyroopt.kernels.weight_decay import directed_grads
from pyroopt.native.adagrad import adagrad_update


def learning_rate(group: Mapping[str, Any], step: int) -> float:
    """torch's ``clr`` at ``step``: ``lr / (1 + (step - 1) * lr_decay)`` (its step count
    is a float, read with ``item()``). The native loop computes the same bits in C
    (:file:`pyroopt/native/coefficients.h`)."""
    return group["lr"] / (1 + (float(step) - 1) * group["lr_decay"])


class AdagradRule(UpdateRule):
    """Adagrad as :meth:`update` (a chain of torch passes, any device) and as
    :meth:`native_update` (one pass of pyroopt's C loop, CPU float32/float64)."""

    state_before_first_step = True  # torch creates it with the optimizer
    has_native = True

    def state_keys(self, group: Mapping[str, Any]) -> tuple[str, ...]:
        return ("sum",)

    def initial_state(self, param: Tensor, group: Mapping[str, Any]) -> dict[str, Tensor]:
        """The state torch creates for ``param`` with the optimizer (``step`` aside)."""
        value = group["initial_accumulator_value"]
        if param.is_complex():
            value = complex(value, value)
        return {"sum": torch.full_like(param, value, memory_format=torch.preserve_format)}

    def update(self, batch: Batch, group: Mapping[str, Any], coef: CoefFn) -> None:
        params, grads, state, steps = batch
        sums = state["sum"]
        if any(t == 1 for t in steps):
            fresh = [t == 1 for t in steps] if len(steps) > 1 else [True] * len(sums)
            for s, f in zip(sums, fresh, strict=True):
                if f:
                    s.fill_(group["initial_accumulator_value"])
        grads = directed_grads(
            params,
            grads,
            maximize=group["maximize"],
            weight_decay=group["weight_decay"],
            mode="l2",
            lr=group["lr"],
        )
        torch._foreach_addcmul_(sums, grads, grads, 1)
        std = torch._foreach_sqrt(sums)
        torch._foreach_add_(std, group["eps"])
        addcdiv_(params, grads, std, coef([-learning_rate(group, t) for t in steps]))

    def native_update(
        self, batch: Batch, group: Mapping[str, Any], function_for: FunctionFor | None = None
    ) -> bool:
        params, grads, state, steps = batch
        if not params:
            return True
        return adagrad_update(
            params,
            grads,
            state["sum"],
            steps,
            lr=group["lr"],
            lr_decay=group["lr_decay"],
            initial_accumulator_value=group["initial_accumulator_value"],
            weight_decay=group["weight_decay"],
            eps=group["eps"],
            maximize=group["maximize"],
            function_for=function_for,
        )


ADAGRAD = AdagradRule()
