"""``optim_args`` and ``clip_args`` as pyro.optim takes them: a dict, or a callable per name.

A one-argument callable receives the parameter's name normalized as in
``nn.Module.named_parameters()`` (``"loc.weight"``); a two-argument callable receives
``(module_name, param_name)`` (pyro's older form, which scvi-tools passes).

Example::

    >>> args = PerParamArgs(lambda name: {"lr": 0.1 if name == "a" else 0.2}, "optim_args")
    >>> args("a"), args("b")
    ({'lr': 0.1}, {'lr': 0.2})
    >>> ClipArgs({"clip_norm": 10.0, "clip_global_norm": 5.0}).global_norm
    5.0
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from pyro.params.param_store import (
    module_from_param_with_module_name,
    normalize_param_name,
    user_param_name,
)

from pyroopt.clip import validate_clip_args

ArgsSpec = dict[str, Any] | Callable[..., dict[str, Any]]


class PerParamArgs:
    """A dict for every parameter, or a callable giving one per parameter name."""

    def __init__(self, spec: Any, what: str) -> None:
        if not (callable(spec) or isinstance(spec, dict)):
            raise TypeError(
                f"{what} must be a dict or a callable returning one, "
                f"got {type(spec).__name__}: {spec!r}"
            )
        self.spec = spec
        self.what = what
        #: how many arguments a callable ``spec`` takes (1 or 2); 0 for a dict
        self.arity = arity(spec, what) if callable(spec) else 0

    def __call__(self, name: str | None) -> dict[str, Any]:
        """The dict for the parameter named ``name`` (``None``: not in the param store)."""
        if not callable(self.spec):
            return self.spec
        if name is None:
            raise ValueError(
                f"callable {self.what} needs the parameter's name, but a tensor passed to "
                "the optimizer is not in Pyro's param store"
            )
        if self.arity == 1:
            result = self.spec(normalize_param_name(name))
        else:
            result = self.spec(module_from_param_with_module_name(name), user_param_name(name))
        if not isinstance(result, dict):
            raise TypeError(
                f"{self.what} must return a dict for each parameter; for {name!r} it "
                f"returned {type(result).__name__}: {result!r}"
            )
        return result


class ClipArgs:
    """``clip_args``: per-parameter ``clip_norm``/``clip_value``; in a dict, also
    ``clip_global_norm`` and ``skip_nonfinite``."""

    def __init__(self, spec: Any, skip_nonfinite: bool = False) -> None:
        if spec is None:
            spec = {}
        self._per_param = PerParamArgs(spec, "clip_args")
        #: the bound on the joint norm of all gradients of a step, if any
        self.global_norm: float | None = None
        self.skip_nonfinite = bool(skip_nonfinite)
        if isinstance(spec, dict):
            skip = spec.get("skip_nonfinite", False)
            if not isinstance(skip, bool):
                raise TypeError(f"clip_args['skip_nonfinite'] must be True or False, got {skip!r}")
            self.skip_nonfinite = self.skip_nonfinite or skip
            spec = {k: v for k, v in spec.items() if k != "skip_nonfinite"}
            clean = validate_clip_args(spec, allow_global=True, where="clip_args")
            self.global_norm = clean.pop("clip_global_norm", None)
            self._per_param = PerParamArgs(clean, "clip_args")

    def for_param(self, param: Any, name: str | None) -> dict[str, float]:
        """The clip arguments of one parameter (checked)."""
        if not callable(self._per_param.spec):
            return self._per_param.spec
        result = self._per_param(name)
        return validate_clip_args(result, allow_global=False, where=f"clip_args for {name!r}")


def arity(fn: Callable[..., Any], what: str) -> int:
    """How many arguments a per-parameter callable takes: 1 or 2, else ``TypeError``."""
    try:
        n = len(inspect.signature(fn).parameters)
    except (TypeError, ValueError) as e:
        raise TypeError(f"cannot inspect the signature of {what} {fn!r}") from e
    if n not in (1, 2):
        raise TypeError(
            f"{what} must take one argument (the parameter name, e.g. 'loc.weight') or two "
            f"(module_name, param_name); {fn!r} takes {n}"
        )
    return n


__all__ = ["ArgsSpec", "ClipArgs", "PerParamArgs", "arity"]
