"""Smoke test: the loaded, churn and square-root benchmark rows run in their quick form and
give rows.

Not a timing test: nothing here compares a time to a bound.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable

import pytest

from benchmarks import churn, goals, loaded, optimizer_steps, square_root, timing
from benchmarks.timing import Plan

pytestmark = pytest.mark.slow


def test_loaded_rows_run_and_kill_the_busy_loop() -> None:
    plan = loaded.LoadedPlan(calls={(1000, 10): 2, (100, 44): 2}, blocks=1, warmup=1)
    with loaded.busy_core() as proc:
        assert proc.poll() is None
    assert proc.poll() is not None  # killed on leaving
    rows = loaded.time_loaded(plan, 0)
    assert [(r.n_params, r.numel) for r in rows] == list(loaded.SHAPES)
    for row in rows:
        assert set(row.columns) == {key for key, _ in loaded.COLUMNS}
        assert all(c.calls == 2 and c.max_ms >= c.median_ms > 0 for c in row.columns.values())
    assert "100 x 44" in loaded.goal_line(rows)
    assert "torch fused" in loaded.table(rows)


def test_churn_rows_run() -> None:
    rows = churn.time_churn(churn.ChurnPlan(steps=6, window=2))
    assert [r.mode for r in rows] == list(churn.MODES)
    for row in rows:
        assert set(row.columns) == {"pyro_optim", "pyroopt"}
    assert len(churn.goal_lines(rows)) == len(churn.MODES)


def test_goals_cover_every_spec() -> None:
    large = {g.optimizer for g in goals.GOALS if g.shape == (10, 1_000_000)}
    assert "Adam" in large and "AdamW" in large and "Adagrad" in large
    assert any(g.optimizer == "Adam" and g.bound == 100.0 for g in goals.GOALS)


def _in_line_takes_a_block() -> bool:
    """Whether the native library takes a block of ordinary roots in line now."""
    import ctypes

    import torch

    from pyroopt import native

    lib = native.library()
    assert lib is not None
    function = lib.pyroopt_newton_root_f32
    function.argtypes = [ctypes.c_void_p, ctypes.c_int64]
    function.restype = ctypes.c_int
    x = torch.full((64,), 2.0, dtype=torch.float32)
    return bool(function(x.data_ptr(), 64))


def test_square_root_rows_run_and_leave_the_in_line_root_as_it_was() -> None:
    before = _in_line_takes_a_block()
    assert before == (square_root.in_line_state() == "on")
    rows = square_root.time_roots(Plan(repeats=1, warmup=1, target_seconds=0.001), True, 0)
    assert [r.optimizer for r in rows] == list(square_root.ROOT_RULES)
    assert all(set(r.ms) == set(square_root.CASES) and min(r.ms.values()) > 0 for r in rows)
    assert "MKL/in-line" in square_root.table(rows)
    assert _in_line_takes_a_block() == before


def test_loaded_calls_that_block_or_collect_are_told_apart() -> None:
    """The loaded row's goal leaves out calls the OS preempted or a garbage collection
    ran in; a call that waits (here, sleeps) counts as blocked."""
    steps = {"sleeps": lambda: time.sleep(0.001), "collects": gc.collect, "runs": lambda: None}
    samples = loaded.time_calls(steps, calls=20, blocks=2)
    assert all(c.blocked and c.cpu_ms < c.ms for c in samples["sleeps"])  # off the CPU
    assert all(c.collected and not c.undisturbed for c in samples["collects"])
    assert not any(c.collected or c.blocked for c in samples["runs"])
    stats = loaded.CallStats.of("collects", samples["collects"])
    assert (stats.calls, stats.collected, stats.undisturbed, stats.max_undisturbed_ms) == (
        20,
        20,
        0,
        0.0,
    )


def test_paired_ratio_alternates_and_takes_the_median_of_pairs(monkeypatch) -> None:
    """On a fake clock: the numerator costs 3 ticks and the denominator 1, except one
    slow spell of the denominator (a pair's ratio drops), which the median ignores."""
    clock = [0.0]
    order: list[str] = []
    monkeypatch.setattr(timing.time, "perf_counter", lambda: clock[0])

    def step(name: str, ticks: Callable[[], float]) -> Callable[[], None]:
        def run() -> None:
            order.append(name)
            clock[0] += ticks()

        return run

    slow = iter([1.0, 1.0, 50.0] + [1.0] * 10)
    numerator = timing.Case(step("n", lambda: 3.0))
    denominator = timing.Case(step("d", lambda: next(slow)))
    assert timing.paired_ratio(numerator, denominator, 5) == 3.0
    assert order == ["n", "d", "d", "n", "n", "d", "d", "n", "n", "d"]
    with pytest.raises(ValueError, match="pairs must be at least 1, got 0"):
        timing.paired_ratio(numerator, denominator, 0)


def test_goals_are_checked_on_pairs_where_the_run_timed_them() -> None:
    spec = next(s for s in optimizer_steps.optimizer_specs() if s.name == "Adam")
    shape = (2, 300)
    goal = goals.Goal("Adam", shape, "pyroopt/limit", 1.2, False, paired=True)
    pairs = goals.goal_pairs("Adam", shape, [goal, goals.Goal("Adam", shape, "x", 1, True)])
    assert pairs == [("pyroopt/limit", "pyroopt", "limit")]
    assert [g.shape for g in goals.GOALS if g.paired] == [(10, 1_000_000)] * (len(goals.GOALS) - 1)
    plan = Plan(repeats=1, warmup=1, target_seconds=0.001)
    result = optimizer_steps.time_optimizer(spec, shape, plan, 0, pairs, pair_count=3)
    assert set(result.paired) == {"pyroopt/limit"} and result.paired["pyroopt/limit"] > 0
    result.paired["pyroopt/limit"] = 1.1  # met on the pairs, whatever the medians say
    row = goals.goal_table([result], [goal]).splitlines()[-1]
    assert "1.10x" in row and row.rstrip().endswith("met") and "NOT" not in row
    result.paired["pyroopt/limit"] = 1.3
    assert goals.goal_table([result], [goal]).splitlines()[-1].rstrip().endswith("NOT MET")
