"""No cliff on the paths real training takes: steady steps after a resume and after
parameters that appeared one per step, and peak memory.

Two tables:

- **Steady steps at 1000 x 10 (Adam).** A fresh pyroopt run (every parameter seen on
  the first step), a run resumed from a checkpoint (param store and optimizer saved,
  cleared, loaded), and a run whose 1000 parameters appeared one per step, each against
  pyro.optim on the same path, timed round-robin in one process. Goals: each path
  within 1.3x of the fresh run, and at least 50x faster than pyro.optim.
- **Peak memory.** Each column is a child process that makes the parameters and
  gradients, takes 3 steps and reports its peak RSS (``VmHWM``); the ``minimum``
  column makes the same parameters and gradients (three times, as the others do) and
  holds tensors as large as the optimizer's state, with no optimizer. Goal: pyroopt at
  most pyro.optim's peak and within 5% of the minimum plus pyroopt's bounded scratch
  (the flat gradient buffer of a bucket of small parameters, at most
  ``rule_bucket.FLAT_MAX_NUMEL`` elements).

``python -m benchmarks.cliff [--quick]`` prints both.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import pyro
import pyro.optim
import torch

import pyroopt
from pyroopt import rule_bucket

#: the peak-memory shapes: (parameters, elements each)
PEAK_SHAPES = ((1000, 10), (80, 1_000_000), (4, 20_000_000))
QUICK_PEAK_SHAPES = ((100, 10), (4, 100_000))
PEAK_RULES = ("Adam", "RMSprop")
#: state tensors per parameter (for the minimum column)
STATE_TENSORS = {"Adam": 2, "RMSprop": 1}


@dataclass(frozen=True)
class PathRow:
    """One path: median ms per step over rounds, and its ratios, each the median over
    rounds of that round's ratio (both times of a ratio come from the same round)."""

    path: str
    pyroopt_ms: float
    pyro_ms: float
    vs_fresh: float  # pyroopt on this path over pyroopt fresh
    speedup: float  # pyro.optim over pyroopt, on this path

    @property
    def met(self) -> bool:
        return self.vs_fresh <= 1.3 and self.speedup >= 50


def _grads(params: list[torch.Tensor], size: int) -> None:
    for p in params:
        p.grad = torch.ones(size)


def _fresh(module: object, n: int, size: int) -> tuple[Callable[..., None], list[torch.Tensor]]:
    pyro.clear_param_store()
    params = [pyro.param(f"p{i:04d}", torch.zeros(size)).unconstrained() for i in range(n)]
    return module.Adam({"lr": 1e-3}), params  # type: ignore[attr-defined]


def _resumed(module: object, n: int, size: int) -> tuple[Callable[..., None], list[torch.Tensor]]:
    optim, params = _fresh(module, n, size)
    for _ in range(3):
        _grads(params, size)
        optim(params)
    with tempfile.TemporaryDirectory() as folder:
        pyro.get_param_store().save(Path(folder) / "params")
        optim.save(Path(folder) / "optim")  # type: ignore[attr-defined]
        pyro.clear_param_store()
        pyro.get_param_store().load(Path(folder) / "params")
        resumed = module.Adam({"lr": 1e-3})  # type: ignore[attr-defined]
        resumed.load(Path(folder) / "optim")
    store = pyro.get_param_store()
    return resumed, [store[f"p{i:04d}"].unconstrained() for i in range(n)]


def _late(module: object, n: int, size: int) -> tuple[Callable[..., None], list[torch.Tensor]]:
    pyro.clear_param_store()
    optim = module.Adam({"lr": 1e-3})  # type: ignore[attr-defined]
    params: list[torch.Tensor] = []
    for i in range(n):
        params.append(pyro.param(f"p{i:04d}", torch.zeros(size)).unconstrained())
        _grads(params, size)
        optim(params)
    return optim, params


