"""Run every benchmark in one process; print the tables, write JSON, the report and a chart.

Usage, from the repository root::

    python -m benchmarks.run            # full run, about a quarter of an hour
    python -m benchmarks.run --quick    # smoke test, a minute or two
    python -m benchmarks.run --repeats 15 --out /tmp/bench
    python -m benchmarks.run --no-distributed --no-whole-program
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import platform
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pyro
import torch

import pyroopt
from benchmarks import churn, cliff, elastic, loaded, report, square_root, whole_program
from benchmarks.churn import ChurnResult
from benchmarks.distributed import run_distributed
from benchmarks.distributed import table as distributed_table
from benchmarks.goals import goal_pairs, goal_table
from benchmarks.loaded import LoadedResult
from benchmarks.optimizer_steps import SHAPES, StepResult, optimizer_specs, time_optimizer
from benchmarks.svi_step import SviResult, time_svi
from benchmarks.timing import Plan
from benchmarks.torch_optim import run_torch_optim
from benchmarks.torch_optim import table as torch_optim_table
from benchmarks.torch_optim import to_json as torch_optim_json

SEED = 0


@dataclass(frozen=True)
class Settings:
    """The timing plans of one run."""

    steps: Plan
    svi: Plan
    #: back-to-back pairs of steps behind each speed goal's ratio
    goal_pairs: int


FULL = Settings(
    steps=Plan(repeats=9, warmup=3, target_seconds=0.3),
    svi=Plan(repeats=9, warmup=5, target_seconds=1.0),
    goal_pairs=31,
)
QUICK = Settings(
    steps=Plan(repeats=3, warmup=2, target_seconds=0.02),
    svi=Plan(repeats=3, warmup=3, target_seconds=0.15),
    goal_pairs=3,
)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.run",
        description="Time pyroopt against pyro.optim and torch, side by side in one process.",
    )
    parser.add_argument("--quick", action="store_true", help="fewer, shorter repeats (smoke test)")
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("benchmarks/results"),
        help="directory for results.json and speedup.png (default: %(default)s)",
    )
    parser.add_argument(
        "--repeats", type=int, default=None, help="repeats per measurement (median is kept)"
    )
    parser.add_argument(
        "--no-distributed",
        action="store_true",
        help="skip the 2-worker horovodrun/torchrun SVI job",
    )
    parser.add_argument(
        "--no-whole-program",
        action="store_true",
        help="skip the whole-program table (child processes, pyro.optim against pyroopt)",
    )
    args = parser.parse_args(argv)
    if args.repeats is not None and args.repeats < 1:
        parser.error(f"--repeats must be at least 1, got {args.repeats}")
    return args


def choose_settings(quick: bool, repeats: int | None) -> Settings:
    """The plans for ``--quick`` or a full run, with ``--repeats`` overriding both."""
    settings = QUICK if quick else FULL
    if repeats is None:
        return settings
    return Settings(
        steps=Plan(repeats, settings.steps.warmup, settings.steps.target_seconds),
        svi=Plan(repeats, settings.svi.warmup, settings.svi.target_seconds),
        goal_pairs=settings.goal_pairs,
    )


def environment(settings: Settings, quick: bool) -> dict[str, Any]:
    """Versions, machine and settings, recorded with the results."""
    return {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "mode": "quick" if quick else "full",
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_model": whole_program.cpu_model(),
        "cpu_count": os.cpu_count(),
        "load_average_at_start": os.getloadavg(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "pyro": pyro.__version__,
        "pyroopt": pyroopt.__version__,
        "pyroopt_source": source_version(),
        "dtype": "float32",
        "seed": SEED,
        "settings": asdict(settings),
    }


def source_version() -> str:
    """The commit the pyroopt sources are at, marked ``+dirty`` if edited since."""
    root = Path(pyroopt.__file__).resolve().parent

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=root, capture_output=True, text=True, check=True
        ).stdout.strip()

    try:
        commit = git("rev-parse", "--short", "HEAD")
        dirty = git("status", "--porcelain", "--", ".")
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git checkout)"
    return commit + ("+dirty" if dirty else "")


def warn_if_busy(load: float, threads: int) -> None:
    """Say so when other work already keeps the CPUs busy: timings will be noisy."""
    cpus = os.cpu_count() or 1
    if load >= cpus / 2:
        print(
            f"WARNING: load average {load:.2f} on {cpus} CPUs before starting; torch's "
            f"{threads} threads compete with other work, so expect noisy timings"
        )


def run_optimizer_steps(plan: Plan, pair_count: int) -> list[StepResult]:
    """Every optimizer on every shape (a goal's ratio also over ``pair_count`` pairs of
    steps), printing progress."""
    results = []
    for spec in optimizer_specs():
        for shape in SHAPES:
            start = time.perf_counter()
            pairs = goal_pairs(spec.name, shape)
            results.append(time_optimizer(spec, shape, plan, SEED, pairs, pair_count))
            elapsed = time.perf_counter() - start
            print(f"  {spec.name:<18} {shape[0]:>5,} x {shape[1]:<9,} {elapsed:5.1f} s", flush=True)
    return results


def run_svi(plan: Plan) -> SviResult:
    """The SVI step benchmark, printing progress."""
    start = time.perf_counter()
    result = time_svi(plan, SEED)
    print(
        f"  SVI step, {result.n_sites} sites, AutoNormal {time.perf_counter() - start:5.1f} s",
        flush=True,
    )
    return result


def print_report(steps: Sequence[StepResult], svi: SviResult) -> None:
    """The tables and what stands out in them."""
    print("\nOptimizer step: median ms per step; ratios are time ratios (> 1: right side faster)")
    print(report.step_table(steps))
    print("\nSpeed goals (exact default path):")
    print(goal_table(steps))
    print(f"\nSVI step: model with {svi.n_sites} sample sites, AutoNormal, Trace_ELBO")
    print(report.svi_table(svi))
    notes = report.findings(steps, svi)
    print(
        "\nFindings:"
        if notes
        else "\nFindings: none (no errors; pyroopt nowhere >5% slower than pyro.optim, torch fused)"
    )
    for note in notes:
        print(f"  {note}")


class _Tee(io.StringIO):
    """Keeps what is printed and passes it on to ``stream``."""

    def __init__(self, stream: Any) -> None:
        super().__init__()
        self.stream = stream

    def write(self, text: str) -> int:
        self.stream.write(text)
        return super().write(text)

    def flush(self) -> None:
        self.stream.flush()


def write_outputs(
    out: Path,
    meta: dict[str, Any],
    steps: Sequence[StepResult],
    svi: SviResult,
    text: str,
    whole_page: str | None,
) -> None:
    """results.json, report.txt (the printed tables, which the docs site shows),
    speedup.png and, where the whole-program table ran, whole_program.md in ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    json_path, chart_path = out / "results.json", out / "speedup.png"
    report.write_json(json_path, report.to_json(meta, steps, svi))
    (out / "report.txt").write_text(text)
    report.draw_speedup_chart(steps, chart_path)
    print(f"\nWrote {json_path.resolve()}, report.txt\nWrote {chart_path.resolve()}")
    if whole_page is not None:
        (out / "whole_program.md").write_text(whole_page)
        print(f"Wrote {(out / 'whole_program.md').resolve()}")


