"""The base of every bucket: parameters stepped together, state kept per parameter.

A bucket holds parameters that share an algorithm, its hyperparameters, device and
dtype (:func:`pyroopt.engine.make_bucket` makes the fastest kind that computes their
numbers). It steps all of its parameters in one pass while each parameter keeps its own
step count and state, and it speaks pyro.optim's per-parameter state format, a
one-parameter torch optimizer's state dict (:func:`one_param_state`)::

    {"state": {0: {"step": ..., "exp_avg": ..., ...}},  # empty before the first step
     "param_groups": [{"lr": ..., ..., "params": [0]}]}

For a parameter never stepped, with ``lr`` its one hyperparameter:

>>> one_param_state({}, {"lr": 0.1})
{'state': {}, 'param_groups': [{'lr': 0.1, 'params': [0]}]}

What a bucket promises (:class:`Bucket`): members are kept in the order of their sort
keys, so buffers and state are laid out the same whatever order parameters arrive in;
:meth:`Bucket.check` raises before anything changes unless a step can run (sparse
gradients that only torch's own optimizer steps raise :class:`SparseGradients` and leave
the bucket as it was; an optimizer pyroopt does not know checks its own inputs);
``state_dict`` and ``load_state_dict`` speak per parameter. The kinds are in
:mod:`pyroopt.rule_bucket` and :mod:`pyroopt.torch_bucket`.
"""

from __future__ import annotations

import bisect
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer

from pyroopt.dispatch import Implementation
from pyroopt.kernels import IMPLEMENTATION_ARGS
from pyroopt.registry import group_rule

Group = dict[str, Any]
ParamState = dict[str, Any]


def one_param_state(state: ParamState, group: Group) -> dict[str, Any]:
    """pyro.optim's per-parameter state dict: a one-parameter torch optimizer's."""
    return {
        "state": {0: state} if state else {},
        "param_groups": [{**group, "params": [0]}],
    }


def snapshot(state: Mapping[str, Any]) -> ParamState:
    return {k: v.detach().clone() if isinstance(v, Tensor) else v for k, v in state.items()}


class SparseGradients(Exception):
    """A bucket cannot step these parameters' sparse gradients; it changed nothing."""

    def __init__(self, params: list[Tensor]) -> None:
        super().__init__(f"{len(params)} parameters have sparse gradients")
        self.params = params


