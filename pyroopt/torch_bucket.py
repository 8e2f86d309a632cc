"""Buckets stepped by torch's own optimizers, where no pyroopt rule steps a bucket.

- :class:`TorchBucket` holds one torch optimizer over all the bucket's parameters,
  with the implementation torch picks by default for them (``foreach`` on CUDA, the
  single-tensor loop on CPU), which is the one a per-parameter optimizer picks too;
  ``fused=True`` or ``foreach=True`` runs only when the user asks for it.
- :class:`PerParamBucket` holds one optimizer per parameter, exactly as pyro.optim
  does; it serves constructors pyroopt knows nothing about.

:mod:`pyroopt.dispatch` says when (half types on the CPU, complex parameters, sparse
gradients, tensor hyperparameters, ``foreach`` or ``fused`` asked for, optimizers
pyroopt has no rule for). A :class:`TorchBucket` loads a parameter's state through a
one-parameter optimizer of the same kind, so torch's own casting rules apply; the
optimizers of a :class:`PerParamBucket` are one-parameter optimizers already.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer

from pyroopt.bucket import (
    PARAM_SHAPED_STATE,
    Bucket,
    Group,
    check_shapes,
    one_param_state,
    snapshot,
)
from pyroopt.dispatch import Implementation


def hyperparameters(optimizer: Optimizer, index: int = 0) -> Group:
    """The hyperparameters of one param group, without its parameters."""
    return {k: v for k, v in optimizer.param_groups[index].items() if k not in ("params",)}


class TorchBucket(Bucket):
    """One torch optimizer over the whole bucket, with torch's default implementation."""

    def __init__(
        self, constructor: Callable[..., Optimizer], group: Group, implementation: Implementation
    ):
        super().__init__(constructor, group, implementation)
        self.optimizer: Optimizer | None = None
        # Whether the optimizer makes its state when constructed rather than on its
        # first step (torch 2.4's Adagrad), so a parameter that joins needs it made.
        self._eager_state = False

    def _run_args(self) -> Group:
        return self.group

    def add(self, param: Tensor, sort_key: Any = None) -> int:
        position = super().add(param, sort_key)
        if self.optimizer is None:
            self.optimizer = construct(self.constructor, [param], self._run_args())
            self.optimizer.param_groups[0]["params"] = self.params
            self._eager_state = bool(self.optimizer.state)
        elif self._eager_state:  # the state its own optimizer would have made for it
            alone = construct(self.constructor, [param], self._run_args())
            self.optimizer.state[param] = alone.state[param]
        # The optimizer's group holds this very list, so it has seen the insertion.
        return position

    def remove(self, param: Tensor) -> None:
        assert self.optimizer is not None
        self.optimizer.state.pop(param, None)
        super().remove(param)
        self.optimizer.param_groups[0]["params"] = self.params

    def step(self, params: list[Tensor], *args: Any, steady: bool = False, **kwargs: Any) -> None:
        assert self.optimizer is not None
        group = self.optimizer.param_groups[0]
        group["params"] = params
        try:
            self.optimizer.step(*args, **kwargs)
        finally:
            group["params"] = self.params

    def _public_group(self) -> Group:
        assert self.optimizer is not None
        return hyperparameters(self.optimizer)

    def state_dict(self, param: Tensor) -> dict[str, Any]:
        assert self.optimizer is not None
        return one_param_state(snapshot(self.optimizer.state.get(param, {})), self._public_group())

    def load_state_dict(self, param: Tensor, state_dict: Mapping[str, Any]) -> None:
        assert self.optimizer is not None
        saved = state_dict["state"].get(0, {})
        if not hasattr(param, "_pyro_dct_dim"):  # DCTAdam keeps wider moments for those
            check_shapes(param, {k: v for k, v in saved.items() if k in PARAM_SHAPED_STATE})
        # A one-parameter optimizer of the same kind applies torch's own casting rules.
        scratch = construct(self.constructor, [param], self._run_args())
        scratch.load_state_dict(_with_group(state_dict, self._run_args()))
        self.optimizer.state[param] = scratch.state[param]

    def current_group(self) -> Group:
        return self._public_group()

    def advances_group(self) -> bool:
        """Also true where torch's step treats the group as one: its fused SGD decides
        "first step" for the whole group (all momentum buffers absent or none), and its
        foreach SGD with momentum updates the buffers with ``_foreach_mul_`` and
        ``_foreach_add_`` only when none is missing, else one tensor at a time (other
        roundings in float16 and bfloat16 on the CPU). So a parameter may join only
        before the first step, and leaves with any that step apart."""
        group = self.group
        foreach_momentum = (
            self.constructor is torch.optim.SGD
            and bool(group.get("foreach"))
            and group.get("momentum", 0) != 0
        )
        return super().advances_group() or bool(group.get("fused")) or foreach_momentum

    def schedule_target(self) -> Optimizer:
        assert self.optimizer is not None
        return self.optimizer


