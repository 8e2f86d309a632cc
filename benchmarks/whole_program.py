"""Whole Pyro programs, pyro.optim against pyroopt, timed as a user times them.

An optimizer that is fast in its own calls can still slow a program down: one that
changes a process-wide setting (``torch.set_num_threads`` switches MKL's dynamic thread
count off) makes the *model's* small operations wait for a busy core. So this table
times whole programs (:mod:`benchmarks.programs`), each run as a child process::

    python -m benchmarks.programs.<name> --optim pyro|pyroopt --steps N

whose two runs differ only in ``import pyro.optim as optim`` or ``import pyroopt as
optim``. The time of a run is the child's wall time, interpreter start and imports
included. The runs of one row come in back-to-back pairs whose order alternates
(pyro.optim first, then pyroopt first: A B B A A B ...), and the row's ratio is the
median over pairs of pyroopt's time over pyro.optim's. Every program runs once on an
idle machine and once with the other core busy (:func:`benchmarks.loaded.busy_core`,
started before the loaded rows and killed after them).

Each child also times the optimizer's calls (``benchmarks.programs.common.TimedOptim``)
and prints a checksum of its final parameters. The *share* of a row is the median,
over its pyro.optim runs, of time inside the optimizer over the run's wall time.

The goal, per row: pyroopt is never slower than pyro.optim (ratio at most
:data:`NEVER_SLOWER`), faster (ratio below 1) wherever pyro.optim's share is above
:data:`SHARE_FOR_FASTER`, and its final parameters are pyro.optim's, bit for bit.

Run it alone with ``python -m benchmarks.whole_program [--quick]``; ``make bench``
includes it.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyro
import torch

import pyroopt
from benchmarks.loaded import busy_core
from benchmarks.programs.common import OPTIMS, RESULT_MARKER
from benchmarks.report import format_table, markdown_table

#: the repository root: children run ``python -m benchmarks.programs.<name>`` from here
ROOT = Path(__file__).resolve().parent.parent

#: goal: pyroopt's time over pyro.optim's, median over pairs, at most this in every row
NEVER_SLOWER = 1.02
#: goal: below 1 wherever pyro.optim's optimizer share of the run is above this
SHARE_FOR_FASTER = 0.05

IDLE, BUSY = "idle", "busy core"
LOADS: tuple[str, ...] = (IDLE, BUSY)

#: the final parameters of a row's runs: all the same ...
IDENTICAL = "identical"
#: ... pyroopt's differ from pyro.optim's ...
MISMATCH = "MISMATCH"
#: ... or pyro.optim's own runs disagree (the program is not deterministic)
VARIES = "VARIES"


@dataclass(frozen=True)
class Program:
    """A module of :mod:`benchmarks.programs` and its SVI steps in a full and a quick run."""

    name: str
    description: str
    steps: int
    quick_steps: int


PROGRAMS: tuple[Program, ...] = (
    Program("tiny_model", "minipyro-like: 3 scalar parameters, Trace_ELBO", 500, 20),
    Program("enumerated_hmm", "HMM, hidden states summed out, MLP emitter", 200, 5),
    Program("amortized_vae", "VAE: encoder and decoder nets, minibatches", 200, 5),
    Program("autonormal_sites", "100 sample sites, AutoNormal guide", 100, 5),
)


@dataclass(frozen=True)
class WholePlan:
    """How many pairs per row, which step counts, and whether to warm up first."""

    pairs: int
    quick: bool
    #: one untimed run of every program with each optimizer before the rows (imports
    #: read files that the first timed run would otherwise read from disk)
    warmup: bool


FULL = WholePlan(pairs=5, quick=False, warmup=True)
QUICK = WholePlan(pairs=1, quick=True, warmup=False)


class ChildFailed(RuntimeError):
    """A program's run exited with an error or printed no result line."""


@dataclass(frozen=True)
class ChildRun:
    """One run of a program: its wall time, the time inside the optimizer (all calls,
    and the first call alone), its result."""

    optim: str
    wall_s: float
    optim_s: float
    first_call_s: float
    checksum: str
    loss: float

    @property
    def share(self) -> float:
        """The part of the run's wall time spent inside the optimizer's calls."""
        return self.optim_s / self.wall_s if self.wall_s > 0 else 0.0


Launch = Callable[..., "subprocess.CompletedProcess[str]"]
RunChild = Callable[[str, str, int], ChildRun]


def child_command(program: str, optim: str, steps: int) -> list[str]:
    """The command line of one run."""
    module = f"benchmarks.programs.{program}"
    return [sys.executable, "-m", module, "--optim", optim, "--steps", str(steps)]


