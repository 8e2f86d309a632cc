"""Per-parameter coefficients for update rules that run on flat buffers or tensor lists.

A kernel is written once with ``torch._foreach_*`` ops over a list of tensors. The
engine calls it either on a *list* of tensors (one per parameter) or on a list that
holds one *flat* buffer covering every parameter of a bucket. A coefficient that may
differ between parameters (Adam's bias correction, which depends on each parameter's
own step count) is therefore one of:

- a Python ``float``: the same value for every element;
- a ``list[float]``: one value per tensor of the list;
- a ``list[Tensor]``: one tensor per list entry, broadcast elementwise (on a flat
  buffer this holds one value per element, expanded from per-parameter values).

All three are accepted as the scalar argument of ``torch._foreach_mul_`` and friends.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeAlias

import torch
from torch import Tensor

Coef: TypeAlias = float | list[float] | list[Tensor]
#: What torch's ``_foreach_*`` ops take and return.
TensorList: TypeAlias = list[Tensor] | tuple[Tensor, ...]


def per_param(
    values: Sequence[float],
    sizes: Tensor | None,
    numel: int,
    like: Tensor,
) -> Coef:
    """Coefficient from one value per parameter.

    With ``sizes`` (element count of each parameter, as a tensor) the values are
    expanded to one per element of a flat buffer of ``numel`` elements; without it
    they are returned as a list for a per-parameter tensor list. A constant list
    collapses to a plain float, which is the cheapest form for every op.
    """
    first = values[0]
    if all(v == first for v in values):
        return float(first)
    if sizes is None:
        return [float(v) for v in values]
    expanded = torch.tensor(values, dtype=like.dtype, device=like.device)
    return [torch.repeat_interleave(expanded, sizes, output_size=numel)]


def addcdiv_(xs: TensorList, ys: TensorList, zs: TensorList, value: Coef) -> None:
    """``x += value * y / z`` elementwise, for every coefficient form."""
    _accumulate(xs, ys, zs, value, torch._foreach_addcdiv_, torch._foreach_div)


def addcmul_(xs: TensorList, ys: TensorList, zs: TensorList, value: Coef) -> None:
    """``x += value * y * z`` elementwise, for every coefficient form."""
    _accumulate(xs, ys, zs, value, torch._foreach_addcmul_, torch._foreach_mul)


def _accumulate(
    xs: TensorList,
    ys: TensorList,
    zs: TensorList,
    value: Coef,
    fused: Callable[..., None],
    combine: Callable[[TensorList, TensorList], TensorList],
) -> None:
    """``x += value * combine(y, z)``: torch's fused op takes a float or one value per
    tensor, but not one value per element, which needs the product spelled out."""
    if value and not isinstance(value, float) and isinstance(value[0], Tensor):
        terms = combine(ys, zs)
        torch._foreach_mul_(terms, value)
        torch._foreach_add_(xs, terms)
    else:
        fused(xs, ys, zs, value)


def mul_(xs: TensorList, value: Coef) -> None:
    """``x *= value`` elementwise, for every coefficient form."""
    torch._foreach_mul_(xs, value)
