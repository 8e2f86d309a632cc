"""Checks of loaded optimizer state, made before any of it is used.

:func:`check_param_state` checks one parameter's saved entry (pyro.optim's per-parameter
format: a one-parameter optimizer's state dict) and :func:`check_scheduler_state` one
saved under a learning-rate schedule (``{"scheduler": ..., "optimizer": ...}``): the
layout, the hyperparameters whose meaning every torch and pyro optimizer taking them
shares (``lr``, ``betas``, ``eps``, ...) and the kind of the state entries whose kind is
known (``step``, parameter-shaped tensors). For a training checkpoint,
:func:`check_entry_shapes` checks those tensors' shapes against the parameter.

A value of the wrong kind raises ``TypeError``, one out of range ``ValueError``, naming
where the state came from, the parameter, the key, the value and what is allowed. The
checks only read; their callers (``set_state``, ``load``, ``load_state_dict``,
:func:`pyroopt.checkpoint.load_training`) run them on every entry before anything
changes, so that bad state is refused whole.

Example::

    >>> group = {"lr": -0.1, "params": [0]}
    >>> check_param_state("w", {"state": {}, "param_groups": [group]}, "optim.pt")
    ... # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ValueError: optim.pt: the optimizer state of 'w' has hyperparameter 'lr' = -0.1; ...
"""

from __future__ import annotations

import functools
import math
import numbers
from collections.abc import Callable, Mapping
from typing import Any

import torch


def check_entry_shapes(path: str, name: str, entry: Mapping[str, Any], param: Any) -> None:
    """Raise ``ValueError`` unless ``entry``'s parameter-shaped tensors fit ``param``."""
    from pyroopt.bucket import PARAM_SHAPED_STATE

    inner = entry["optimizer"] if "scheduler" in entry and "optimizer" in entry else entry
    per_param = inner.get("state") if isinstance(inner, Mapping) else None
    if not isinstance(per_param, Mapping):
        return  # _check_state has judged the layout
    for values in per_param.values():
        if not isinstance(values, Mapping):
            continue
        for key, value in values.items():
            if key not in PARAM_SHAPED_STATE:
                continue
            shape = tuple(value.shape) if isinstance(value, torch.Tensor) else None
            if shape != tuple(param.shape):
                raise ValueError(
                    f"{path}: the optimizer state of {name!r} does not fit the parameter: "
                    f"its {key!r} has shape {shape}, but {name!r} has shape "
                    f"{tuple(param.shape)} (did the model change?); nothing was loaded"
                )


def check_param_state(name: Any, state: Any, where: str = "state") -> None:
    """Check one parameter's entry (pyro.optim's per-parameter format) before it is used.

    Checks its layout (a one-parameter optimizer's state dict), the hyperparameters
    whose meaning every torch and pyro optimizer taking them shares (``lr``, ``betas``,
    ``eps``, ``weight_decay``, ``momentum``, the flags, ...: see ``_HYPERPARAMETERS``)
    and the state entries whose kind is known (``step`` a whole number >= 0 or a
    tensor of them; parameter-shaped entries tensors). A value of the wrong kind raises
    ``TypeError``, one out of range ``ValueError``, naming ``where``, the parameter, the
    key, the value and what is allowed. Keys it does not know are left to the optimizer.

    >>> group = {"lr": 0.1, "betas": (0.9, 0.999), "params": [0]}
    >>> check_param_state("w", {"state": {0: {"step": 3.0}}, "param_groups": [group]})
    >>> bad = {"state": {0: {"step": -7}}, "param_groups": [group]}
    >>> check_param_state("w", bad)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ValueError: state: the optimizer state of 'w' has state entry 'step' = -7; allowed: a...
    """
    if not isinstance(name, str):
        raise ValueError(f"{where}: parameter names must be strings, found {name!r}")
    if not isinstance(state, Mapping):
        raise ValueError(
            f"{where}: the state of {name!r} must be a dict, found {type(state).__name__}"
        )
    if "scheduler" in state and "optimizer" in state:
        raise ValueError(
            f"{where}: the state of {name!r} is a learning-rate scheduler's; load it into "
            "a pyroopt.PyroLRScheduler"
        )
    _check_optimizer_state(name, state, where)


def check_scheduler_state(name: Any, state: Any, where: str = "state") -> None:
    """Check one parameter's entry under a schedule: ``{"scheduler", "optimizer"}``."""
    if not isinstance(name, str):
        raise ValueError(f"{where}: parameter names must be strings, found {name!r}")
    if not (
        isinstance(state, Mapping)
        and isinstance(state.get("scheduler"), Mapping)
        and "optimizer" in state
    ):
        raise ValueError(
            f"{where}: the state of {name!r} must be a dict with 'scheduler' and "
            "'optimizer' entries, as a learning-rate scheduler saves it"
        )
    _check_optimizer_state(name, state["optimizer"], where)


