"""Optimizer step timings: pyro.optim, one torch optimizer, pyroopt and the flat limit.

For P parameters of S float32 elements each, with gradients set once and reused by
every step, the columns are:

- ``pyro_optim``: ``pyro.optim.<Name>``, one torch optimizer per parameter;
- ``torch_foreach`` / ``torch_fused``: one torch optimizer over all P parameters with
  ``foreach=True`` / ``fused=True`` (n/a where the class has no such argument);
- ``pyroopt``: ``pyroopt.<Name>``, the drop-in replacement;
- ``limit``: one torch optimizer on ONE flat tensor of P*S elements (fused where the
  class supports it, else foreach, else its only implementation): what stepping the
  same numbers costs with no per-tensor overhead at all.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import pyro
import pyro.optim
import torch
from pyro.optim.adagrad_rmsprop import AdagradRMSProp as TorchAdagradRMSProp
from pyro.optim.clipped_adam import ClippedAdam as TorchClippedAdam
from torch import Tensor
from torch.optim import Optimizer

import pyroopt
from benchmarks.columns import Built, ColumnResult, Entry, build_columns, time_columns
from benchmarks.timing import Case, Plan, paired_ratio

OptimFactory = Callable[[dict[str, Any]], pyro.optim.PyroOptim]

#: (P parameters, S elements each)
SHAPES: tuple[tuple[int, int], ...] = ((1000, 10), (100, 1000), (10, 1_000_000))


@dataclass(frozen=True)
class OptimizerSpec:
    """One algorithm as pyro.optim, pyroopt and torch each spell it."""

    name: str
    pyro_factory: OptimFactory
    pyroopt_factory: OptimFactory
    torch_class: type[Optimizer]
    args: dict[str, Any]


def pyro_factory(name: str) -> OptimFactory:
    """``pyro.optim.<name>``; pyro.optim defines these names in a loop, unseen by mypy."""
    factory: OptimFactory = getattr(pyro.optim, name)
    return factory


def optimizer_specs() -> list[OptimizerSpec]:
    """The optimizers benchmarked, with the hyperparameters every column uses."""
    return [
        OptimizerSpec("Adam", pyro_factory("Adam"), pyroopt.Adam, torch.optim.Adam, {"lr": 1e-3}),
        OptimizerSpec(
            "AdamW", pyro_factory("AdamW"), pyroopt.AdamW, torch.optim.AdamW, {"lr": 1e-3}
        ),
        OptimizerSpec(
            "SGD momentum=0.9",
            pyro_factory("SGD"),
            pyroopt.SGD,
            torch.optim.SGD,
            {"lr": 1e-3, "momentum": 0.9},
        ),
        OptimizerSpec(
            "RMSprop", pyro_factory("RMSprop"), pyroopt.RMSprop, torch.optim.RMSprop, {"lr": 1e-3}
        ),
        OptimizerSpec(
            "Rprop", pyro_factory("Rprop"), pyroopt.Rprop, torch.optim.Rprop, {"lr": 1e-3}
        ),
        OptimizerSpec(
            "Adagrad", pyro_factory("Adagrad"), pyroopt.Adagrad, torch.optim.Adagrad, {"lr": 1e-3}
        ),
        OptimizerSpec(
            "ClippedAdam",
            pyro.optim.ClippedAdam,
            pyroopt.ClippedAdam,
            TorchClippedAdam,
            {"lr": 1e-3},
        ),
        OptimizerSpec(
            "AdagradRMSProp",
            pyro.optim.AdagradRMSProp,
            pyroopt.AdagradRMSProp,
            TorchAdagradRMSProp,
            {"eta": 1e-3},
        ),
    ]


@dataclass(frozen=True)
class Problem:
    """P parameters of S elements: initial values, and the gradients every step reuses."""

    values: list[Tensor]
    grads: list[Tensor]


def make_problem(n_params: int, numel: int, seed: int) -> Problem:
    """Random float32 values and gradients, the same for every column."""
    generator = torch.Generator().manual_seed(seed)
    values = torch.randn(n_params, numel, generator=generator)
    grads = torch.randn(n_params, numel, generator=generator)
    return Problem(list(values.unbind()), list(grads.unbind()))


@dataclass
class StepResult:
    """Every column's timing of one optimizer on one shape."""

    optimizer: str
    args: dict[str, Any]
    n_params: int
    numel: int
    columns: dict[str, ColumnResult]
    #: ratio label -> the median ratio over back-to-back pairs of steps of its two
    #: columns (:func:`benchmarks.timing.paired_ratio`), for the ratios asked for
    paired: dict[str, float] = field(default_factory=dict)

    def median_ms(self, key: str) -> float | None:
        """The median ms per step of column ``key``, or ``None`` if it did not run."""
        return self.columns[key].median_ms


# -- building the columns ----------------------------------------------------------------


def _leaf(value: Tensor, grad: Tensor) -> Tensor:
    """A fresh leaf tensor holding ``value``, with a private copy of ``grad``."""
    leaf = value.clone().requires_grad_(True)
    leaf.grad = grad.clone()
    return leaf