def _median_step_ms(
    optim: Callable[..., None], params: list[torch.Tensor], size: int, steps: int
) -> float:
    times = []
    for _ in range(steps):
        _grads(params, size)
        start = time.perf_counter()
        optim(params)
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def path_rows(n: int = 1000, size: int = 10, steps: int = 200, rounds: int = 5) -> list[PathRow]:
    """Median step times per path over ``rounds`` interleaved rounds, and each ratio as
    the median of the rounds' ratios: a slow spell of the shared machine moves the
    times of one round, not the ratio of two times taken within it."""
    makers = {
        "fresh": _fresh,
        "after a resume": _resumed,
        "after one new parameter per step": _late,
    }
    runs = {
        (path, module.__name__): make(module, n, size)
        for path, make in makers.items()
        for module in (pyroopt, pyro.optim)
    }
    timings: dict[tuple[str, str], list[float]] = {key: [] for key in runs}
    for _ in range(rounds):
        for key, (optim, params) in runs.items():
            count = steps if key[1] == "pyroopt" else max(5, steps // 20)
            # the param store holds the last run's names: each run steps its own tensors
            timings[key].append(_median_step_ms(optim, params, size, count))
    fresh = timings["fresh", "pyroopt"]
    rows = []
    for path in makers:
        ours, theirs = timings[path, "pyroopt"], timings[path, "pyro.optim"]
        rows.append(
            PathRow(
                path,
                statistics.median(ours),
                statistics.median(theirs),
                statistics.median(o / f for o, f in zip(ours, fresh, strict=True)),
                statistics.median(t / o for t, o in zip(theirs, ours, strict=True)),
            )
        )
    return rows


def path_table(rows: list[PathRow], n: int, size: int) -> str:
    lines = [
        f"Steady Adam steps at {n} x {size} (median ms; ratios: median of each round's; "
        "goal: within 1.3x of fresh, >= 50x pyro.optim)",
        f"{'path':36s} {'pyroopt':>9s} {'pyro.optim':>11s} {'/ fresh':>8s} {'speed-up':>9s}  goal",
    ]
    for r in rows:
        lines.append(
            f"{r.path:36s} {r.pyroopt_ms:9.3f} {r.pyro_ms:11.2f} {r.vs_fresh:8.2f} "
            f"{r.speedup:8.0f}x  {'met' if r.met else 'NOT MET'}"
        )
    return "\n".join(lines)


# -- peak memory ------------------------------------------------------------------------


def _peak_child(column: str, n: int, size: int, rule: str) -> None:
    """Run in a child process: make the parameters, step 3 times, print the peak RSS (MB)."""
    import resource

    torch.manual_seed(0)
    params = [torch.randn(size).requires_grad_() for _ in range(n)]
    if column == "minimum":  # the same gradients, made the same way, and the state
        state = [torch.randn(size) for _ in range(n * STATE_TENSORS[rule])]
        for _ in range(3):
            for p in params:
                p.grad = torch.randn(size)
        del state
    else:
        module = pyroopt if column == "pyroopt" else pyro.optim
        optim = getattr(module, rule)({"lr": 1e-3})
        for _ in range(3):
            for p in params:
                p.grad = torch.randn(size)
            optim(params)
    print(_peak_rss_mb() or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)


def _peak_rss_mb() -> float | None:
    """This process's peak resident memory (``VmHWM``), MB: unlike ``ru_maxrss``, which a
    child inherits from its parent across fork and exec (a large ``make bench`` parent
    raised every small child's figure to its own), it starts anew at exec."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def peak_mb(column: str, n: int, size: int, rule: str) -> float:
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.cliff", "--peak-child", column, str(n), str(size), rule],
        capture_output=True,
        text=True,
        check=True,
    )
    return float(done.stdout.strip().splitlines()[-1])


def peak_rows(shapes=PEAK_SHAPES, rules=PEAK_RULES) -> list[dict[str, object]]:
    rows = []
    for n, size in shapes:
        for rule in rules:
            peaks = {c: peak_mb(c, n, size, rule) for c in ("minimum", "pyro.optim", "pyroopt")}
            scratch = 4 * n * size / 2**20 if n * size <= rule_bucket.FLAT_MAX_NUMEL else 0.0
            bound = (peaks["minimum"] + scratch) * 1.05
            rows.append(
                {
                    "shape": f"{n} x {size:,}",
                    "rule": rule,
                    **peaks,
                    "scratch": scratch,
                    # 1% for the page-level noise of ru_maxrss between processes
                    "met": peaks["pyroopt"] <= 1.01 * peaks["pyro.optim"]
                    and peaks["pyroopt"] <= bound,
                }
            )
    return rows


def peak_table(rows: list[dict[str, object]]) -> str:
    lines = [
        "Peak RSS of a child process, MB (3 steps; "
        "goal: pyroopt <= pyro.optim and <= 1.05 x (minimum + scratch))",
        f"{'shape':16s} {'rule':8s} {'minimum':>8s} {'scratch':>8s} "
        f"{'pyro.optim':>11s} {'pyroopt':>8s}  goal",
    ]
    for r in rows:
        lines.append(
            f"{r['shape']:16s} {r['rule']:8s} {r['minimum']:8.0f} {r['scratch']:8.1f} "
            f"{r['pyro.optim']:11.0f} {r['pyroopt']:8.0f}  {'met' if r['met'] else 'NOT MET'}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small shapes, few steps")
    parser.add_argument("--peak-child", nargs=4, metavar=("COLUMN", "N", "SIZE", "RULE"))
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args(argv)
    if args.peak_child:
        column, n, size, rule = args.peak_child
        _peak_child(column, int(n), int(size), rule)
        return
    n, steps = (60, 20) if args.quick else (1000, 200)
    rows = path_rows(n=n, size=10, steps=steps, rounds=1 if args.quick else 5)
    print(path_table(rows, n, 10), flush=True)
    shapes = QUICK_PEAK_SHAPES if args.quick else PEAK_SHAPES
    peaks = peak_rows(shapes)
    print()
    print(peak_table(peaks))
    if args.json:
        args.json.write_text(
            json.dumps({"paths": [asdict(r) for r in rows], "peak": peaks}, indent=1)
        )


if __name__ == "__main__":
    main()