def _check_optimizer_state(name: str, state: Any, where: str) -> None:
    groups = state.get("param_groups") if isinstance(state, Mapping) else None
    if not (
        isinstance(state, Mapping)
        and isinstance(state.get("state"), Mapping)
        and isinstance(groups, list)
        and len(groups) == 1
        and isinstance(groups[0], Mapping)
    ):
        raise ValueError(
            f"{where}: the optimizer state of {name!r} must be a one-parameter optimizer "
            "state dict with keys 'state' and 'param_groups' (one group)"
        )
    for key, value in groups[0].items():
        check = _HYPERPARAMETERS.get(key)
        if check is not None:
            _refuse_unless(check(value), where, name, "hyperparameter", key, value)
    for index, entries in state["state"].items():
        if index != 0 or not isinstance(entries, Mapping):
            raise ValueError(
                f"{where}: the optimizer state of {name!r} must hold the state of its one "
                f"parameter as {{0: {{key: value}}}}, found {{{index!r}: "
                f"{type(entries).__name__}}}"
            )
        for key, value in entries.items():
            check = _state_entries().get(key)
            if check is not None:
                _refuse_unless(check(value), where, name, "state entry", key, value)


# -- what a saved hyperparameter or state entry may be ---------------------------------
#: A check's verdict on a value: ``None`` if allowed, else the error type to raise
#: (``TypeError`` for a value of the wrong kind, ``ValueError`` for one out of range)
#: and what is allowed.
_Verdict = tuple[type[Exception], str] | None
_Check = Callable[[Any], _Verdict]


def _refuse_unless(
    verdict: _Verdict, where: str, name: str, what: str, key: str, value: Any
) -> None:
    if verdict is not None:
        error, allowed = verdict
        raise error(
            f"{where}: the optimizer state of {name!r} has {what} {key!r} = {value!r}; "
            f"allowed: {allowed}"
        )


def _real(value: Any) -> float | None:
    """``value`` as a float if it is a real number or a one-element real tensor, else None.

    >>> _real(3), _real(torch.tensor([0.5])), _real(True), _real("0.1")
    (3.0, 0.5, None, None)
    """
    if type(value) in (float, int):  # the common case, without the ABC check below
        return float(value)
    if isinstance(value, torch.Tensor):
        if (
            value.numel() != 1
            or value.is_meta
            or value.is_complex()
            or value.dtype == torch.bool
            or value.layout != torch.strided
        ):
            return None
        return float(value.item())
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        return float(value)
    return None


class _Range:
    """Real numbers from ``low`` to ``high``, each end open or closed, as torch's
    optimizers check their arguments (NaN lies in no range).

    >>> 1.0 in _Range(0, 1, high_open=True), float("nan") in _Range(), str(_Range(0))
    (False, False, '>= 0')
    """

    def __init__(
        self,
        low: float = -math.inf,
        high: float = math.inf,
        *,
        low_open: bool = False,
        high_open: bool = False,
    ) -> None:
        self.low, self.high, self.low_open, self.high_open = low, high, low_open, high_open

    def __contains__(self, x: float) -> bool:
        above = x > self.low if self.low_open else x >= self.low
        below = x < self.high if self.high_open else x <= self.high
        return above and below

    def __str__(self) -> str:
        if self.low == -math.inf and self.high == math.inf:
            return ""
        if self.high == math.inf:
            return f"{'>' if self.low_open else '>='} {self.low:g}"
        if self.low == -math.inf:
            return f"{'<' if self.high_open else '<='} {self.high:g}"
        left, right = "(" if self.low_open else "[", ")" if self.high_open else "]"
        return f"in {left}{self.low:g}, {self.high:g}{right}"


def _number(allowed_range: _Range | None = None) -> _Check:
    """A real number (or one-element tensor), in ``allowed_range`` if given."""
    allowed_range = allowed_range or _Range()
    allowed = f"a real number {allowed_range}".strip()

    def check(value: Any) -> _Verdict:
        x = _real(value)
        if x is None:
            return TypeError, allowed
        return None if x in allowed_range else (ValueError, allowed)

    return check


def _numbers(items: list[_Check] | _Check, allowed: str) -> _Check:
    """A tuple or list: of ``len(items)`` values each passing its check, or of any
    positive number of values each passing the one check ``items``."""

    def check(value: Any) -> _Verdict:
        if not isinstance(value, (tuple, list)):
            return TypeError, allowed
        if not value or (isinstance(items, list) and len(value) != len(items)):
            return ValueError, allowed
        checks = items if isinstance(items, list) else [items] * len(value)
        for item, item_check in zip(value, checks, strict=True):
            verdict = item_check(item)
            if verdict is not None:
                return verdict[0], allowed
        return None

    return check


