"""Every optimizer pyroopt steps, with the options to test it with: the one registry the
parity tests draw their cases from (torch's ``OptimizerInfo`` in
``torch/testing/_internal/common_optimizers.py`` is the model).

An :class:`OptimizerInfo` says how pyroopt and pyro.optim build one optimizer class, an
option grid whose values reach every branch of its update (first value of each option:
the base case), the dtypes it runs in, and which implementations
(:data:`pyroopt.dispatch.KINDS`) can step it. :meth:`OptimizerInfo.cases` covers every
pair of option values in a few cases; :meth:`OptimizerInfo.combinations` is the whole
grid.

Example::

    >>> import pyro.optim
    >>> info = BY_NAME["SGD"]
    >>> args = info.cases()[1]
    >>> info.case_id(args)
    'SGD-momentum=0.9-nesterov=True-weight_decay=0.01-maximize=True'
    >>> info.usual(args, torch.float16)
    ('torch', 'rounds by position')
    >>> info.runs(args, torch.float64)
    ('native', 'chain', 'torch', 'per-param')
    >>> info.factory(args).pt_optim_constructor is torch.optim.SGD
    True
    >>> type(info.reference(args)) is pyro.optim.PyroOptim
    True
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import pyro.optim
import torch
from pyro.optim.adagrad_rmsprop import AdagradRMSProp as PyroAdagradRMSProp
from pyro.optim.clipped_adam import ClippedAdam as PyroClippedAdam
from pyro.optim.dct_adam import DCTAdam as PyroDCTAdam

import pyroopt
from pyroopt import optimizers

FLOATS = (torch.float32, torch.float64)
HALVES = (torch.float16, torch.bfloat16)
#: the implementations (:data:`pyroopt.dispatch.KINDS`), fastest first
NATIVE, CHAIN, TORCH, PER_PARAM = "native", "chain", "torch", "per-param"
#: implementations of a class pyroopt has an update rule (and a native loop) for
RULE_KINDS = (NATIVE, CHAIN, TORCH, PER_PARAM)
#: implementations of a torch class pyroopt has no rule for (one torch optimizer shared)
TORCH_KINDS = (TORCH, PER_PARAM)


def _any_args(args: Mapping[str, Any]) -> bool:
    return True


def _any_shape(shape: torch.Size) -> bool:
    return True


def _none(args: Mapping[str, Any], dtype: torch.dtype, kind: str = "") -> str | None:
    return None


@dataclasses.dataclass(frozen=True)
class OptimizerInfo:
    """One optimizer class: how to build it, what to try it with, what can step it.

    ``base`` holds the arguments every case passes; ``grid`` each option of the update
    and its values, the first of them the base case's; ``valid`` says which
    combinations the class accepts. ``choices`` are the implementations of torch's
    that the class lets a user ask for (``foreach``, ``fused``): a case asks for at most
    one. ``kinds`` are the implementations that step it in float32 and float64 with
    torch's default implementation, fastest first (:meth:`runs` narrows them for a
    case). ``steps_shape`` says which parameter shapes the class can step at all,
    ``sparse`` whether it steps only sparse gradients. ``unreproducible`` says why a
    case cannot be compared in a dtype (pyro.optim's own numbers change from run to run).
    """

    name: str
    #: the class pyroopt steps
    constructor: type[torch.optim.Optimizer]
    #: ``optim_args -> pyroopt optimizer``
    factory: Callable[[dict[str, Any]], Any]
    #: ``optim_args -> pyro.optim optimizer`` with the same numbers
    reference: Callable[[dict[str, Any]], Any]
    base: Mapping[str, Any]
    grid: Mapping[str, Sequence[Any]]
    kinds: tuple[str, ...]
    valid: Callable[[Mapping[str, Any]], bool] = _any_args
    choices: tuple[str, ...] = ()
    dtypes: tuple[torch.dtype, ...] = FLOATS + HALVES
    steps_shape: Callable[[torch.Size], bool] = _any_shape
    sparse: bool = False
    unreproducible: Callable[[Mapping[str, Any], torch.dtype], str | None] = _none

    def dtypes_of(self, args: Mapping[str, Any]) -> tuple[torch.dtype, ...]:
        """The dtypes a case is compared in."""
        return tuple(d for d in self.dtypes if self.unreproducible(args, d) is None)

    def options(self) -> list[dict[str, Any]]:
        """Every valid combination of the grid's values, base case first, with torch's
        default implementation."""
        keys = list(self.grid)
        every = (dict(zip(keys, v, strict=True)) for v in itertools.product(*self.grid.values()))
        return [{**self.base, **c} for c in every if self.valid(c)]

    def combinations(self) -> list[dict[str, Any]]:
        """:meth:`options`, each with torch's default implementation and with each of
        ``choices`` asked for."""
        return [{**args, **ask} for ask in self._asks() for args in self.options()]

    def cases(self) -> list[dict[str, Any]]:
        """A few valid combinations of the grid that between them hold every pair of
        option values (and so every value) any valid combination holds, base case
        first; then, for each of ``choices``, the base case and :meth:`richest` asking
        for it."""
        pairwise = self._pairwise()
        richest = max(pairwise, key=self._changed)
        asked = [{**case, **ask} for ask in self._asks()[1:] for case in (pairwise[0], richest)]
        return pairwise + asked

    def richest(self) -> dict[str, Any]:
        """The first of the pairwise cases with the most options changed from the base
        case (torch's default implementation)."""
        return max(self._pairwise(), key=self._changed)

    def _pairwise(self) -> list[dict[str, Any]]:
        """Greedy: each next case is the first valid combination that covers the most
        pairs not yet covered, so the list is the same on every run."""
        options = self.options()
        uncovered = set().union(*(self._pairs(c) for c in options))
        chosen = [options[0]]
        uncovered -= self._pairs(options[0])
        while uncovered:
            best = max(options, key=lambda c: len(self._pairs(c) & uncovered))
            chosen.append(best)
            uncovered -= self._pairs(best)
        return chosen

    def _asks(self) -> list[dict[str, bool]]:
        return [{}, *({choice: True} for choice in self.choices)]

    def _pairs(self, args: Mapping[str, Any]) -> set[tuple[tuple[str, Any], ...]]:
        items = [(k, args[k]) for k in self.grid]
        return {(i,) for i in items} | set(itertools.combinations(items, 2))

    def _changed(self, args: Mapping[str, Any]) -> int:
        return sum(args[k] != values[0] for k, values in self.grid.items())

    def case_id(self, args: Mapping[str, Any]) -> str:
        """``name`` and each option that differs from the base case (a test id)."""
        first = {k: values[0] for k, values in self.grid.items()}
        changed = [f"{k}={v}" for k, v in args.items() if k not in self.base and v != first.get(k)]
        return "-".join([self.name, *changed])

    def usual(self, args: Mapping[str, Any], dtype: torch.dtype) -> tuple[str, str]:
        """The implementation that steps a case when nothing is forced, and a phrase
        its reason holds when that is not the fastest of :data:`RULE_KINDS`.

        Which native loops their self-check turned off on this machine is not known
        here (see the parity tests)."""
        kind = self.kinds[0]
        if kind == PER_PARAM:
            return kind, "is not a torch optimizer class pyroopt can share"
        if kind == TORCH:
            return kind, f"no rule for {self.constructor.__name__}"
        asked = [k for k in self.choices if args.get(k)]
        if asked:
            return TORCH, f"{asked[0]}=True asked for"
        if dtype in HALVES:
            return TORCH, "rounds by position"
        return kind, ""

    def runs(self, args: Mapping[str, Any], dtype: torch.dtype) -> tuple[str, ...]:
        """The implementations that can step a case, fastest first: forced to one of
        these, a bucket takes it; forced to a faster one, the first of these."""
        usual, _ = self.usual(args, dtype)
        return self.kinds[self.kinds.index(usual) :]


def _sgd_valid(args: Mapping[str, Any]) -> bool:
    """torch's SGD takes nesterov only with momentum and without dampening."""
    return not args["nesterov"] or (args["momentum"] > 0 and args["dampening"] == 0)


def _sgd_unreproducible(args: Mapping[str, Any], dtype: torch.dtype) -> str | None:
    if args.get("fused") and args["momentum"] and dtype in HALVES:
        return (
            "torch's fused CPU SGD with momentum in float16 and bfloat16 reads the "
            "memory of the momentum buffers it makes with empty_like (filled with NaN "
            "beforehand, an element of the buffer differs after the second step): "
            "pyro.optim's own numbers change from run to run (-inf, NaN)"
        )
    return None


def _torch_class(name: str, **fields: Any) -> OptimizerInfo:
    """A ``torch.optim`` class, built by the factories of the same name."""
    return OptimizerInfo(
        name=name,
        constructor=getattr(torch.optim, name),
        factory=getattr(pyroopt, name),
        reference=getattr(pyro.optim, name),
        **fields,
    )


def _pyro_class(
    name: str, constructor: type[torch.optim.Optimizer], **fields: Any
) -> OptimizerInfo:
    """One of pyro's own classes given to ``PyroOptim`` directly (its factory in pyroopt
    builds pyroopt's class of the same name instead)."""

    def factory(args: dict[str, Any]) -> pyroopt.PyroOptim:
        return pyroopt.PyroOptim(constructor, args)

    def reference(args: dict[str, Any]) -> pyro.optim.PyroOptim:
        return pyro.optim.PyroOptim(constructor, args)

    return OptimizerInfo(
        name=name, constructor=constructor, factory=factory, reference=reference, **fields
    )


def _pyroopt_class(name: str, **fields: Any) -> OptimizerInfo:
    """pyroopt's class standing in for pyro's class of the same name (its factory)."""
    return OptimizerInfo(
        name=name,
        constructor=getattr(optimizers, name),
        factory=getattr(pyroopt, name),
        reference=getattr(pyro.optim, name),
        **fields,
    )


BOOL = (False, True)
#: 1 - beta1 on both sides of 0.5: the two branches of torch's lerp
BETAS = ((0.9, 0.999), (0.3, 0.6))
CLIPPED_ADAM_GRID = {
    "betas": BETAS,
    "clip_norm": (10.0, 0.3),
    "lrd": (1.0, 0.97),
    "weight_decay": (0.0, 0.1),
    "centered_variance": BOOL,
}
ADAGRAD_RMSPROP_GRID = {"eta": (1.0, 0.3), "t": (0.1, 0.5, 0.0), "delta": (1e-16, 0.1)}

#: every class pyroopt has an update rule for
RULES: tuple[OptimizerInfo, ...] = (
    _torch_class(
        "SGD",
        base={"lr": 0.05},
        grid={
            "momentum": (0.0, 0.9),
            "dampening": (0.0, 0.3),
            "nesterov": BOOL,
            "weight_decay": (0.0, 0.01),
            "maximize": BOOL,
        },
        valid=_sgd_valid,
        choices=("foreach", "fused"),
        unreproducible=_sgd_unreproducible,
        kinds=RULE_KINDS,
    ),
    _torch_class(
        "Adam",
        base={"lr": 0.03},
        grid={
            "betas": BETAS,
            "weight_decay": (0.0, 0.1),
            "amsgrad": BOOL,
            "maximize": BOOL,
            "decoupled_weight_decay": BOOL,
        },
        choices=("foreach", "fused"),
        kinds=RULE_KINDS,
    ),
    _torch_class(
        "AdamW",
        base={"lr": 0.03},
        grid={
            "betas": BETAS,
            "weight_decay": (0.01, 0.0),
            "amsgrad": BOOL,
            "maximize": BOOL,
        },
        choices=("foreach", "fused"),
        kinds=RULE_KINDS,
    ),
    _torch_class(
        "RMSprop",
        base={"lr": 0.01},
        grid={
            # 1 - alpha on both sides of lerp's 0.5; alpha = 1 keeps the average constant
            "alpha": (0.99, 0.3, 1.0),
            "eps": (1e-8, 0.5),
            "centered": BOOL,
            "momentum": (0.0, 0.5),
            "weight_decay": (0.0, 0.1),
            "maximize": BOOL,
        },
        choices=("foreach",),
        kinds=RULE_KINDS,
    ),
    _torch_class(
        "Rprop",
        base={"lr": 0.01},
        grid={
            "etas": ((0.5, 1.2), (0.3, 1.5)),
            "step_sizes": ((1e-6, 50), (1e-4, 0.1)),
            "maximize": BOOL,
        },
        choices=("foreach",),
        kinds=RULE_KINDS,
    ),
    _torch_class(
        "Adagrad",
        base={"lr": 0.05},
        grid={
            "lr_decay": (0.0, 0.01),
            "weight_decay": (0.0, 0.1),
            "initial_accumulator_value": (0.0, 0.2),
            "eps": (1e-10, 0.3),
            "maximize": BOOL,
        },
        choices=("foreach", "fused"),
        kinds=RULE_KINDS,
    ),
    _pyroopt_class("ClippedAdam", base={"lr": 0.03}, grid=CLIPPED_ADAM_GRID, kinds=RULE_KINDS),
    _pyro_class(
        "pyro.ClippedAdam",
        PyroClippedAdam,
        base={"lr": 0.03},
        grid=CLIPPED_ADAM_GRID,
        kinds=RULE_KINDS,
    ),
    _pyroopt_class("AdagradRMSProp", base={}, grid=ADAGRAD_RMSPROP_GRID, kinds=RULE_KINDS),
    _pyro_class(
        "pyro.AdagradRMSProp",
        PyroAdagradRMSProp,
        base={},
        grid=ADAGRAD_RMSPROP_GRID,
        kinds=RULE_KINDS,
    ),
)

#: classes pyroopt steps with torch's (or pyro's) own implementation
TORCH_ONLY: tuple[OptimizerInfo, ...] = (
    _torch_class(
        "Adamax",
        base={"lr": 0.05},
        grid={"weight_decay": (0.0, 0.1), "maximize": BOOL},
        choices=("foreach",),
        kinds=TORCH_KINDS,
    ),
    _torch_class(
        "NAdam",
        base={"lr": 0.05},
        grid={
            "weight_decay": (0.0, 0.1),
            "decoupled_weight_decay": BOOL,
            "momentum_decay": (0.004, 0.1),
            "maximize": BOOL,
        },
        choices=("foreach",),
        kinds=TORCH_KINDS,
    ),
    _torch_class(
        "RAdam",
        base={"lr": 0.05},
        grid={
            "weight_decay": (0.0, 0.1),
            "decoupled_weight_decay": BOOL,
            "maximize": BOOL,
        },
        choices=("foreach",),
        kinds=TORCH_KINDS,
    ),
    _torch_class(
        "ASGD",
        base={"lr": 0.05},
        # t0 = 3: averaging starts within the run
        grid={
            "t0": (1e6, 3.0),
            "lambd": (1e-4, 0.1),
            "weight_decay": (0.0, 0.1),
            "maximize": BOOL,
        },
        choices=("foreach",),
        kinds=TORCH_KINDS,
    ),
    _torch_class(
        "Adadelta",
        base={"lr": 1.0},
        grid={
            "rho": (0.9, 0.3),
            "weight_decay": (0.0, 0.1),
            "maximize": BOOL,
        },
        choices=("foreach",),
        kinds=TORCH_KINDS,
    ),
    _torch_class(
        "Adafactor",
        base={"lr": 0.05},
        grid={"weight_decay": (0.0, 0.1), "maximize": BOOL},
        choices=("foreach",),
        kinds=TORCH_KINDS,
        # it divides by numel: no zero-size parameter, in torch either
        steps_shape=lambda shape: shape.numel() > 0,
    ),
    _torch_class(
        "Muon",
        base={"lr": 0.02},
        grid={"nesterov": (True, False), "weight_decay": (0.1, 0.0)},
        kinds=TORCH_KINDS,
        steps_shape=lambda shape: len(shape) == 2,
    ),
    _torch_class(
        "SparseAdam",
        base={"lr": 0.05},
        grid={"maximize": BOOL},
        kinds=TORCH_KINDS,
        dtypes=FLOATS,
        steps_shape=lambda shape: shape.numel() > 0,
        sparse=True,
    ),
    _pyroopt_class(
        "DCTAdam",
        base={"lr": 0.05},
        grid={"clip_norm": (10.0, 0.3), "lrd": (1.0, 0.97)},
        kinds=TORCH_KINDS,
    ),
    _pyro_class(
        "pyro.DCTAdam",
        PyroDCTAdam,
        base={"lr": 0.05},
        grid={"clip_norm": (10.0, 0.3), "lrd": (1.0, 0.97)},
        kinds=(PER_PARAM,),
    ),
)

INFOS: tuple[OptimizerInfo, ...] = RULES + TORCH_ONLY
BY_NAME: dict[str, OptimizerInfo] = {info.name: info for info in INFOS}
