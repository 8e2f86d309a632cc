"""The whole-program benchmark's harness: pairing, ratios and verdicts on a fake clock,
and one real tiny run of every program (the same final parameters with both optimizers).

Not a timing test: nothing here compares a measured time to a bound.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from typing import Any

import pyro
import pytest
import torch

from benchmarks import whole_program as wp
from benchmarks.programs.common import RESULT_MARKER


class FakeClock:
    """A clock that moves only when told to."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def result_line(optim: str, optim_seconds: float, checksum: str = "c0ffee") -> str:
    result = {
        "optim": optim,
        "steps": 3,
        "optim_calls": 3,
        "optim_seconds": optim_seconds,
        "first_call_seconds": 0.5 * optim_seconds,
        "loss": 1.5,
        "checksum": checksum,
    }
    return f"some output\n{RESULT_MARKER} {json.dumps(result)}\n"


class FakeLaunch:
    """Stands in for ``subprocess.run``: each call moves the clock on by the next
    scripted duration of the optimizer it runs, and prints a result line."""

    def __init__(
        self,
        clock: FakeClock,
        seconds: dict[str, list[float]],
        checksums: dict[str, str] | None = None,
    ) -> None:
        self.clock = clock
        self.seconds = {optim: list(times) for optim, times in seconds.items()}
        self.checksums = checksums or {}
        self.commands: list[list[str]] = []
        self.cwds: list[Any] = []

    def __call__(self, command: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        self.commands.append(command)
        self.cwds.append(kwargs.get("cwd"))
        assert kwargs.get("capture_output") and kwargs.get("text")
        optim = command[command.index("--optim") + 1]
        wall = self.seconds[optim].pop(0)
        self.clock.now += wall
        stdout = result_line(optim, 0.1 * wall, self.checksums.get(optim, "c0ffee"))
        return subprocess.CompletedProcess(command, 0, stdout=stdout, stderr="")


def fake_runner(launch: FakeLaunch, clock: FakeClock) -> wp.RunChild:
    def run(program: str, optim: str, steps: int) -> wp.ChildRun:
        return wp.run_child(program, optim, steps, launch=launch, clock=clock)

    return run


TINY = wp.Program("tiny_model", "a tiny model", steps=500, quick_steps=3)
PLAN = wp.WholePlan(pairs=3, quick=True, warmup=False)


def row_of(pyro_s: Sequence[float], pyroopt_s: Sequence[float], **checksums: str) -> wp.Row:
    clock = FakeClock()
    launch = FakeLaunch(clock, {"pyro": list(pyro_s), "pyroopt": list(pyroopt_s)}, checksums)
    plan = replace(PLAN, pairs=len(pyro_s))
    return wp.time_row(TINY, wp.IDLE, plan, fake_runner(launch, clock))


# -- pairing and timing ------------------------------------------------------------------


def test_pairs_alternate_which_optimizer_goes_first() -> None:
    order: list[str] = []

    def run_once(optim: str) -> wp.ChildRun:
        order.append(optim)
        return wp.ChildRun(optim, 1.0, 0.1, 0.05, "c", 0.0)

    pairs = wp.run_pairs(run_once, 4)
    assert order == ["pyro", "pyroopt", "pyroopt", "pyro", "pyro", "pyroopt", "pyroopt", "pyro"]
    assert [pair.first for pair in pairs] == ["pyro", "pyroopt", "pyro", "pyroopt"]
    assert all(pair.pyro.optim == "pyro" and pair.pyroopt.optim == "pyroopt" for pair in pairs)


@pytest.mark.parametrize("pairs", [0, -1])
def test_run_pairs_refuses_fewer_than_one_pair(pairs: int) -> None:
    with pytest.raises(ValueError, match=f"pairs must be at least 1, got {pairs}"):
        wp.run_pairs(lambda optim: wp.ChildRun(optim, 1.0, 0.1, 0.05, "c", 0.0), pairs)


def test_run_child_times_the_whole_child_on_the_clock() -> None:
    clock = FakeClock()
    launch = FakeLaunch(clock, {"pyroopt": [2.5]})
    run = wp.run_child("amortized_vae", "pyroopt", 7, launch=launch, clock=clock)
    assert launch.commands == [wp.child_command("amortized_vae", "pyroopt", 7)]
    assert launch.commands[0][1:] == [
        "-m",
        "benchmarks.programs.amortized_vae",
        "--optim",
        "pyroopt",
        "--steps",
        "7",
    ]
    assert launch.cwds == [wp.ROOT]
    assert run.wall_s == pytest.approx(2.5)
    assert run.optim_s == pytest.approx(0.25)
    assert run.share == pytest.approx(0.1)
    assert run.first_call_s == pytest.approx(0.125)
    assert run.checksum == "c0ffee"


def test_row_ratio_is_the_median_over_pairs_not_the_ratio_of_medians() -> None:
    row = row_of([10.0, 20.0, 30.0], [9.0, 30.0, 27.0])
    assert [pair.ratio for pair in row.pairs] == pytest.approx([0.9, 1.5, 0.9])
    assert row.ratio == pytest.approx(0.9)
    assert row.median_s("pyroopt") / row.median_s("pyro") == pytest.approx(1.35)
    assert row.share("pyro") == pytest.approx(0.1)
    assert row.params == wp.IDENTICAL
    assert row.verdict == "met"


def test_pairs_match_the_runs_that_ran_back_to_back() -> None:
    # pair 2 runs pyroopt first: its pyroopt time is the 2nd pyroopt run, and so on
    row = row_of([1.0, 2.0], [3.0, 4.0])
    assert [(p.pyro.wall_s, p.pyroopt.wall_s) for p in row.pairs] == [(1.0, 3.0), (2.0, 4.0)]


# -- the goal ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ratio", "share", "met"),
    [
        (1.02, 0.05, True),  # at both limits: never slower is enough
        (1.021, 0.01, False),
        (0.5, 0.01, True),
        (0.999, 0.051, True),  # a large share asks for faster ...
        (1.0, 0.2, False),  # ... and equal is not faster
        (1.01, 0.2, False),
    ],
)
def test_speed_goal(ratio: float, share: float, met: bool) -> None:
    assert wp.speed_met(ratio, share) is met
    assert wp.goal_bound(share) == ("< 1" if share > wp.SHARE_FOR_FASTER else "<= 1.02")


