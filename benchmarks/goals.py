"""The speed goals the issues set, checked against one run's medians.

Each goal names an optimizer, a shape and a ratio of :data:`benchmarks.report.RATIOS`
with a bound: at least ``30x`` faster than pyro.optim at 1000 x 10, and at most 1.5
times the one-flat-tensor limit at 10 x 1,000,000, for the optimizers of issue 4.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from benchmarks.optimizer_steps import StepResult
from benchmarks.report import format_table, step_ratios


@dataclass(frozen=True)
class Goal:
    """``ratio`` of ``optimizer`` at ``shape`` must be ``>= bound`` (or ``<=``)."""

    optimizer: str
    shape: tuple[int, int]
    ratio: str
    bound: float
    at_least: bool

    def met(self, value: float) -> bool:
        """Whether a measured ratio meets the goal."""
        return value >= self.bound if self.at_least else value <= self.bound

    def describe(self) -> str:
        """The goal as one reads it, e.g. ``pyro.optim/pyroopt >= 30x``."""
        return f"{self.ratio} {'>=' if self.at_least else '<='} {self.bound:g}x"


_ISSUE_4 = ("RMSprop", "Rprop", "ClippedAdam", "AdagradRMSProp")

#: issue 4: at 1000 x 10, at least 30x pyro.optim; at 10 x 1e6, within 1.5x of the limit
GOALS: tuple[Goal, ...] = (
    *(Goal(name, (1000, 10), "pyro.optim/pyroopt", 30.0, True) for name in _ISSUE_4),
    *(Goal(name, (10, 1_000_000), "pyroopt/limit", 1.5, False) for name in _ISSUE_4),
)


def goal_table(results: Sequence[StepResult], goals: Sequence[Goal] = GOALS) -> str:
    """One row per goal whose optimizer and shape ran: the goal, the ratio, met or not."""
    by_case = {(r.optimizer, (r.n_params, r.numel)): r for r in results}
    rows = []
    for goal in goals:
        result = by_case.get((goal.optimizer, goal.shape))
        if result is None:
            continue
        value = step_ratios(result)[goal.ratio]
        verdict = "-" if value is None else ("met" if goal.met(value) else "NOT MET")
        measured = "-" if value is None else f"{value:.2f}x"
        shape = f"{goal.shape[0]:,} x {goal.shape[1]:,}"
        rows.append([goal.optimizer, shape, goal.describe(), measured, verdict])
    return format_table(["optimizer", "P x S", "goal", "measured", ""], rows, left=3)
