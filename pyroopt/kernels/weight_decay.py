r"""Gradient direction and weight decay, shared by every update rule.

Three forms of weight decay :math:`\lambda`:

- ``"l2"``: :math:`g \leftarrow g + \lambda\theta` (torch's ``weight_decay`` for Adam,
  SGD, RMSprop, ...), after ``maximize`` negates :math:`g`;
- ``"decoupled"``: :math:`\theta \leftarrow \theta\,(1 - \mathrm{lr}\,\lambda)` before the
  update (AdamW; Adam with ``decoupled_weight_decay=True``);
- ``"decoupled_absolute"``: :math:`\theta \leftarrow \theta\,(1 - \lambda)`, independent
  of the learning rate.

Example::

    >>> import torch
    >>> params, grads = [torch.ones(2)], [torch.ones(2)]
    >>> directed_grads(params, grads, maximize=True, weight_decay=0.5, mode="l2", lr=0.1)[0]
    tensor([-0.5000, -0.5000])
"""

from __future__ import annotations

from typing import Literal

import torch

from pyroopt.kernels._coef import TensorList, mul_

Mode = Literal["l2", "decoupled", "decoupled_absolute"]


def directed_grads(
    params: TensorList,
    grads: TensorList,
    *,
    maximize: bool,
    weight_decay: float,
    mode: Mode,
    lr: float,
) -> TensorList:
    """The gradients to descend along; decoupled decay shrinks ``params`` in place.

    ``grads`` are never modified: a new list is returned where anything changes.
    """
    if maximize:
        grads = torch._foreach_neg(grads)
    if weight_decay == 0:
        return grads
    if mode == "l2":
        return torch._foreach_add(grads, params, alpha=weight_decay)
    if mode == "decoupled":
        mul_(params, 1 - lr * weight_decay)
    elif mode == "decoupled_absolute":
        mul_(params, 1 - weight_decay)
    else:
        raise ValueError(
            f"weight decay mode must be 'l2', 'decoupled' or 'decoupled_absolute', got {mode!r}"
        )
    return grads
