"""Per-parameter coefficients for update rules that run on tensor lists.

A rule is written once with ``torch._foreach_*`` ops over a list of tensors. The
engine calls it on a list that holds either one flat buffer covering every parameter
of a bucket, all at one step count, or one tensor per parameter, each at its own
count. A coefficient that depends on a parameter's step count (Adam's bias
corrections) is therefore a Python ``float`` (the same for every tensor) or a
``list[float]`` (one per tensor); both are the scalar argument of
``torch._foreach_mul_`` and friends, which on the CPU apply it exactly as the
single-tensor op with that Python float would.

Example::

    >>> per_param([0.5, 0.5])
    0.5
    >>> per_param([0.5, 0.25])
    [0.5, 0.25]
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeAlias

import torch
from torch import Tensor

Coef: TypeAlias = float | list[float]
#: What torch's ``_foreach_*`` ops take and return.
TensorList: TypeAlias = list[Tensor] | tuple[Tensor, ...]


def per_param(values: Sequence[float]) -> Coef:
    """Coefficient from one value per tensor; a constant list collapses to a float."""
    first = values[0]
    if all(v == first for v in values):
        return float(first)
    return [float(v) for v in values]


def addcdiv_(xs: TensorList, ys: TensorList, zs: TensorList, value: Coef) -> None:
    """``x += value * y / z`` elementwise (torch's ``addcdiv_``)."""
    torch._foreach_addcdiv_(xs, ys, zs, value)


def addcmul_(xs: TensorList, ys: TensorList, zs: TensorList, value: Coef) -> None:
    """``x += value * y * z`` elementwise (torch's ``addcmul_``)."""
    torch._foreach_addcmul_(xs, ys, zs, value)


def mul_(xs: TensorList, value: Coef) -> None:
    """``x *= value`` elementwise."""
    torch._foreach_mul_(xs, value)
