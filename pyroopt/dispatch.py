"""Which implementation steps a bucket, decided in one place, with the reason.

Four implementations compute an optimizer's update, fastest first:

- ``"native"``: pyroopt's one-pass C loop for the rule (:mod:`pyroopt.native`), on
  CPU tensors of float32 or float64, once its self-check against torch's own optimizer
  passed on this machine (:mod:`pyroopt.native.selfcheck`);
- ``"chain"``: the rule's chain of torch ops (:mod:`pyroopt.kernels`) on flat buffers,
  where the loop cannot run (no library, another device, a self-check mismatch);
- ``"torch"``: one torch optimizer over the bucket, with torch's default
  implementation (or ``foreach``/``fused`` where the user asks for them), for what no
  rule computes exactly (half types on the CPU, complex parameters, sparse gradients,
  tensor hyperparameters, optimizers pyroopt has no rule for);
- ``"per-param"``: one optimizer per parameter, exactly as pyro.optim builds them, for
  constructors that are not torch optimizer classes.

All four give a parameter torch's (and so pyro.optim's) numbers bit for bit; they
differ in speed. :func:`choose` picks one per bucket when the bucket is made, and
:meth:`pyroopt.PyroOptim.implementations` reports the choice per parameter.
:func:`forced` makes new buckets take another implementation where it can compute the
same update, to compare them (the test suite runs its parity cases under each).

Example::

    >>> import torch
    >>> from pyroopt import dispatch
    >>> p = torch.zeros(3, dtype=torch.float16)
    >>> dispatch.choose(torch.optim.Adam, {"lr": 0.1}, p).kind
    'torch'
    >>> with dispatch.forced("chain"):
    ...     dispatch.choose(torch.optim.Adam, {"lr": 0.1}, torch.zeros(3)).kind
    'chain'
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Callable, Iterator, Mapping
from typing import Any, NamedTuple

from torch import Tensor

from pyroopt.kernels import UpdateRule
from pyroopt.registry import is_group_safe, rule_for

#: the implementations, fastest first
KINDS = ("native", "chain", "torch", "per-param")


class Implementation(NamedTuple):
    """What steps a bucket, and why.

    :param kind: one of :data:`KINDS`.
    :param reason: why, in a few words for users (the loop and its vector clone for
        ``"native"``; what ruled the faster implementations out for the others).
    """

    kind: str
    reason: str

    def __str__(self) -> str:
        return f"{self.kind}: {self.reason}"


_FORCED: contextvars.ContextVar[str | None] = contextvars.ContextVar("pyroopt_forced", default=None)


@contextlib.contextmanager
def forced(kind: str) -> Iterator[None]:
    """Buckets made inside the block take implementation ``kind`` where it computes
    the same update as the usual choice, and the usual choice elsewhere.

    A kind stands in for every faster one (``"per-param"`` for any, ``"torch"`` for
    ``"native"`` and ``"chain"``, ``"chain"`` for ``"native"``); ``"native"`` runs only
    where it would anyway. For the current thread
    (and the tasks it starts) only.

    :param kind: one of :data:`KINDS`; anything else is a ``ValueError``.
    """
    if kind not in KINDS:
        raise ValueError(f"forced: kind must be one of {list(KINDS)}, got {kind!r}")
    token = _FORCED.set(kind)
    try:
        yield
    finally:
        _FORCED.reset(token)


def choose(
    constructor: Callable[..., Any],
    group: Mapping[str, Any],
    param: Tensor,
    *,
    sparse: bool = False,
) -> Implementation:
    """The implementation that steps ``param`` under ``constructor(**group)``.

    :param constructor: the optimizer class (or callable) of the bucket.
    :param group: its hyperparameters, defaults filled in.
    :param param: the bucket's first parameter (its dtype and device decide).
    :param sparse: whether the parameter's gradients are sparse (only torch's own SGD
        and Adagrad step those).
    """
    usual = _usual(constructor, group, param, sparse)
    want = _FORCED.get()
    # each implementation computes what every faster one does, and more
    if want is None or KINDS.index(want) <= KINDS.index(usual.kind):
        return usual
    return Implementation(want, f"forced (usually {usual})")


def _usual(
    constructor: Callable[..., Any], group: Mapping[str, Any], param: Tensor, sparse: bool
) -> Implementation:
    rule = rule_for(constructor)
    if rule is None:
        if is_group_safe(constructor):
            return Implementation("torch", f"pyroopt has no rule for {_name(constructor)}")
        return Implementation(
            "per-param", f"{_name(constructor)} is not a torch optimizer class pyroopt can share"
        )
    chosen = [k for k in ("foreach", "fused") if group.get(k) is not None]
    if chosen:  # the user picked one of torch's implementations
        return Implementation("torch", f"{chosen[0]}={group[chosen[0]]} asked for")
    if not rule.supports(group):
        return Implementation("torch", f"the rule does not compute {_options(group)}")
    if sparse:
        return Implementation("torch", "sparse gradients (torch's own implementation)")
    if not param.is_floating_point():
        return Implementation("torch", f"{param.dtype} parameter (no rule for it)")
    if not rule.exact_on_flat(param):
        return Implementation(
            "torch", f"{param.dtype} on the CPU rounds by position: own tensors only"
        )
    return _rule_implementation(constructor, rule, param)


def _rule_implementation(
    constructor: Callable[..., Any], rule: UpdateRule, param: Tensor
) -> Implementation:
    """Native loop or torch-op chain for a parameter a rule computes exactly."""
    if not rule.has_native:
        return Implementation("chain", "no native loop for this rule")
    if param.device.type != "cpu":
        return Implementation("chain", f"native loops run on the CPU, not {param.device.type}")
    loop = native_loop(constructor)
    if loop is None:
        return Implementation("chain", "no native loop for this optimizer class")
    from pyroopt.native import selfcheck  # imports the loops: only once a rule bucket is made

    verdict = selfcheck.implementation(loop, param.dtype)
    if verdict.startswith("native loop"):
        return Implementation("native", verdict.removeprefix("native loop "))
    return Implementation("chain", verdict.removeprefix("torch-op chain: "))


def native_loop(constructor: Callable[..., Any]) -> str | None:
    """The name of the C loop that steps ``constructor``'s rule, if it has one."""
    from pyroopt.native import selfcheck

    name = getattr(constructor, "__name__", None)
    torch_class = getattr(constructor, "__module__", "").startswith("torch.optim")
    label = f"torch.optim.{name}" if torch_class else name
    return dict(selfcheck.RULE_LOOPS).get(label)  # type: ignore[arg-type]


def _name(constructor: Any) -> str:
    return getattr(constructor, "__qualname__", None) or repr(constructor)


def _options(group: Mapping[str, Any]) -> str:
    """The options of ``group`` that no rule computes, for a reason."""
    flagged = [k for k in ("capturable", "differentiable") if group.get(k)]
    flagged += [f"a tensor {k}" for k, v in group.items() if isinstance(v, Tensor)]
    return ", ".join(flagged) or "these options"


__all__ = ["KINDS", "Implementation", "choose", "forced", "native_loop"]
