r"""Gradient clipping over many parameters at once.

Per parameter, as pyro.optim does it (norm first, then value):

.. math::

    g \leftarrow g \cdot \min\Bigl(1, \frac{c_\text{norm}}{\lVert g\rVert_2 + 10^{-6}}\Bigr),
    \qquad g \leftarrow \operatorname{clamp}(g, -c_\text{value}, c_\text{value})

and, new in pyroopt, across all parameters of a step with
:math:`\lVert g\rVert_2` the norm of all their gradients together:

.. math::

    g_i \leftarrow g_i \cdot \min\Bigl(1, \frac{c_\text{global}}
        {\sqrt{\sum_i \lVert g_i\rVert_2^2} + 10^{-6}}\Bigr)

Parameters that share a clip setting are clipped with one ``torch._foreach_*`` call
per setting, never one Python-level call per parameter.

Example::

    >>> import torch
    >>> grads = [torch.tensor([3.0, 4.0]), torch.tensor([0.1])]
    >>> norms = grad_norms(grads)
    >>> clip_norms_(grads, norms, [1.0, 1.0])
    >>> grads[0]
    tensor([0.6000, 0.8000])
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

#: Keys a per-parameter ``clip_args`` dict may hold.
PER_PARAM_KEYS = frozenset({"clip_norm", "clip_value"})
#: Keys only a ``clip_args`` dict (not a callable's result) may hold.
GLOBAL_KEYS = frozenset({"clip_global_norm"})

_EPS = 1e-6  # as in torch.nn.utils.clip_grad_norm_


def validate_clip_args(clip_args: Any, *, allow_global: bool, where: str) -> dict[str, float]:
    """Check one ``clip_args`` dict; return it with ``None`` entries dropped."""
    if not isinstance(clip_args, Mapping):
        raise TypeError(f"{where} must be a dict, got {type(clip_args).__name__}: {clip_args!r}")
    allowed = PER_PARAM_KEYS | GLOBAL_KEYS if allow_global else PER_PARAM_KEYS
    unknown = sorted(set(clip_args) - allowed)
    if unknown:
        extra = "" if allow_global else " (clip_global_norm is only accepted in a clip_args dict)"
        raise ValueError(
            f"{where} has unknown keys {unknown}; allowed keys are {sorted(allowed)}{extra}"
        )
    clean: dict[str, float] = {}
    for key, value in clip_args.items():
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TypeError(f"{where}[{key!r}] must be a number, got {value!r}")
        if not value >= 0 or value == float("inf"):
            raise ValueError(f"{where}[{key!r}] must be a finite number >= 0, got {value!r}")
        clean[key] = float(value)
    return clean


def grad_norms(grads: Sequence[Tensor]) -> list[Tensor]:
    """The L2 norm of each gradient, in one vectorized call."""
    return list(torch._foreach_norm(list(grads), 2))


def clip_norms_(
    grads: Sequence[Tensor], norms: Sequence[Tensor], max_norms: Sequence[float]
) -> None:
    """Scale each gradient to norm at most its ``max_norms`` entry, in place.

    Bit for bit what ``torch.nn.utils.clip_grad_norm_(p, c)`` does to each one, as
    pyro.optim calls it: the total norm of one gradient is the norm of its norm (a
    reduction of one element, in the norm's dtype), and ``c / (total + 1e-6)`` is
    computed as torch's ``Tensor.__rtruediv__`` does, as a reciprocal times the Python
    number ``c``, which torch's CPU kernels hold in float32 for float16 and bfloat16
    tensors (:func:`scalar_dtype`).
    """
    groups: dict[tuple[torch.device, torch.dtype], list[int]] = {}
    for i, n in enumerate(norms):
        groups.setdefault((n.device, n.dtype), []).append(i)
    with torch.no_grad():
        for (device, dtype), rows in groups.items():
            stacked = torch.stack([norms[i] for i in rows]).unsqueeze(1)
            totals = torch.linalg.vector_norm(stacked, 2, dim=1)
            limits = [max_norms[i] for i in rows]
            limit = torch.tensor(limits, dtype=scalar_dtype(dtype), device=device)
            scale = (totals + _EPS).reciprocal_().mul_(limit).clamp_(max=1.0)
            torch._foreach_mul_([grads[i] for i in rows], list(scale.unbind(0)))


def scalar_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype in which torch's CPU kernels apply a Python number to ``dtype`` tensors.

    >>> scalar_dtype(torch.bfloat16), scalar_dtype(torch.float64)
    (torch.float32, torch.float64)
    """
    return torch.promote_types(dtype, torch.float32)


def clip_values_(grads: Sequence[Tensor], max_values: Sequence[float]) -> None:
    """Clamp each gradient elementwise to ``[-v, v]`` with its ``max_values`` entry ``v``."""
    by_value: dict[float, list[Tensor]] = {}
    for g, v in zip(grads, max_values, strict=True):
        by_value.setdefault(v, []).append(g)
    with torch.no_grad():
        for v, group in by_value.items():
            torch._foreach_clamp_min_(group, -v)
            torch._foreach_clamp_max_(group, v)


def clip_global_norm_(grads: Sequence[Tensor], max_norm: float) -> Tensor:
    """Scale all gradients together to a joint L2 norm of at most ``max_norm``.

    Returns the joint norm before clipping.
    """
    if not grads:
        return torch.tensor(0.0)
    with torch.no_grad():
        first = grads[0].device  # the joint norm lives there, as in clip_grad_norm_
        norms = [n.to(first) for n in grad_norms(grads)]
        total = torch.linalg.vector_norm(torch.stack(norms), 2)
        scale = (max_norm / (total + _EPS)).clamp(max=1.0)
        by_device: dict[torch.device, list[Tensor]] = {}
        for g in grads:
            by_device.setdefault(g.device, []).append(g)
        for device, group in by_device.items():
            torch._foreach_mul_(group, scale.to(device))
    return total


def clip_step_(
    stepped: Sequence[Any], clipped: Sequence[Any], *, track_norms: bool, global_norm: float | None
) -> tuple[dict[Any, Tensor] | None, Tensor | None]:
    """Clip the gradients of one optimizer step in place, as pyro.optim does and then
    jointly (see the module docstring).

    ``stepped``: every slot of the step (with ``.param``), in table order; ``clipped``:
    those with per-parameter clip arguments (``.clip``). Returns each gradient's norm
    before clipping by slot (``None`` where no norm was needed) and the joint norm
    before ``global_norm`` clipped it (``None`` without it).
    """
    norm_clip: list[tuple[Tensor, float]] = []
    value_clip: list[tuple[Tensor, float]] = []
    for slot in clipped:
        if slot.param.grad is not None:
            if "clip_norm" in slot.clip:
                norm_clip.append((slot.param.grad, slot.clip["clip_norm"]))
            if "clip_value" in slot.clip:
                value_clip.append((slot.param.grad, slot.clip["clip_value"]))
    if not (track_norms or norm_clip or value_clip or global_norm is not None):
        return None, None
    with_grad = [slot for slot in stepped if slot.param.grad is not None]
    norms = None
    if track_norms or norm_clip:
        values = grad_norms([slot.param.grad for slot in with_grad])
        norms = dict(zip(with_grad, values, strict=True))
        by_grad = {id(slot.param.grad): n for slot, n in norms.items()}
        if norm_clip:
            clip_norms_(
                [g for g, _ in norm_clip],
                [by_grad[id(g)] for g, _ in norm_clip],
                [c for _, c in norm_clip],
            )
    if value_clip:
        clip_values_([g for g, _ in value_clip], [c for _, c in value_clip])
    joint = None
    if global_norm is not None:
        joint = clip_global_norm_([slot.param.grad for slot in with_grad], global_norm)
    return norms, joint


def all_finite(grads: Sequence[Tensor | None]) -> bool:
    """Whether every gradient (a sparse one's stored values) is free of NaN and Inf,
    in one sync per device."""
    values = [g._values() if g.is_sparse else g for g in grads if g is not None]
    values = [v for v in values if v.numel()]
    # The max-norm cannot overflow for finite values, and is NaN or Inf otherwise.
    by_device: dict[torch.device, list[Tensor]] = {}
    for v in values:
        by_device.setdefault(v.device, []).append(v)
    return all(
        bool(torch.stack(list(torch._foreach_norm(group, float("inf")))).isfinite().all())
        for group in by_device.values()
    )
