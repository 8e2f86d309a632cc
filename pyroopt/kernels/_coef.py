"""Per-parameter coefficients for update rules that run on tensor lists.

A rule is written once with ``torch._foreach_*`` ops over a list of tensors. The
engine calls it on a list that holds either one flat buffer covering every parameter
of a bucket, all at one step count, or one tensor per parameter, each at its own
count. A coefficient that depends on a parameter's step count (Adam's bias
corrections) is therefore a Python ``float`` (the same for every tensor) or a
``list[float]`` (one per tensor); both are the scalar argument of
``torch._foreach_addcdiv_`` and friends, which on the CPU apply it exactly as the
single-tensor op with that Python float would. The one exception, the in-place
``torch._foreach_mul_`` on float16 and bfloat16 tensors, goes through :func:`mul_`.

Example::

    >>> per_param([0.5, 0.5])
    0.5
    >>> per_param([0.5, 0.25])
    [0.5, 0.25]
"""

from __future__ import annotations

import operator
from collections.abc import Sequence
from typing import TypeAlias

import torch
from torch import Tensor

Coef: TypeAlias = float | list[float]
#: What torch's ``_foreach_*`` ops take and return.
TensorList: TypeAlias = list[Tensor] | tuple[Tensor, ...]

#: dtypes whose in-place ``torch._foreach_mul_`` by a Python scalar rounds the scalar
#: to the dtype first (see :func:`mul_`)
_SCALAR_ROUNDING = frozenset({torch.float16, torch.bfloat16})
_DTYPE = operator.attrgetter("dtype")


def per_param(values: Sequence[float]) -> Coef:
    """Coefficient from one value per tensor; a constant list collapses to a float."""
    first = values[0]
    if all(v == first for v in values):
        return float(first)
    return [float(v) for v in values]


def addcdiv_(xs: TensorList, ys: TensorList, zs: TensorList, value: Coef) -> None:
    """``x += value * y / z`` elementwise (torch's ``addcdiv_``)."""
    torch._foreach_addcdiv_(xs, ys, zs, value)


def mul_(xs: TensorList, value: Coef) -> None:
    """``x *= value`` elementwise, with the numbers of ``Tensor.mul_(value)``.

    On the CPU, ``torch._foreach_mul_`` with a Python scalar rounds the scalar to a
    float16 or bfloat16 tensor's dtype before multiplying, where ``Tensor.mul_`` (and
    every other foreach op with a scalar) computes with it in float32: such CPU tensors
    are multiplied one by one. (Elsewhere the foreach op runs, as torch's optimizers
    run it on CUDA.)

    >>> x = [torch.tensor([13.0], dtype=torch.float16)]
    >>> mul_(x, 0.9)
    >>> x[0].item()  # 13 * float16(0.9) would round to 11.6953125
    11.703125
    """
    if not xs or xs[0].device.type != "cpu" or _SCALAR_ROUNDING.isdisjoint(map(_DTYPE, xs)):
        torch._foreach_mul_(xs, value)
        return
    values = value if isinstance(value, list) else [value] * len(xs)
    for x, v in zip(xs, values, strict=True):
        x.mul_(v)