class PerParamBucket(Bucket):
    """One optimizer per parameter, as pyro.optim builds them, for unknown constructors."""

    def __init__(
        self, constructor: Callable[..., Optimizer], group: Group, implementation: Implementation
    ):
        super().__init__(constructor, group, implementation)
        self.optimizers: dict[int, Optimizer] = {}  # by id(param)

    def add(self, param: Tensor, sort_key: Any = None) -> int:
        position = super().add(param, sort_key)
        self.optimizers[id(param)] = construct(self.constructor, [param], self.group)
        return position

    def remove(self, param: Tensor) -> None:
        super().remove(param)
        del self.optimizers[id(param)]

    def rekey(self) -> None:
        super().rekey()
        self.optimizers = {
            id(optimizer.param_groups[0]["params"][0]): optimizer
            for optimizer in self.optimizers.values()
        }

    def check_step_args(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        """Any: an optimizer pyroopt does not know may take arguments of its own."""

    def check(self, params: list[Tensor], *, gather: bool = True, steady: bool = False) -> None:
        """Nothing: an optimizer pyroopt does not know checks its own inputs."""

    def step(self, params: list[Tensor], *args: Any, steady: bool = False, **kwargs: Any) -> None:
        for p in params:
            self.optimizers[id(p)].step(*args, **kwargs)

    def state_dict(self, param: Tensor) -> dict[str, Any]:
        optimizer = self.optimizers[id(param)]
        state = optimizer.state_dict()
        return one_param_state(snapshot(state["state"].get(0, {})), hyperparameters(optimizer))

    def load_state_dict(self, param: Tensor, state_dict: Mapping[str, Any]) -> None:
        self.optimizers[id(param)].load_state_dict(dict(state_dict))

    def lr(self, param: Tensor) -> float:
        return float(self.optimizers[id(param)].param_groups[0]["lr"])

    def advances_group(self) -> bool:
        return False  # each parameter has an optimizer of its own

    def schedule_target(self) -> Optimizer:
        if len(self.optimizers) != 1:
            raise RuntimeError("a schedule drives a bucket of one parameter's optimizer")
        return next(iter(self.optimizers.values()))


def construct(
    constructor: Callable[..., Optimizer], params: list[Tensor], group: Mapping[str, Any]
) -> Optimizer:
    """``constructor(params, **group)``, with entries it does not take (such as a
    schedule's ``initial_lr``) set on its param group afterwards."""
    try:
        accepted = inspect.signature(constructor).parameters
    except (TypeError, ValueError):
        return constructor(params, **group)
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in accepted.values()):
        return constructor(params, **group)
    optimizer = constructor(params, **{k: v for k, v in group.items() if k in accepted})
    optimizer.param_groups[0].update({k: v for k, v in group.items() if k not in accepted})
    return optimizer


def _with_group(state_dict: Mapping[str, Any], group: Group) -> dict[str, Any]:
    """``state_dict`` with its one param group's hyperparameters replaced by ``group``."""
    return {
        "state": state_dict["state"],
        "param_groups": [{**group, "params": [0]}],
    }


__all__ = ["PerParamBucket", "TorchBucket"]