def _store_params(prefix: str, problem: Problem) -> list[Tensor]:
    """The problem's parameters registered in Pyro's param store, as SVI passes them."""
    params = []
    for i, (value, grad) in enumerate(zip(problem.values, problem.grads, strict=True)):
        constrained = pyro.param(f"{prefix}.{i}", value.clone())
        param = constrained.unconstrained()  # type: ignore[attr-defined]  # set by pyro.param
        param.grad = grad.clone()
        params.append(param)
    return params


def _accepts(cls: type[Optimizer], argument: str) -> bool:
    """Whether the optimizer class takes ``argument`` (e.g. ``"fused"``)."""
    return argument in inspect.signature(cls).parameters


def _pyroopt_engine(optim: pyro.optim.PyroOptim) -> str:
    """Which of pyroopt's bucket kinds stepped the parameters (for the report only)."""
    buckets = getattr(optim, "_buckets", None)  # private; a missing one only blurs the label
    if not isinstance(buckets, list) or not buckets:
        return "pyroopt"
    return "pyroopt " + ", ".join(sorted({type(b).__name__ for b in buckets}))


def _pyro_api_column(
    optim: pyro.optim.PyroOptim, prefix: str, problem: Problem, implementation: Callable[[], str]
) -> Built:
    """``optim(params)`` over parameters in the param store, as SVI calls it."""
    params = _store_params(prefix, problem)
    return Built(Case(functools.partial(optim, params)), implementation)


def _torch_column(
    cls: type[Optimizer], params: list[Tensor], args: dict[str, Any], flag: str | None
) -> Built:
    """One ``cls`` over ``params``, with ``flag=True`` (``"foreach"``/``"fused"``) if given."""
    kwargs = {**args, flag: True} if flag is not None else dict(args)
    optimizer = cls(params, **kwargs)
    setting = f"{flag}=True" if flag is not None else ""
    label = f"{cls.__name__}({setting}) over {len(params)} tensor(s)"
    return Built(Case(optimizer.step), lambda: label)


def build_pyro_optim(spec: OptimizerSpec, problem: Problem) -> Built:
    """The ``pyro_optim`` column."""
    optim = spec.pyro_factory(dict(spec.args))
    per_param = f"one {spec.torch_class.__name__} per parameter"
    return _pyro_api_column(optim, "pyro_optim", problem, lambda: per_param)


def build_pyroopt(spec: OptimizerSpec, problem: Problem) -> Built:
    """The ``pyroopt`` column."""
    optim = spec.pyroopt_factory(dict(spec.args))
    return _pyro_api_column(optim, "pyroopt", problem, functools.partial(_pyroopt_engine, optim))


def build_torch_single(spec: OptimizerSpec, problem: Problem, flag: str) -> Built | None:
    """The ``torch_<flag>`` column, or ``None`` when the class has no ``flag`` argument."""
    if not _accepts(spec.torch_class, flag):
        return None
    params = [_leaf(v, g) for v, g in zip(problem.values, problem.grads, strict=True)]
    return _torch_column(spec.torch_class, params, spec.args, flag)


def build_limit(spec: OptimizerSpec, problem: Problem) -> Built:
    """The ``limit`` column: a fused kernel on one flat tensor of all the elements.

    The class's own fused kernel where torch has one; otherwise fused Adam, the
    cheapest comparable one-pass update, which is the reference the speed goals name.
    """
    flat = _leaf(torch.cat(problem.values), torch.cat(problem.grads))
    if _accepts(spec.torch_class, "fused"):
        return _torch_column(spec.torch_class, [flat], spec.args, "fused")
    return _torch_column(torch.optim.Adam, [flat], {"lr": 1e-3}, "fused")


ColumnBuilder = Callable[[OptimizerSpec, Problem], "Built | None"]

#: (key, label, builder), in table order
COLUMNS: tuple[tuple[str, str, ColumnBuilder], ...] = (
    ("pyro_optim", "pyro.optim", build_pyro_optim),
    ("torch_foreach", "torch foreach", functools.partial(build_torch_single, flag="foreach")),
    ("torch_fused", "torch fused", functools.partial(build_torch_single, flag="fused")),
    ("pyroopt", "pyroopt", build_pyroopt),
    ("limit", "limit", build_limit),
)


def time_optimizer(
    spec: OptimizerSpec,
    shape: tuple[int, int],
    plan: Plan,
    seed: int,
    pairs: Sequence[tuple[str, str, str]] = (),
    pair_count: int = 0,
) -> StepResult:
    """Every column for ``spec`` on ``shape``, timed together under ``plan``; then, for
    each ``(label, numerator, denominator)`` of ``pairs`` whose columns both ran, their
    ratio over ``pair_count`` back-to-back pairs of steps."""
    n_params, numel = shape
    problem = make_problem(n_params, numel, seed)
    entries = [
        Entry(key, label, functools.partial(build, spec, problem)) for key, label, build in COLUMNS
    ]
    pyro.clear_param_store()
    paired = {}
    try:
        results, built = build_columns(entries)
        columns = time_columns(entries, built, results, plan)
        for label, numerator, denominator in pairs if pair_count > 0 else ():
            if columns[numerator].status == "ok" and columns[denominator].status == "ok":
                paired[label] = paired_ratio(
                    built[numerator].case, built[denominator].case, pair_count
                )
    finally:
        pyro.clear_param_store()
    return StepResult(spec.name, dict(spec.args), n_params, numel, columns, paired)
