"""Smoke test: the loaded and churn benchmark rows run in their quick form and give rows.

Not a timing test: nothing here compares a time to a bound.
"""

from __future__ import annotations

import pytest

from benchmarks import churn, goals, loaded

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
