"""The choice of a bucket: which kind steps a parameter, and which parameters share one.

A bucket (:mod:`pyroopt.bucket`) holds parameters that share an algorithm, its
hyperparameters, device and dtype, and steps all of them in one pass while each keeps
its own step count and state, in pyro.optim's per-parameter state format.

Three kinds, fastest first (:func:`make_bucket` picks):

- :class:`~pyroopt.rule_bucket.RuleBucket` (:mod:`pyroopt.rule_bucket`) runs an update
  rule pyroopt owns (:mod:`pyroopt.kernels`) on one flat buffer per state over the
  whole bucket. Gradients are gathered with ``torch.cat``; parameters live in a flat
  buffer of their own where that is safe (:mod:`pyroopt.seating`), so the update needs
  no scatter. The update is the rule's one-pass C loop (:mod:`pyroopt.native`) where it
  runs, else its chain of torch ops; both compute torch's single-tensor numbers bit for
  bit, and every element's value is independent of where its parameter sits in a
  buffer.
- :class:`~pyroopt.torch_bucket.TorchBucket` (:mod:`pyroopt.torch_bucket`) holds one
  torch optimizer over all the bucket's parameters, with the implementation torch picks
  by default for them (``foreach`` on CUDA, the single-tensor loop on CPU), which is the
  one a per-parameter optimizer picks too; ``fused=True`` or ``foreach=True`` runs only
  when the user asks for it.
- :class:`~pyroopt.torch_bucket.PerParamBucket` (:mod:`pyroopt.torch_bucket`) holds one
  optimizer per parameter, exactly as pyro.optim does; it serves constructors pyroopt
  knows nothing about.

:func:`full_group` fills in the hyperparameters a constructor would hold, and
:func:`bucket_key` says which parameters share a bucket.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Hashable, Mapping
from typing import Any

from torch import Tensor
from torch.optim import Optimizer

from pyroopt import dispatch
from pyroopt.bucket import Bucket, Group
from pyroopt.registry import rule_for
from pyroopt.rule_bucket import RuleBucket
from pyroopt.torch_bucket import PerParamBucket, TorchBucket, hyperparameters


def freeze(value: Any) -> Hashable:
    """A hashable stand-in for a hyperparameter value, equal for equal values."""
    if isinstance(value, dict):
        return tuple(sorted((k, freeze(v)) for k, v in value.items()))
    if isinstance(value, (list, tuple)):
        return tuple(freeze(v) for v in value)
    if isinstance(value, Tensor):
        return ("tensor", id(value))
    try:
        hash(value)
    except TypeError:
        return ("object", id(value))
    return value


def make_bucket(
    constructor: Callable[..., Optimizer], group: Group, param: Tensor, *, sparse: bool = False
) -> Bucket:
    """The fastest bucket that computes what ``constructor(**group)`` computes for
    ``param`` (``sparse``: for its sparse gradients), as :func:`pyroopt.dispatch.choose`
    decides."""
    chosen = dispatch.choose(constructor, group, param, sparse=sparse)
    if chosen.kind in ("native", "chain"):
        rule = rule_for(constructor)
        assert rule is not None
        return RuleBucket(constructor, group, rule, chosen)
    if chosen.kind == "torch":
        return TorchBucket(constructor, group, chosen)
    return PerParamBucket(constructor, group, chosen)


def full_group(
    constructor: Callable[..., Optimizer], args: Mapping[str, Any], param: Tensor
) -> Group:
    """Every hyperparameter ``constructor`` would hold for ``args`` (defaults filled in).

    Raises ``TypeError`` naming an argument the constructor does not take, and whatever
    the constructor raises for a bad value.
    """
    try:
        accepted = inspect.signature(constructor).parameters
    except (TypeError, ValueError):
        accepted = None
    if accepted is not None and not any(
        p.kind is inspect.Parameter.VAR_KEYWORD for p in accepted.values()
    ):
        unknown = sorted(set(args) - set(accepted))
        if unknown:
            allowed = [n for n in accepted if n != "params"]
            name = getattr(constructor, "__name__", repr(constructor))
            raise TypeError(f"optim_args: {name} does not take {unknown}; it takes {allowed}")
    defaults = _rule_defaults(constructor, args)
    if defaults is not None:
        return defaults
    return hyperparameters(constructor([param], **args))


#: the parameter list torch's ``Optimizer.__init__`` refuses after it set ``defaults``
_EMPTY = "optimizer got an empty parameter list"


def _rule_defaults(constructor: Callable[..., Optimizer], args: Mapping[str, Any]) -> Group | None:
    """The hyperparameters of ``constructor(params, **args)``'s one group, read without
    building an optimizer, for the classes pyroopt steps with its own rules.

    Building any torch optimizer imports ``torch._dynamo`` (``add_param_group`` is
    wrapped by ``torch._disable_dynamo``): one to four seconds at a program's first
    step, which pyroopt's own rules never need. The class's ``__init__`` runs with an
    empty parameter list instead: it checks every argument as usual and hands its
    defaults to ``Optimizer.__init__``, which keeps them and then refuses the empty
    list before adding a group; a one-parameter group is exactly those defaults. Where
    that does not hold (another torch, ``foreach``/``fused``, whose checks follow
    ``Optimizer.__init__``), ``None``: the caller builds the optimizer.
    """
    if rule_for(constructor) is None or any(args.get(k) is not None for k in ("foreach", "fused")):
        return None
    cls: Any = constructor  # a class: only classes have rules
    probe = cls.__new__(cls)
    try:
        cls.__init__(probe, [], **args)
    except ValueError as refused:
        defaults = getattr(probe, "defaults", None)
        if str(refused) == _EMPTY and isinstance(defaults, dict):
            return dict(defaults)
    return None


def bucket_key(constructor: Any, group: Group, param: Tensor) -> Hashable:
    return (constructor, freeze(group), param.device, param.dtype)


__all__ = ["bucket_key", "full_group", "make_bucket"]
