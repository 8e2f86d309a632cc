"""One timing helper for every column: warm up, calibrate, then interleave repeats.

Each column is a :class:`Case`, a zero-argument ``step`` callable (one optimizer step,
or one SVI step) and the context it must run in. :func:`measure` warms every case up,
picks how many steps make one repeat last about ``Plan.target_seconds``, and then runs
the repeats round-robin over the cases, so that a slow spell of a shared machine hits
every column alike. The figure kept is the median over repeats of the time per step.
A case that raises is reported, not fatal.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field

Step = Callable[[], object]


@dataclass(frozen=True)
class Plan:
    """How long and how often to time each case."""

    repeats: int
    warmup: int
    target_seconds: float
    """Wall time one repeat should take; sets the number of steps per repeat."""


@dataclass(frozen=True)
class Case:
    """A step to time and the context every call of it must run in."""

    step: Step
    context: Callable[[], AbstractContextManager[object]] = field(default=nullcontext)


@dataclass(frozen=True)
class Timing:
    """The time per step of one case: the median and every repeat, in milliseconds."""

    median_ms: float
    repeat_ms: list[float]
    steps_per_repeat: int


def seconds_per_step(step: Step, steps: int) -> float:
    """Mean wall time of ``steps`` consecutive calls of ``step``, by ``time.perf_counter``."""
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return (time.perf_counter() - start) / steps


def steps_per_repeat(case: Case, plan: Plan) -> int:
    """Warm ``case`` up, then the number of steps that lasts about ``plan.target_seconds``."""
    with case.context():
        for _ in range(plan.warmup):
            case.step()
        estimate = seconds_per_step(case.step, 2)
    return max(1, round(plan.target_seconds / max(estimate, 1e-9)))


@dataclass
class Measurement:
    """The timings of the cases that ran, and the error of each case that raised."""

    timings: dict[str, Timing] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)


def describe(error: Exception) -> str:
    """A one-line account of ``error`` for the report."""
    return f"{type(error).__name__}: {error}"


def paired_ratio(numerator: Case, denominator: Case, pairs: int) -> float:
    """The median, over ``pairs`` back-to-back pairs of single steps, of the numerator's
    time over the denominator's (which goes first alternates from pair to pair).

    Repeats of a few tenths of a second each, as :func:`measure` takes them, see a
    shared machine at different moments: its memory bandwidth was seen to drift by
    1.5x from minute to minute, which moves a ratio of two medians. The two steps of a
    pair run within milliseconds of each other, so a ratio per pair cancels the drift.
    """
    if pairs < 1:
        raise ValueError(f"pairs must be at least 1, got {pairs}")
    ratios = []
    for i in range(pairs):
        first, second = (numerator, denominator) if i % 2 == 0 else (denominator, numerator)
        times = []
        for case in (first, second):
            with case.context():
                times.append(seconds_per_step(case.step, 1))
        top, bottom = times if i % 2 == 0 else times[::-1]
        ratios.append(top / max(bottom, 1e-12))
    return statistics.median(ratios)


def measure(cases: Mapping[str, Case], plan: Plan) -> Measurement:
    """Time every case of ``cases`` under ``plan``, repeats interleaved across cases.

    A case that raises is dropped from the timing and reported in ``errors``; the
    others go on, so one broken column does not hide the rest.
    """
    result = Measurement()
    counts: dict[str, int] = {}
    for name, case in cases.items():
        try:
            counts[name] = steps_per_repeat(case, plan)
        except Exception as error:  # a benchmark reports failures rather than stopping
            result.errors[name] = describe(error)
    samples: dict[str, list[float]] = {name: [] for name in counts}
    for _ in range(plan.repeats):
        for name in list(samples):
            case = cases[name]
            try:
                with case.context():
                    samples[name].append(1e3 * seconds_per_step(case.step, counts[name]))
            except Exception as error:
                result.errors[name] = describe(error)
                del samples[name]
    for name, ms in samples.items():
        result.timings[name] = Timing(statistics.median(ms), ms, counts[name])
    return result
