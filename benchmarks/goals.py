"""The speed goals the issues set, checked against one run's medians.

Each goal names an optimizer, a shape and a ratio of :data:`benchmarks.report.RATIOS`
with a bound. The current issue's goals, for pyroopt's exact default path (pyro.optim's
numbers bit for bit, no torch fused kernel unless ``fused=True`` is asked for), timed
in the same run as pyro.optim, torch fused and the flat fused-Adam limit:

- Adam at 1000 x 10: at least 100x faster than pyro.optim;
- every optimizer of :func:`benchmarks.optimizer_steps.optimizer_specs` (the rules
  pyroopt owns) at 10 x 1,000,000: within 1.2x of the limit.

The goals at 10 x 1,000,000 are checked on their ratio over back-to-back pairs of
single steps (:func:`benchmarks.timing.paired_ratio`, asked for by :func:`goal_pairs`):
those steps stream memory, and the machine's bandwidth drifts between the repeats of
two columns. The goal at 1000 x 10 stays on the ratio of medians: a single short step
right after another column's runs with cold caches. The table shows both ratios.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from benchmarks.optimizer_steps import StepResult, optimizer_specs
from benchmarks.report import RATIOS, format_table, step_ratios


@dataclass(frozen=True)
class Goal:
    """``ratio`` of ``optimizer`` at ``shape`` must be ``>= bound`` (or ``<=``)."""

    optimizer: str
    shape: tuple[int, int]
    ratio: str
    bound: float
    at_least: bool
    #: checked on back-to-back pairs of single steps (steps long enough that one step
    #: alone is a fair sample: memory-bound ones, whose cost drifts with the machine's
    #: bandwidth), else on medians of repeats of consecutive steps
    paired: bool = False

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
        Goal(spec.name, (10, 1_000_000), "pyroopt/limit", LARGE_LIMIT, False, paired=True)
        for spec in optimizer_specs()
    ),
)


def goal_pairs(
    optimizer: str, shape: tuple[int, int], goals: Sequence[Goal] = GOALS
) -> list[tuple[str, str, str]]:
    """``(ratio, numerator column, denominator column)`` of every paired goal on
    ``optimizer`` at ``shape``: the ratios to time in back-to-back pairs."""
    columns = {label: (numerator, denominator) for label, numerator, denominator in RATIOS}
    return [
        (goal.ratio, *columns[goal.ratio])
        for goal in goals
        if goal.paired and (goal.optimizer, goal.shape) == (optimizer, shape)
    ]


def goal_table(results: Sequence[StepResult], goals: Sequence[Goal] = GOALS) -> str:
    """One row per goal whose optimizer and shape ran: the goal, the ratio over pairs
    of steps and the ratio of medians, met or not (on the pairs where they ran)."""
    by_case = {(r.optimizer, (r.n_params, r.numel)): r for r in results}
    rows = []
    for goal in goals:
        result = by_case.get((goal.optimizer, goal.shape))
        if result is None:
            continue
        of_medians = step_ratios(result)[goal.ratio]
        paired = result.paired.get(goal.ratio)
        value = paired if paired is not None else of_medians
        verdict = "-" if value is None else ("met" if goal.met(value) else "NOT MET")
        cells = ["-" if v is None else f"{v:.2f}x" for v in (paired, of_medians)]
        shape = f"{goal.shape[0]:,} x {goal.shape[1]:,}"
        rows.append([goal.optimizer, shape, goal.describe(), *cells, verdict])
    header = ["optimizer", "P x S", "goal", "over pairs", "of medians", ""]
    return format_table(header, rows, left=3)