def _either(first: _Check, second: _Check, allowed: str) -> _Check:
    """What passes ``first`` or ``second``; refused as out of range (``ValueError``)
    where either found the value's kind right."""

    def check(value: Any) -> _Verdict:
        refusals = [first(value), second(value)]
        if None in refusals:
            return None
        kinds = [refusal[0] for refusal in refusals if refusal is not None]
        return (ValueError if ValueError in kinds else TypeError), allowed

    return check


def _none(value: Any) -> _Verdict:
    return None if value is None else (TypeError, "None")


def _flag(*, optional: bool = False) -> _Check:
    allowed = "True, False or None" if optional else "True or False"

    def check(value: Any) -> _Verdict:
        ok = isinstance(value, bool) or (optional and value is None)
        return None if ok else (TypeError, allowed)

    return check


def _step(value: Any) -> _Verdict:
    """torch's 0-dim tensor step, pyro's int step, a float step of older files, or
    DCTAdam's per-element tensor of steps: whole numbers >= 0 in every case."""
    allowed = "a whole number >= 0, or a tensor of whole numbers >= 0 (torch's 0-dim step)"
    if isinstance(value, torch.Tensor):
        if (
            value.is_meta
            or value.is_complex()
            or value.dtype == torch.bool
            or value.layout != torch.strided
        ):
            return TypeError, allowed
        if value.numel() != 1:
            steps = value.detach().to(torch.float64)
            ok = bool((torch.isfinite(steps) & (steps >= 0) & (steps == steps.trunc())).all())
            return None if ok else (ValueError, allowed)
        value = value.item()  # one element: cheaper in Python than as tensor operations
    if not isinstance(value, numbers.Real) or isinstance(value, bool):
        return TypeError, allowed
    x = float(value)
    return None if math.isfinite(x) and x >= 0 and x == int(x) else (ValueError, allowed)


def _tensor(*, optional: bool = False) -> _Check:
    allowed = "a tensor" + (" or None" if optional else "")

    def check(value: Any) -> _Verdict:
        ok = isinstance(value, torch.Tensor) or (optional and value is None)
        return None if ok else (TypeError, allowed)

    return check


_AT_LEAST_0 = _number(_Range(0))
_UNIT = _Range(0, 1, high_open=True)

#: Hyperparameters whose meaning every torch and pyro optimizer that takes them shares,
#: with the ranges their constructors (and pyroopt's) accept. Keys not listed here
#: (a schedule's ``max_lr``, Muon's ``ns_coefficients``, a custom optimizer's own)
#: are left to the optimizer.
_HYPERPARAMETERS: dict[str, _Check] = {
    "lr": _AT_LEAST_0,
    "initial_lr": _AT_LEAST_0,  # what a schedule started from
    "eps": _either(
        _AT_LEAST_0,
        _numbers(_either(_none, _AT_LEAST_0, ""), ""),
        "a real number >= 0, or a tuple of such numbers or None (Adafactor's)",
    ),
    "betas": _numbers(_number(_UNIT), "a tuple of real numbers in [0, 1)"),
    "etas": _numbers(
        [_number(_Range(0, 1, low_open=True, high_open=True)), _number(_Range(1, low_open=True))],
        "a pair (etaminus, etaplus) with 0 < etaminus < 1 < etaplus",
    ),
    "step_sizes": _numbers([_number(), _number()], "a pair of real numbers (min, max)"),
    "rho": _number(_Range(0, 1)),
    "beta2_decay": _number(_Range(high=0)),
    "weight_decay": _AT_LEAST_0,
    "momentum": _AT_LEAST_0,
    "dampening": _number(),
    "lr_decay": _AT_LEAST_0,
    "initial_accumulator_value": _AT_LEAST_0,
    "momentum_decay": _AT_LEAST_0,
    "alpha": _number(),
    "lambd": _number(),
    "t0": _number(),
    "clip_norm": _AT_LEAST_0,  # ClippedAdam, DCTAdam
    "lrd": _AT_LEAST_0,
    "eta": _AT_LEAST_0,  # AdagradRMSProp
    "delta": _AT_LEAST_0,
    **dict.fromkeys(
        [
            "amsgrad",
            "maximize",
            "nesterov",
            "centered",
            "capturable",
            "differentiable",
            "decoupled_weight_decay",
            "centered_variance",
            "subsample_aware",
        ],
        _flag(),
    ),
    "foreach": _flag(optional=True),
    "fused": _flag(optional=True),
}


@functools.cache
def _state_entries() -> dict[str, _Check]:
    """Per-parameter state entries whose kind is known: parameter-shaped tensors and steps."""
    from pyroopt.bucket import PARAM_SHAPED_STATE  # bucket imports much; this module little

    entries: dict[str, _Check] = dict.fromkeys(PARAM_SHAPED_STATE, _tensor())
    # torch's SGD before 2.0 saved None for a buffer not yet made, and loads it still
    entries["momentum_buffer"] = _tensor(optional=True)
    entries["step"] = _step
    return entries