def test_a_slower_row_is_not_met() -> None:
    row = row_of([10.0], [10.5])  # share 10%: must be faster
    assert row.verdict == "NOT MET"
    assert "met in 0 of 1 rows" in wp.goal_lines([row])[0]


def test_different_final_parameters_fail_the_row_loudly() -> None:
    row = row_of([10.0], [5.0], pyroopt="bad")
    assert row.params == wp.MISMATCH
    assert row.verdict == "NOT MET"  # faster, but not the same numbers
    assert wp.failed([row])
    lines = wp.goal_lines([row])
    assert any(line.startswith("MISMATCH tiny_model (idle)") for line in lines)
    assert "MISMATCH" in wp.table([row])
    assert "MISMATCH" in wp.markdown([row], PLAN)


def test_pyro_runs_that_disagree_are_reported_as_varying() -> None:
    checksums = iter(["a", "b"])

    def run(program: str, optim: str, steps: int) -> wp.ChildRun:
        checksum = next(checksums) if optim == "pyro" else "a"
        return wp.ChildRun(optim, 1.0, 0.1, 0.05, checksum, 0.0)

    row = wp.time_row(TINY, wp.IDLE, replace(PLAN, pairs=2), run)
    assert row.params == wp.VARIES
    assert row.verdict == "NOT MET"
    assert any(line.startswith("VARIES") for line in wp.goal_lines([row]))


# -- failures ------------------------------------------------------------------------