def parse_result(stdout: str) -> dict[str, Any]:
    """The JSON object of the last result line in a run's output."""
    for line in reversed(stdout.splitlines()):
        if line.startswith(RESULT_MARKER + " "):
            result: dict[str, Any] = json.loads(line[len(RESULT_MARKER) + 1 :])
            return result
    raise ChildFailed(f"no {RESULT_MARKER} line in the output")


def run_child(
    program: str,
    optim: str,
    steps: int,
    launch: Launch = subprocess.run,
    clock: Callable[[], float] = time.perf_counter,
) -> ChildRun:
    """Run ``program`` with ``optim`` for ``steps`` steps as a child process, timed
    whole by ``clock``."""
    command = child_command(program, optim, steps)
    start = clock()
    done = launch(command, cwd=ROOT, capture_output=True, text=True)
    wall = clock() - start
    if done.returncode != 0:
        last = (done.stderr or "").strip().splitlines()[-1:] or ["(no output)"]
        raise ChildFailed(f"{program} --optim {optim} exited {done.returncode}: {last[0]}")
    try:
        result = parse_result(done.stdout)
    except ChildFailed as error:
        raise ChildFailed(f"{program} --optim {optim}: {error}") from None
    if result["optim"] != optim:
        raise ChildFailed(f"{program} --optim {optim} reports optim {result['optim']!r}")
    return ChildRun(
        optim,
        wall,
        result["optim_seconds"],
        result["first_call_seconds"],
        result["checksum"],
        result["loss"],
    )


@dataclass(frozen=True)
class Pair:
    """A run with each optimizer, back to back; ``first`` names the one that ran first."""

    pyro: ChildRun
    pyroopt: ChildRun
    first: str

    @property
    def ratio(self) -> float:
        """pyroopt's wall time over pyro.optim's."""
        return self.pyroopt.wall_s / self.pyro.wall_s


def pair_order(index: int) -> tuple[str, str]:
    """The optimizers of pair ``index`` in the order they run: A B, then B A, ..."""
    first, second = OPTIMS
    return (first, second) if index % 2 == 0 else (second, first)


def run_pairs(run_once: Callable[[str], ChildRun], pairs: int) -> list[Pair]:
    """``pairs`` back-to-back pairs of ``run_once(optim)``, alternating which goes first."""
    if pairs < 1:
        raise ValueError(f"pairs must be at least 1, got {pairs}")
    result = []
    for index in range(pairs):
        order = pair_order(index)
        runs = {optim: run_once(optim) for optim in order}
        result.append(Pair(runs["pyro"], runs["pyroopt"], order[0]))
    return result


def compare_checksums(pairs: Sequence[Pair]) -> str:
    """:data:`IDENTICAL`, :data:`MISMATCH` or :data:`VARIES` for a row's runs."""
    theirs = {pair.pyro.checksum for pair in pairs}
    ours = {pair.pyroopt.checksum for pair in pairs}
    if len(theirs) > 1:
        return VARIES
    return IDENTICAL if ours == theirs else MISMATCH


def goal_bound(share: float) -> str:
    """The bound on a row's ratio: ``< 1`` where pyro.optim's share is above
    :data:`SHARE_FOR_FASTER`, else ``<= NEVER_SLOWER``.

    >>> goal_bound(0.2), goal_bound(0.01)
    ('< 1', '<= 1.02')
    """
    return "< 1" if share > SHARE_FOR_FASTER else f"<= {NEVER_SLOWER:g}"


def speed_met(ratio: float, share: float) -> bool:
    """Whether a row's ratio meets :func:`goal_bound` for its share.

    >>> speed_met(1.01, 0.01), speed_met(1.01, 0.2), speed_met(0.97, 0.2)
    (True, False, True)
    """
    return ratio < 1 if share > SHARE_FOR_FASTER else ratio <= NEVER_SLOWER


@dataclass
class Row:
    """Every pair of one program under one load, or why it has none."""

    program: str
    load: str
    steps: int
    pairs: list[Pair] = field(default_factory=list)
    error: str | None = None

    @property
    def ratio(self) -> float:
        """pyroopt's time over pyro.optim's, the median over pairs."""
        return statistics.median(pair.ratio for pair in self.pairs)

    def median_s(self, optim: str) -> float:
        """The median wall time of ``optim``'s runs."""
        return statistics.median(self._runs(optim, "wall_s"))

    def first_call_s(self, optim: str) -> float:
        """The median time of ``optim``'s first call."""
        return statistics.median(self._runs(optim, "first_call_s"))

    def share(self, optim: str) -> float:
        """The median share of ``optim``'s runs spent inside the optimizer."""
        return statistics.median(self._runs(optim, "share"))

    def _runs(self, optim: str, attribute: str) -> list[float]:
        return [getattr(getattr(pair, optim), attribute) for pair in self.pairs]

    @property
    def params(self) -> str:
        """Whether the final parameters agree (:func:`compare_checksums`)."""
        return compare_checksums(self.pairs)

    @property
    def verdict(self) -> str:
        """``met``, ``NOT MET`` (too slow, or parameters not identical) or ``ERROR``."""
        if self.error is not None:
            return "ERROR"
        met = self.params == IDENTICAL and speed_met(self.ratio, self.share("pyro"))
        return "met" if met else "NOT MET"


