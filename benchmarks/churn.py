"""Adam steps while one parameter is re-created every step: time must not grow.

About 20 steady parameters live in Pyro's param store beside one that churns. Each step
sets gradients by hand and calls the optimizer on the step's parameters, as SVI does.
Two rows, pyro.optim and pyroopt side by side in one process, steps interleaved:

- ``recreate``: every step ``del store[name]`` then ``pyro.param(name, ...)``, the same
  name each time (a fresh tensor the optimizer has never seen);
- ``new site``: every step a new name (``new.<i>``), never deleted.

Each step (re-creation, gradients, optimizer call) is timed on its own; the table shows
the median ms per step over the first and over the last :attr:`ChurnPlan.window` steps
and their ratio. The goal: pyroopt's time per step at the end at most
:data:`MAX_GROWTH` times its time at the start.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import pyro
import pyro.optim
import torch
from torch import Tensor

import pyroopt
from benchmarks.report import format_table

STEADY = 20
NUMEL = 10
ARGS = {"lr": 1e-3}
#: goal: pyroopt's last-window time per step at most this times its first-window time
MAX_GROWTH = 2.0

MODES = ("recreate", "new site")
COLUMNS: tuple[tuple[str, str], ...] = (("pyro_optim", "pyro.optim"), ("pyroopt", "pyroopt"))


@dataclass(frozen=True)
class ChurnPlan:
    """Steps per run and the window compared at start and end."""

    steps: int
    window: int


FULL = ChurnPlan(steps=3000, window=300)
QUICK = ChurnPlan(steps=200, window=50)


@dataclass
class ChurnStats:
    """One column of one row: median ms per step at start and end."""

    label: str
    start_ms: float
    end_ms: float

    @property
    def growth(self) -> float:
        """End over start: 1.0 is flat."""
        return self.end_ms / self.start_ms


@dataclass
class ChurnResult:
    """One row (a mode): every column."""

    mode: str
    steps: int
    window: int
    columns: dict[str, ChurnStats]


def _stepper(prefix: str, optim: pyro.optim.PyroOptim, mode: str) -> Callable[[int], None]:
    """Step ``i`` of one column: re-create or add the churning parameter, step all."""
    store = pyro.get_param_store()
    generator = torch.Generator().manual_seed(0)
    grad = torch.randn(NUMEL, generator=generator)
    steady: list[Tensor] = []
    for j in range(STEADY):
        param = pyro.param(f"{prefix}.steady.{j}", torch.randn(NUMEL, generator=generator))
        param = param.unconstrained()  # type: ignore[attr-defined]  # set by pyro.param
        param.grad = grad.clone()
        steady.append(param)
    init = torch.randn(NUMEL, generator=generator)

    def step(i: int) -> None:
        if mode == "recreate":
            name = f"{prefix}.churn"
            if name in store:
                del store[name]
        else:
            name = f"{prefix}.new.{i}"
        param = pyro.param(name, init.clone()).unconstrained()  # type: ignore[attr-defined]
        param.grad = grad.clone()
        optim([*steady, param])

    return step


def time_churn_mode(mode: str, plan: ChurnPlan) -> ChurnResult:
    """Both columns of one row, steps interleaved, each step timed."""
    steppers = {
        "pyro_optim": _stepper(f"churn.pyro_optim.{mode}", pyro.optim.Adam(dict(ARGS)), mode),
        "pyroopt": _stepper(f"churn.pyroopt.{mode}", pyroopt.Adam(dict(ARGS)), mode),
    }
    samples: dict[str, list[float]] = {key: [] for key in steppers}
    clock = time.perf_counter
    for i in range(plan.steps):
        for key, step in steppers.items():
            start = clock()
            step(i)
            samples[key].append(1e3 * (clock() - start))
    columns = {
        key: ChurnStats(
            label,
            statistics.median(samples[key][: plan.window]),
            statistics.median(samples[key][-plan.window :]),
        )
        for key, label in COLUMNS
    }
    return ChurnResult(mode, plan.steps, plan.window, columns)


def time_churn(plan: ChurnPlan) -> list[ChurnResult]:
    """Both rows, with a clean param store around each."""
    results = []
    for mode in MODES:
        pyro.clear_param_store()
        start = time.perf_counter()
        try:
            results.append(time_churn_mode(mode, plan))
        finally:
            pyro.clear_param_store()
        print(f"  churn {mode:<9} {plan.steps} steps {time.perf_counter() - start:5.1f} s")
    return results


def table(results: list[ChurnResult]) -> str:
    """Median ms per step over the first and last window, and end/start, per column."""
    rows = []
    for result in results:
        for stats in result.columns.values():
            rows.append(
                [
                    result.mode,
                    stats.label,
                    f"{stats.start_ms:.4f}",
                    f"{stats.end_ms:.4f}",
                    f"{stats.growth:.2f}x",
                ]
            )
    window = results[0].window if results else 0
    header = ["row", "column", f"first {window} ms", f"last {window} ms", "end/start"]
    return format_table(header, rows, left=2)


def goal_lines(results: list[ChurnResult]) -> list[str]:
    """Per row: pyroopt's end/start against :data:`MAX_GROWTH`, pyro.optim's beside it."""
    lines = []
    for result in results:
        ours, theirs = result.columns["pyroopt"], result.columns["pyro_optim"]
        verdict = "met" if ours.growth <= MAX_GROWTH else "NOT MET"
        lines.append(
            f"churn {result.mode}: pyroopt end/start <= {MAX_GROWTH:g}x: "
            f"{ours.growth:.2f}x {verdict} (pyro.optim {theirs.growth:.2f}x)"
        )
    return lines
