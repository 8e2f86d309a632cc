"""The speed goals the issues set, checked against one run's medians.

Each goal names an optimizer, a shape and a ratio of :data:`benchmarks.report.RATIOS`
with a bound. The current issue's goals, for pyroopt's exact default path (pyro.optim's
numbers bit for bit, no torch fused kernel unless ``fused=True`` is asked for), timed
in the same run as pyro.optim, torch fused and the flat fused-Adam limit:

- Adam at 1000 x 10: at least 100x faster than pyro.optim;
- every optimizer of :func:`benchmarks.optimizer_steps.optimizer_specs` (the rules
  pyroopt owns) at 10 x 1,000,000: within 1.2x of the limit.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from benchmarks.optimizer_steps import StepResult, optimizer_specs
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
        """The goal as one reads it, e.g. ``pyro.optim/pyroopt >= 100x``."""
        return f"{self.ratio} {'>=' if self.at_least else '<='} {self.bound:g}x"


#: at 1000 x 10, Adam at least this many times faster than pyro.optim
SMALL_SPEEDUP = 100.0
#: at 10 x 1e6, every optimizer at most this many times the flat limit
LARGE_LIMIT = 1.2

#: the current issue: Adam >= 100x pyro.optim at 1000 x 10; every rule <= 1.2x the limit
GOALS: tuple[Goal, ...] = (
    Goal("Adam", (1000, 10), "pyro.optim/pyroopt", SMALL_SPEEDUP, True),
    *(
        Goal(spec.name, (10, 1_000_000), "pyroopt/limit", LARGE_LIMIT, False)
        for spec in optimizer_specs()
    ),
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
