"""benchmarks/cliff: the rows it times and the verdicts it prints (not timed)."""

from __future__ import annotations

from benchmarks import cliff


def test_the_path_rows_time_each_path_against_pyro_optim_and_judge_them():
    rows = cliff.path_rows(n=5, size=3, steps=3, rounds=1)
    assert [r.path for r in rows] == [
        "fresh",
        "after a resume",
        "after one new parameter per step",
    ]
    assert all(r.pyroopt_ms > 0 and r.pyro_ms > 0 for r in rows)
    assert rows[0].vs_fresh == 1.0
    table = cliff.path_table(rows, 5, 3)
    assert "after a resume" in table and "pyro.optim" in table


def test_a_path_meets_its_goal_only_near_fresh_and_far_ahead_of_pyro_optim():
    def row(ours, theirs):
        return cliff.PathRow("p", ours, theirs, vs_fresh=ours / 1.0, speedup=theirs / ours)

    assert row(1.3, 65.0).met
    assert not row(1.31, 1000.0).met  # a cliff
    assert not row(1.0, 49.0).met  # not fast enough


def test_peak_rows_measure_children_and_judge_against_pyro_optim_and_the_minimum():
    (row,) = cliff.peak_rows(shapes=((3, 1000),), rules=("Adam",))
    assert row["minimum"] > 0 and row["pyro.optim"] > 0 and row["pyroopt"] > 0
    assert row["scratch"] > 0  # a bucket of 3000 elements steps flat
    assert "Adam" in cliff.peak_table([row])