def time_row(program: Program, load: str, plan: WholePlan, run: RunChild = run_child) -> Row:
    """``plan.pairs`` pairs of ``program``; a run that fails ends the row with its error."""
    steps = program.quick_steps if plan.quick else program.steps
    row = Row(program.name, load, steps)
    try:
        row.pairs = run_pairs(lambda optim: run(program.name, optim, steps), plan.pairs)
    except ChildFailed as error:
        row.error = str(error)
    return row


def warm_up(programs: Sequence[Program], run: RunChild) -> None:
    """One untimed one-step run of every program with each optimizer (a failure shows
    again, and is reported, in the timed rows)."""
    for program in programs:
        for optim in OPTIMS:
            with suppress(ChildFailed):
                run(program.name, optim, 1)


def time_whole_programs(
    plan: WholePlan,
    programs: Sequence[Program] = PROGRAMS,
    run: RunChild = run_child,
    load: Callable[[], AbstractContextManager[object]] = busy_core,
) -> list[Row]:
    """Every program on an idle machine, then every program under ``load`` (a busy
    loop on another core), printing progress."""
    if plan.warmup:
        warm_up(programs, run)
    rows: list[Row] = []

    def timed_row(program: Program, load_name: str) -> Row:
        start = time.perf_counter()
        row = time_row(program, load_name, plan, run)
        print(
            f"  whole program {program.name:<17} {load_name:<9} "
            f"{time.perf_counter() - start:6.1f} s",
            flush=True,
        )
        return row

    rows.extend(timed_row(program, IDLE) for program in programs)
    with load():
        rows.extend(timed_row(program, BUSY) for program in programs)
    return rows


# -- the table -------------------------------------------------------------------------


def cpu_model() -> str:
    """The CPU's model name as Linux reports it, else as Python's platform module does."""
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def header(plan: WholePlan, source: str = "") -> str:
    """The machine, the versions and the plan the table was taken with."""
    version = f"pyroopt {pyroopt.__version__}" + (f" ({source})" if source else "")
    return (
        f"{cpu_model()}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at "
        f"the end; torch {torch.__version__}, pyro {pyro.__version__}, {version}; "
        f"{'quick' if plan.quick else 'full'} run, {plan.pairs} pair(s) per row"
    )


TABLE_HEADER: tuple[str, ...] = (
    "program",
    "load",
    "steps",
    "pairs",
    "pyro.optim s",
    "pyroopt s",
    "pyroopt/pyro.optim",
    "pair range",
    "share pyro.optim",
    "share pyroopt",
    "1st call s",
    "goal",
    "verdict",
    "final params",
)


def table_rows(rows: Sequence[Row]) -> list[list[str]]:
    """The cells of every row, under :data:`TABLE_HEADER`."""
    cells = []
    for row in rows:
        start = [row.program, row.load, str(row.steps), str(len(row.pairs))]
        if row.error is not None:
            cells.append([*start, *["-"] * 8, row.verdict, "-"])  # the error: under the table
            continue
        ratios = [pair.ratio for pair in row.pairs]
        share = row.share("pyro")
        cells.append(
            [
                *start,
                f"{row.median_s('pyro'):.2f}",
                f"{row.median_s('pyroopt'):.2f}",
                f"{row.ratio:.3f}",
                f"{min(ratios):.2f}-{max(ratios):.2f}",
                f"{100 * share:.1f}%",
                f"{100 * row.share('pyroopt'):.1f}%",
                f"{row.first_call_s('pyro'):.2f}/{row.first_call_s('pyroopt'):.2f}",
                goal_bound(share),
                row.verdict,
                row.params,
            ]
        )
    return cells


def table(rows: Sequence[Row]) -> str:
    """The rows as a plain-text table."""
    return format_table(TABLE_HEADER, table_rows(rows), left=2)


def goal_lines(rows: Sequence[Row]) -> list[str]:
    """The goal and how many rows meet it, then every error and every row whose final
    parameters are not pyro.optim's, loudly."""
    met = sum(row.verdict == "met" for row in rows)
    lines = [
        f"goal: pyroopt/pyro.optim (median over pairs) <= {NEVER_SLOWER:g} in every row "
        f"and < 1 where pyro.optim's optimizer share is above {100 * SHARE_FOR_FASTER:g}%, "
        f"final parameters bit for bit pyro.optim's: met in {met} of {len(rows)} rows"
    ]
    for row in rows:
        where = f"{row.program} ({row.load})"
        if row.error is not None:
            lines.append(f"ERROR {where}: {row.error}")
        elif row.params == MISMATCH:
            lines.append(
                f"MISMATCH {where}: pyroopt's final parameters differ from pyro.optim's "
                f"(checksums {row.pairs[0].pyroopt.checksum[:16]} against "
                f"{row.pairs[0].pyro.checksum[:16]})"
            )
        elif row.params == VARIES:
            lines.append(f"VARIES {where}: pyro.optim's own runs end with different parameters")
    return lines