class Bucket(ABC):
    """Parameters stepped together; the state API speaks per parameter."""

    def __init__(
        self, constructor: Callable[..., Optimizer], group: Group, implementation: Implementation
    ) -> None:
        self.constructor = constructor
        #: what steps the bucket, and why (:mod:`pyroopt.dispatch` chose it)
        self.implementation = implementation
        #: hyperparameters as the user asked for them (what the state format records)
        self.group = group
        self.params: list[Tensor] = []
        #: id(param) -> position in ``params``
        self.index: dict[int, int] = {}
        #: the sort key of each of ``params``, ascending (see :meth:`add`)
        self.sort_keys: list[Any] = []
        #: the shape each of ``params`` had when it joined: its state's shape
        self.shapes: list[torch.Size] = []
        #: the dtype and device every member has (set by the first)
        self.dtype: torch.dtype | None = None
        self.device: torch.device | None = None

    def add(self, param: Tensor, sort_key: Any = None) -> int:
        """Make ``param`` a member; its position in ``params``.

        Members are kept in ascending ``sort_key`` order (the optimizer passes one
        derived from the parameter's name), so that buffers and state are laid out the
        same whatever order parameters arrive in. Without a key it goes last.
        """
        if not self.params:
            self.dtype, self.device = param.dtype, param.device
        if sort_key is None or not self.sort_keys or self.sort_keys[-1] < sort_key:
            position = len(self.params)
        else:
            position = bisect.bisect(self.sort_keys, sort_key)
        self.sort_keys.insert(position, sort_key if sort_key is not None else (2, position))
        self.shapes.insert(position, param.shape)
        self.params.insert(position, param)
        if position == len(self.params) - 1:
            self.index[id(param)] = position
        else:
            self.index = {id(p): i for i, p in enumerate(self.params)}
        return position

    def remove(self, param: Tensor) -> None:
        position = self.index.pop(id(param))
        self.params.pop(position)
        self.sort_keys.pop(position)
        self.shapes.pop(position)
        self.index = {id(p): i for i, p in enumerate(self.params)}

    def shape_of(self, param: Tensor) -> torch.Size:
        """The shape ``param`` had when it joined (its state's shape)."""
        return self.shapes[self.index[id(param)]]

    def rekey(self) -> None:
        """Index the members anew after they were copied (``copy.deepcopy``, pickle):
        the index is by ``id``, which a copy does not keep."""
        self.index = {id(p): i for i, p in enumerate(self.params)}

    def label(self, param: Tensor) -> str:
        """How errors name ``param``: its Pyro name, from the sort key the optimizer gave."""
        key = self.sort_keys[self.index[id(param)]]
        if isinstance(key, tuple) and len(key) == 2 and key[0] == 0:
            return repr(key[1])
        return f"an unnamed parameter of shape {tuple(param.shape)}"

    def check(self, params: list[Tensor], *, gather: bool = True, steady: bool = False) -> None:
        """Raise before anything changes unless ``params`` (members, in bucket order)
        can be stepped; the optimizer checks every bucket of a call before it clips or
        steps any. ``gather``: the gradients will not change before the step (no
        clipping), so a bucket may already copy them. ``steady``: no member has been
        given new storage since the end of the bucket's last step (the optimizer's plan
        knows)."""
        live = [p for p in params if p.grad is not None]
        self.check_inputs(live, [p.grad for p in live])  # type: ignore[misc]

    def check_inputs(self, params: list[Tensor], grads: list[Tensor]) -> None:
        """Raise before anything changes unless every parameter still has the shape its
        state was made for and every gradient matches its parameter in shape, dtype,
        device and layout (pyro.optim's torch optimizers refuse such a step too)."""
        shapes, index = self.shapes, self.index
        for p, g in zip(params, grads, strict=True):
            made_for = shapes[index[id(p)]]
            if p.shape != made_for:
                raise RuntimeError(
                    f"parameter {self.label(p)} has shape {tuple(p.shape)}, but its optimizer "
                    f"state was made for shape {tuple(made_for)}; give the new tensor a new "
                    "name, or set its state anew (set_state), before stepping it"
                )
            if g.shape != p.shape or g.dtype != p.dtype or g.device != p.device:
                raise ValueError(
                    f"the gradient of parameter {self.label(p)} is a {tuple(g.shape)} "
                    f"{g.dtype} tensor on {g.device}; the parameter is a {tuple(p.shape)} "
                    f"{p.dtype} tensor on {p.device}, and a gradient must match it"
                )

    def order(self, params: list[Tensor]) -> list[Tensor]:
        """``params`` (all members) in bucket order, so results never depend on set order."""
        if len(params) == len(self.params):
            return self.params
        index = self.index
        return sorted(params, key=lambda p: index[id(p)])

    def describe(self) -> str:
        """What steps the bucket, and why (:meth:`pyroopt.PyroOptim.implementations`)."""
        return str(self.implementation)

    def check_step_args(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        """Raise ``TypeError`` unless ``step`` takes these extra arguments."""
        closure_only(self.constructor, args, kwargs)

    @abstractmethod
    def step(self, params: list[Tensor], *args: Any, steady: bool = False, **kwargs: Any) -> None:
        """Step ``params`` (members of this bucket, in bucket order) that have a gradient;
        ``args`` and ``kwargs`` go to the optimizer's ``step``, ``steady`` as for
        :meth:`check`."""

    @abstractmethod
    def state_dict(self, param: Tensor) -> dict[str, Any]:
        """A snapshot of ``param``'s state in pyro.optim's per-parameter format."""

    @abstractmethod
    def load_state_dict(self, param: Tensor, state_dict: Mapping[str, Any]) -> None:
        """Set ``param``'s state from pyro.optim's per-parameter format."""

    def lr(self, param: Tensor) -> float:
        return float(self.current_group()["lr"])

    def current_group(self) -> Group:
        """The hyperparameters as they are now (a schedule or ``lrd`` may move ``lr``)."""
        return self.group

    def advances_group(self) -> bool:
        """Whether each step changes the hyperparameters of the parameters it steps.

        Then a call that passes only some of the bucket's parameters must first split
        them off into a bucket of their own, or the others would change with them.
        """
        rule = group_rule(self.constructor)
        return rule is not None and rule.advances_group(self.current_group())

    def schedule_target(self) -> Optimizer:
        """The torch optimizer whose ``param_groups`` a learning-rate schedule drives."""
        raise NotImplementedError

    def restore_group(self, group: Mapping[str, Any]) -> None:
        """Set the hyperparameters to ``group`` (e.g. after a schedule's first step)."""
        target = self.schedule_target().param_groups[0]
        target.update({k: v for k, v in group.items() if k not in ("params", *IMPLEMENTATION_ARGS)})


def closure_only(
    constructor: Callable[..., Optimizer], args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Callable[[], Any] | None:
    """The ``closure`` of ``step(closure)``, the one argument a torch optimizer takes."""
    if not kwargs and len(args) <= 1:
        closure = args[0] if args else None
    elif not args and set(kwargs) == {"closure"}:
        closure = kwargs["closure"]
    else:
        raise TypeError(
            f"{getattr(constructor, '__name__', constructor)}.step() takes only a closure; "
            f"got args={args!r} kwargs={kwargs!r}"
        )
    if closure is not None and not callable(closure):
        raise TypeError(f"closure must be callable, got {closure!r}")
    return closure


#: State entries that torch's optimizers (and pyro's) keep in the parameter's shape.
PARAM_SHAPED_STATE = frozenset(
    {
        "exp_avg",
        "exp_avg_sq",
        "max_exp_avg_sq",
        "exp_inf",
        "momentum_buffer",
        "square_avg",
        "grad_avg",
        "acc_delta",
        "prev",
        "step_size",
        "sum",
        "ax",
    }
)


def check_shapes(param: Tensor, state: Mapping[str, Any]) -> None:
    """Raise ``ValueError`` unless every tensor in ``state`` has ``param``'s shape."""
    for key, value in state.items():
        shape = tuple(value.shape) if isinstance(value, Tensor) else None
        if shape != tuple(param.shape):
            raise ValueError(
                f"saved {key!r} has shape {shape}, but the parameter has shape "
                f"{tuple(param.shape)} (did the model change?)"
            )


__all__ = ["Bucket"]