def test_a_failing_child_ends_its_row_with_the_error() -> None:
    def launch(command: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        return subprocess.CompletedProcess(command, 1, stdout="", stderr="Traceback\nBoom: no\n")

    def run(program: str, optim: str, steps: int) -> wp.ChildRun:
        return wp.run_child(program, optim, steps, launch=launch, clock=FakeClock())

    row = wp.time_row(TINY, wp.BUSY, PLAN, run)
    assert row.error == "tiny_model --optim pyro exited 1: Boom: no"
    assert row.pairs == [] and row.verdict == "ERROR"
    assert wp.failed([row])
    assert "ERROR tiny_model (busy core): tiny_model --optim pyro exited 1" in "\n".join(
        wp.goal_lines([row])
    )
    assert "ERROR" in wp.table([row])
    json.dumps(wp.to_json([row]))


def test_a_child_without_a_result_line_fails() -> None:
    def launch(command: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        return subprocess.CompletedProcess(command, 0, stdout="done\n", stderr="")

    with pytest.raises(wp.ChildFailed, match="tiny_model --optim pyro: no WHOLE_PROGRAM_RESULT"):
        wp.run_child("tiny_model", "pyro", 3, launch=launch, clock=FakeClock())


def test_a_child_that_ran_the_other_optimizer_fails() -> None:
    def launch(command: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        return subprocess.CompletedProcess(command, 0, stdout=result_line("pyro", 0.1), stderr="")

    with pytest.raises(wp.ChildFailed, match="reports optim 'pyro'"):
        wp.run_child("tiny_model", "pyroopt", 3, launch=launch, clock=FakeClock())


# -- the whole table -------------------------------------------------------------------


def test_idle_rows_run_before_the_load_and_loaded_rows_inside_it() -> None:
    events: list[str] = []

    @contextmanager
    def load() -> Iterator[None]:
        events.append("load on")
        yield
        events.append("load off")

    def run(program: str, optim: str, steps: int) -> wp.ChildRun:
        events.append(f"{program} {optim} {steps}")
        return wp.ChildRun(optim, 1.0, 0.01, 0.005, "c", 0.0)

    other = wp.Program("other", "another", steps=9, quick_steps=2)
    plan = wp.WholePlan(pairs=1, quick=False, warmup=True)
    rows = wp.time_whole_programs(plan, [TINY, other], run, load)
    assert events == [
        "tiny_model pyro 1",  # warm-up: one step each
        "tiny_model pyroopt 1",
        "other pyro 1",
        "other pyroopt 1",
        "tiny_model pyro 500",
        "tiny_model pyroopt 500",
        "other pyro 9",
        "other pyroopt 9",
        "load on",
        "tiny_model pyro 500",
        "tiny_model pyroopt 500",
        "other pyro 9",
        "other pyroopt 9",
        "load off",
    ]
    assert [(row.program, row.load) for row in rows] == [
        ("tiny_model", "idle"),
        ("other", "idle"),
        ("tiny_model", "busy core"),
        ("other", "busy core"),
    ]
    assert not wp.failed(rows)


def test_table_markdown_and_json_name_the_machine_and_the_figures() -> None:
    rows = [row_of([10.0, 10.0, 10.0], [9.0, 9.5, 8.0])]
    text = wp.table(rows)
    cells = ["tiny_model", "idle", "0.900", "0.80-0.95", "10.0%", "0.50/0.45", "< 1", "met"]
    for cell in [*cells, "identical"]:
        assert cell in text
    page = wp.markdown(rows, PLAN, "abc123")
    assert wp.cpu_model() in page
    assert f"torch {torch.__version__}" in page and f"pyro {pyro.__version__}" in page
    assert "(abc123)" in page and "| tiny_model | idle | 3 | 3 |" in page
    data = json.loads(json.dumps(wp.to_json(rows)))
    assert data[0]["ratio"] == pytest.approx(0.9)
    assert data[0]["params"] == "identical" and len(data[0]["pairs"]) == 3
    assert data[0]["pairs"][0]["pyro"]["wall_s"] == pytest.approx(10.0)


def test_the_command_line_picks_programs_and_refuses_unknown_ones() -> None:
    assert wp.parse_args([]).programs == [p.name for p in wp.PROGRAMS]
    assert wp.parse_args(["--programs", "amortized_vae"]).programs == ["amortized_vae"]
    with pytest.raises(SystemExit):
        wp.parse_args(["--programs", "nope"])
    with pytest.raises(SystemExit):
        wp.parse_args(["--pairs", "0"])


def test_choose_plan() -> None:
    assert wp.choose_plan(True, None) == wp.QUICK
    assert wp.choose_plan(False, None) == wp.FULL
    assert wp.choose_plan(False, 3) == wp.WholePlan(3, False, True)


# -- the real programs ---------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("program", wp.PROGRAMS, ids=lambda p: p.name)
def test_each_program_ends_with_the_same_parameters_under_both_optimizers(
    program: wp.Program,
) -> None:
    row = wp.time_row(replace(program, quick_steps=3), wp.IDLE, wp.QUICK)
    assert row.error is None
    assert row.params == wp.IDENTICAL
    (pair,) = row.pairs
    assert pair.pyro.optim_s > pair.pyro.first_call_s > 0
    assert pair.pyroopt.optim_s > pair.pyroopt.first_call_s > 0
    assert pair.pyro.loss == pair.pyroopt.loss
    assert len(pair.pyro.checksum) == 64