def markdown(rows: Sequence[Row], plan: WholePlan, source: str = "") -> str:
    """The table as a Markdown page: header, table, goal lines."""
    names = {row.program for row in rows}
    programs = "\n".join(f"- `{p.name}`: {p.description}" for p in PROGRAMS if p.name in names)
    lines = "\n".join(f"- {line}" for line in goal_lines(rows))
    return (
        "# Whole programs: pyro.optim against pyroopt\n\n"
        f"{header(plan, source)}\n\n"
        "Wall time of each program run as a child process (`python -m "
        "benchmarks.programs.<name> --optim pyro|pyroopt`), in back-to-back pairs whose "
        "order alternates; `pyroopt/pyro.optim` is the median over pairs of the pair's "
        "time ratio (below 1: pyroopt faster), `pair range` its smallest and largest. "
        "`share` is the median part of a run spent inside the optimizer's calls, "
        "`1st call s` the median time of the first call (pyro.optim/pyroopt), which "
        "both spend mostly importing `torch._dynamo` for torch's first optimizer. "
        "`busy core`: a busy-loop process runs beside the program.\n\n"
        f"{programs}\n\n"
        f"{markdown_table(TABLE_HEADER, table_rows(rows))}\n\n"
        f"{lines}\n"
    )


def failed(rows: Sequence[Row]) -> bool:
    """Whether a run failed or a row's final parameters are not all identical."""
    return any(row.error is not None or row.params != IDENTICAL for row in rows)


def to_json(rows: Sequence[Row]) -> list[dict[str, Any]]:
    """Every row with its pairs and figures, as plain JSON data."""
    data = []
    for row in rows:
        entry: dict[str, Any] = {
            "program": row.program,
            "load": row.load,
            "steps": row.steps,
            "error": row.error,
            "verdict": row.verdict,
            "pairs": [
                {
                    "first": pair.first,
                    "ratio": pair.ratio,
                    "pyro": dataclasses.asdict(pair.pyro),
                    "pyroopt": dataclasses.asdict(pair.pyroopt),
                }
                for pair in row.pairs
            ],
        }
        if row.error is None:
            entry.update(
                ratio=row.ratio,
                median_s={optim: row.median_s(optim) for optim in OPTIMS},
                first_call_s={optim: row.first_call_s(optim) for optim in OPTIMS},
                share={optim: row.share(optim) for optim in OPTIMS},
                goal=goal_bound(row.share("pyro")),
                params=row.params,
            )
        data.append(entry)
    return data


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.whole_program",
        description="Time whole Pyro programs with pyro.optim and with pyroopt.",
    )
    parser.add_argument("--quick", action="store_true", help="one pair, a few steps")
    parser.add_argument("--pairs", type=int, default=None, help="pairs per row")
    parser.add_argument(
        "--programs",
        nargs="+",
        choices=[program.name for program in PROGRAMS],
        default=[program.name for program in PROGRAMS],
        help="the programs to time (default: all)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("benchmarks/results"),
        help="directory for whole_program.md (default: %(default)s)",
    )
    args = parser.parse_args(argv)
    if args.pairs is not None and args.pairs < 1:
        parser.error(f"--pairs must be at least 1, got {args.pairs}")
    return args


def choose_plan(quick: bool, pairs: int | None) -> WholePlan:
    """:data:`QUICK` or :data:`FULL`, with ``pairs`` overriding its pair count."""
    plan = QUICK if quick else FULL
    return plan if pairs is None else WholePlan(pairs, plan.quick, plan.warmup)


def main(argv: Sequence[str] | None = None) -> int:
    """Time the rows, print the table, write ``whole_program.md``; 1 if a run failed or
    final parameters differ."""
    from benchmarks.run import source_version  # run imports this module

    args = parse_args(argv)
    plan = choose_plan(args.quick, args.pairs)
    rows = time_whole_programs(plan, [p for p in PROGRAMS if p.name in args.programs])
    print(f"\nWhole programs: {header(plan, source_version())}")
    print(table(rows))
    print("\n".join(goal_lines(rows)))
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "whole_program.md"
    path.write_text(markdown(rows, plan, source_version()))
    print(f"Wrote {path.resolve()}")
    return 1 if failed(rows) else 0


if __name__ == "__main__":
    sys.exit(main())