def run_loaded_and_churn(quick: bool) -> tuple[list[LoadedResult], list[ChurnResult]]:
    """The loaded tiny-step rows and the churn rows, printing progress."""
    loaded_rows = loaded.time_loaded(loaded.QUICK if quick else loaded.FULL, SEED)
    return loaded_rows, churn.time_churn(churn.QUICK if quick else churn.FULL)


def print_loaded_and_churn(
    loaded_rows: Sequence[LoadedResult], churn_rows: Sequence[ChurnResult], meta: dict[str, Any]
) -> None:
    """Their tables and goals; recorded in ``meta``."""
    print(f"\nAdam under load ({loaded.THREADS} torch threads, a busy loop on another core):")
    print(loaded.table(loaded_rows))
    print(loaded.goal_line(loaded_rows))
    print("\nAdam with a churning parameter (median ms per step):")
    print(churn.table(churn_rows))
    print("\n".join(churn.goal_lines(churn_rows)))
    meta["loaded"] = [asdict(r) for r in loaded_rows]
    meta["churn"] = [asdict(r) for r in churn_rows]


def print_whole_program(
    rows: Sequence[whole_program.Row], plan: whole_program.WholePlan, meta: dict[str, Any]
) -> str:
    """The whole-program table and its goal (recorded in ``meta``); its Markdown page."""
    source = meta["pyroopt_source"]
    print(f"\nWhole programs, pyro.optim against pyroopt: {whole_program.header(plan, source)}")
    print(whole_program.table(rows))
    print("\n".join(whole_program.goal_lines(rows)))
    meta["whole_program"] = whole_program.to_json(rows)
    return whole_program.markdown(rows, plan, source)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmarks; the exit status is 1 if any column raised, a whole program
    failed, or a whole program's final parameters differ between the optimizers."""
    args = parse_args(argv)
    settings = choose_settings(args.quick, args.repeats)
    meta = environment(settings, args.quick)
    header = (
        f"{meta['cpu_model']}, torch {meta['torch']} "
        f"({meta['torch_threads']} threads, {meta['cpu_count']} CPUs), "
        f"pyro {meta['pyro']}, pyroopt {meta['pyroopt']} ({meta['pyroopt_source']}), "
        f"{meta['mode']} run, "
        f"{settings.steps.repeats} repeats; medians of repeats within this run"
    )
    print(header)
    warn_if_busy(meta["load_average_at_start"][0], meta["torch_threads"])
    start = time.perf_counter()
    steps = run_optimizer_steps(settings.steps, settings.goal_pairs)
    svi = run_svi(settings.svi)
    torch_rows = run_torch_optim(settings.steps)
    print("  pyroopt.torch vs torch.optim (Adam step, ELBOModule step)", flush=True)
    dist_rows = [] if args.no_distributed else run_distributed(settings.svi.repeats)
    loaded_rows, churn_rows = run_loaded_and_churn(args.quick)
    root_rows = square_root.time_roots(settings.steps, args.quick, SEED)
    print("  square roots in line and through MKL", flush=True)
    cliff_n, cliff_steps = (60, 20) if args.quick else (1000, 200)
    path_rows = cliff.path_rows(n=cliff_n, steps=cliff_steps, rounds=1 if args.quick else 5)
    peak_rows = cliff.peak_rows(cliff.QUICK_PEAK_SHAPES if args.quick else cliff.PEAK_SHAPES)
    print("  steady steps after a resume and late parameters; peak memory", flush=True)
    elastic_rows = elastic.time_elastic(settings.steps, args.quick, SEED)
    print("  elastic commits beside optimizer steps", flush=True)
    whole_plan = whole_program.QUICK if args.quick else whole_program.FULL
    whole_rows = [] if args.no_whole_program else whole_program.time_whole_programs(whole_plan)
    meta["seconds"] = round(time.perf_counter() - start, 1)
    meta["load_average_at_end"] = os.getloadavg()
    tee = _Tee(sys.stdout)
    with contextlib.redirect_stdout(tee):
        print(f"{header}\n{meta['date']}, {meta['platform']}")
        print_report(steps, svi)
        print("\npyroopt.torch vs torch.optim: median ms per step (x: torch's time / ours)")
        print(torch_optim_table(torch_rows))
        meta["torch_optim"] = torch_optim_json(torch_rows)
        if dist_rows:
            print("\nDistributed SVI step, 2 workers:")
            print(distributed_table(dist_rows))
            meta["distributed"] = [asdict(r) for r in dist_rows]
        print_loaded_and_churn(loaded_rows, churn_rows, meta)
        print(
            "\nThe float32 square root in pyroopt's step: in line against MKL's call "
            f"(median ms per step; in-line root {square_root.in_line_state()}):"
        )
        print(square_root.table(root_rows))
        meta["square_root"] = [asdict(r) for r in root_rows]
        print()
        print(cliff.path_table(path_rows, cliff_n, 10))
        print()
        print(cliff.peak_table(peak_rows))
        meta["cliff"] = {"paths": [asdict(row) for row in path_rows], "peak": peak_rows}
        print("\nElastic training: one ElasticState commit (in memory; and with the /dev/shm")
        print("file torchrun needs) and a restore, beside one Adam step (median ms):")
        print(elastic.table(elastic_rows))
        meta["elastic"] = [asdict(r) for r in elastic_rows]
        whole_page = print_whole_program(whole_rows, whole_plan, meta) if whole_rows else None
    write_outputs(args.out, meta, steps, svi, tee.getvalue(), whole_page)
    print(f"Total {meta['seconds']} s")
    failed = any(c.status == "error" for r in steps for c in r.columns.values())
    failed = failed or any(c.status == "error" for c in svi.columns.values())
    failed = failed or any(c.status == "error" for r in torch_rows for c in r.columns.values())
    failed = failed or whole_program.failed(whole_rows)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
