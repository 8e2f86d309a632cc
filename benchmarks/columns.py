"""Columns of a benchmark table: build each, time them together, keep what happened.

A column is built by a :data:`Builder`, which returns ``None`` where the column does not
apply (e.g. ``fused=True`` for an optimizer that has no fused kernel). Building or
stepping may fail; the column then records the error and the others still run.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from benchmarks.timing import Case, Plan, Timing, describe, measure


@dataclass(frozen=True)
class Built:
    """A column ready to time, and how to name what it ran once it has run."""

    case: Case
    implementation: Callable[[], str]


Builder = Callable[[], "Built | None"]


@dataclass(frozen=True)
class Entry:
    """One column: a key for the JSON file, a label for people, and its builder."""

    key: str
    label: str
    build: Builder


@dataclass
class ColumnResult:
    """What one column gave: ``status`` is ``"ok"``, ``"n/a"`` or ``"error"``."""

    label: str
    status: str
    implementation: str = ""
    timing: Timing | None = None
    error: str | None = None

    @property
    def median_ms(self) -> float | None:
        """The median time per step, or ``None`` when the column did not run."""
        return self.timing.median_ms if self.timing is not None else None


def build_columns(entries: Sequence[Entry]) -> tuple[dict[str, ColumnResult], dict[str, Built]]:
    """Build every column: the results of those that do not run (n/a, or failed to
    build), and the built ones by key."""
    results: dict[str, ColumnResult] = {}
    built: dict[str, Built] = {}
    for entry in entries:
        try:
            column = entry.build()
        except Exception as error:  # report a column that cannot be built, go on
            results[entry.key] = ColumnResult(entry.label, "error", error=describe(error))
            continue
        if column is None:
            results[entry.key] = ColumnResult(entry.label, "n/a")
        else:
            built[entry.key] = column
    return results, built


def time_columns(
    entries: Sequence[Entry],
    built: dict[str, Built],
    results: dict[str, ColumnResult],
    plan: Plan,
) -> dict[str, ColumnResult]:
    """Time the built columns together under ``plan``; every column's result, in
    ``entries`` order."""
    results = dict(results)
    measurement = measure({key: column.case for key, column in built.items()}, plan)
    for key, column in built.items():
        label = next(entry.label for entry in entries if entry.key == key)
        if key in measurement.errors:
            results[key] = ColumnResult(label, "error", error=measurement.errors[key])
        else:
            timing = measurement.timings[key]
            results[key] = ColumnResult(label, "ok", column.implementation(), timing)
    return {entry.key: results[entry.key] for entry in entries}


def run_columns(entries: Sequence[Entry], plan: Plan) -> dict[str, ColumnResult]:
    """Build every column, time those that apply under ``plan``, in ``entries`` order."""
    results, built = build_columns(entries)
    return time_columns(entries, built, results, plan)
