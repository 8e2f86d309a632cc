"""The in-line float32 square root against MKL's call, inside pyroopt's own step.

For every rule whose update takes a root, on P x S float32 parameters (10 x 1,000,000
in the full run), three cases timed together, repeats interleaved:

- ``in_line``: pyroopt's step as it runs by default, the roots computed in line where
  they were checked to be MKL's (``pyroopt/native/newton_root.h``);
- ``mkl``: the same step (its own optimizer and parameters) with every root taken by
  MKL's ``vmsSqrt``, as torch takes it (the in-line root turned off for the repeat);
- ``limit``: the fused kernel on one flat tensor, as in the optimizer-step table.

Both pyroopt cases compute the same bits (the test suite checks it); this shows what
the in-line root saves, where it is on. Where it is off (another CPU, a torch without
MKL), both cases take MKL's root and the table says so.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import pyro

from benchmarks.optimizer_steps import (
    OptimizerSpec,
    Problem,
    _pyro_api_column,
    build_limit,
    make_problem,
    optimizer_specs,
)
from benchmarks.report import format_table
from benchmarks.timing import Case, Plan, measure
from pyroopt import native
from pyroopt.native import _newton_root

#: the rules whose update takes a square root per element
ROOT_RULES = ("Adam", "AdamW", "RMSprop", "Adagrad", "ClippedAdam", "AdagradRMSProp")
FULL_SHAPE = (10, 1_000_000)
QUICK_SHAPE = (10, 10_000)
CASES = ("in_line", "mkl", "limit")


@dataclass
class RootRow:
    """Median ms per step of each case for one rule."""

    optimizer: str
    n_params: int
    numel: int
    ms: dict[str, float]


@contextmanager
def mkl_roots() -> Iterator[None]:
    """Every float32 root through MKL for the duration; the verdict's choice after."""
    lib = native.library()
    if lib is None:
        yield
        return
    lib.pyroopt_use_newton_root(0)
    try:
        yield
    finally:
        lib.pyroopt_use_newton_root(int(_newton_root.reason_off(lib) is None))


def in_line_state() -> str:
    """``"on"``, or why the in-line root is off in this process."""
    lib = native.library()
    if lib is None:
        return f"off: no native loops ({native.unavailable_reason()})"
    reason = _newton_root.reason_off(lib)
    return "on" if reason is None else f"off: {reason}"


def _pyroopt_step(spec: OptimizerSpec, problem: Problem, prefix: str) -> Case:
    """A pyroopt optimizer's step over its own copies of the problem's parameters."""
    optim = spec.pyroopt_factory(dict(spec.args))
    return _pyro_api_column(optim, prefix, problem, lambda: "pyroopt").case


def time_rule(spec: OptimizerSpec, shape: tuple[int, int], plan: Plan, seed: int) -> RootRow:
    """The three cases for ``spec`` on ``shape``."""
    problem = make_problem(*shape, seed)
    pyro.clear_param_store()
    try:
        cases = {
            "in_line": _pyroopt_step(spec, problem, "roots.in_line"),
            "mkl": Case(_pyroopt_step(spec, problem, "roots.mkl").step, context=mkl_roots),
            "limit": build_limit(spec, problem).case,
        }
        measurement = measure(cases, plan)
    finally:
        pyro.clear_param_store()
    if measurement.errors:
        raise RuntimeError(f"{spec.name}: {measurement.errors}")
    ms = {name: measurement.timings[name].median_ms for name in CASES}
    return RootRow(spec.name, shape[0], shape[1], ms)


def time_roots(plan: Plan, quick: bool, seed: int) -> list[RootRow]:
    """A row per rule of :data:`ROOT_RULES`."""
    shape = QUICK_SHAPE if quick else FULL_SHAPE
    specs = [s for s in optimizer_specs() if s.name in ROOT_RULES]
    return [time_rule(spec, shape, plan, seed) for spec in specs]


def table(rows: list[RootRow]) -> str:
    """ms per step of each case, and the ratios the in-line root changes."""
    header = ["optimizer", "P x S", "in-line ms", "MKL ms", "limit ms", "MKL/in-line",
              "in-line/limit", "MKL/limit"]  # fmt: skip
    body = [
        [
            row.optimizer,
            f"{row.n_params:,} x {row.numel:,}",
            f"{row.ms['in_line']:.3f}",
            f"{row.ms['mkl']:.3f}",
            f"{row.ms['limit']:.3f}",
            f"{row.ms['mkl'] / row.ms['in_line']:.2f}x",
            f"{row.ms['in_line'] / row.ms['limit']:.2f}x",
            f"{row.ms['mkl'] / row.ms['limit']:.2f}x",
        ]
        for row in rows
    ]
    return format_table(header, body, left=2)


__all__ = ["ROOT_RULES", "RootRow", "in_line_state", "mkl_roots", "table", "time_roots"]
