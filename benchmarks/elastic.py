"""What an elastic commit costs beside the optimizer step it protects.

For P float32 parameters of S elements (1000 x 10 and 10 x 1,000,000 in the full run)
in Pyro's param store, with ``pyroopt.Adam`` holding state for all of them, four
cases:

- ``step``: one optimizer step (gradients present, reused every step);
- ``commit``: :meth:`pyroopt.distributed.ElasticState.save` in memory (the param
  store's tensors cloned, the optimizer's state snapshot, the random generators);
- ``commit + file``: the same, also written atomically to a file in ``/dev/shm``, as
  under torchrun;
- ``restore``: :meth:`~pyroopt.distributed.ElasticState.restore` from the commit.

The first three are timed together, repeats interleaved; ``restore`` gives every
parameter a new tensor, so it is timed after them, alone. Medians of the repeats.

Run alone: ``python -m benchmarks.elastic [--quick]``.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from dataclasses import dataclass

import pyro
import torch

import pyroopt
from benchmarks.optimizer_steps import make_problem
from benchmarks.report import format_table
from benchmarks.timing import Case, Plan, measure
from pyroopt.distributed import ElasticState

FULL_SHAPES = ((1000, 10), (10, 1_000_000))
QUICK_SHAPES = ((100, 10), (10, 10_000))
CASES = ("step", "commit", "commit + file", "restore")


@dataclass
class ElasticRow:
    """Median ms of each case for one shape."""

    n_params: int
    numel: int
    ms: dict[str, float]


def _shm_folder() -> str | None:
    return "/dev/shm" if os.path.isdir("/dev/shm") else None


def time_shape(shape: tuple[int, int], plan: Plan, seed: int) -> ElasticRow:
    """The four cases on ``shape`` float32 parameters."""
    problem = make_problem(*shape, seed)
    pyro.clear_param_store()
    folder = tempfile.mkdtemp(prefix="pyroopt-elastic-bench-", dir=_shm_folder())
    path = os.path.join(folder, "commit.pt")
    try:
        params = [
            pyro.param(f"p{i:04d}", value.clone()).unconstrained()
            for i, value in enumerate(problem.values)
        ]
        optim = pyroopt.Adam({"lr": 1e-3})

        def step() -> None:
            for p, g in zip(params, problem.grads, strict=True):
                p.grad = g
            optim(params)

        step()  # Adam's state exists before anything is timed
        memory = ElasticState(optim, commit_file=False)
        on_file = ElasticState(optim, commit_file=path)
        measured = measure(
            {"step": Case(step), "commit": Case(memory.save), "commit + file": Case(on_file.save)},
            plan,
        )
        restored = measure({"restore": Case(memory.restore)}, plan)
    finally:
        pyro.clear_param_store()
        if os.path.exists(path):
            os.unlink(path)
        os.rmdir(folder)
    errors = {**measured.errors, **restored.errors}
    if errors:
        raise RuntimeError(f"elastic commit {shape}: {errors}")
    timings = {**measured.timings, **restored.timings}
    return ElasticRow(shape[0], shape[1], {name: timings[name].median_ms for name in CASES})


def time_elastic(plan: Plan, quick: bool, seed: int) -> list[ElasticRow]:
    """A row per shape (:data:`QUICK_SHAPES` or :data:`FULL_SHAPES`)."""
    return [time_shape(shape, plan, seed) for shape in (QUICK_SHAPES if quick else FULL_SHAPES)]


def table(rows: list[ElasticRow]) -> str:
    """ms of each case and a commit's cost in optimizer steps."""
    header = ["P x S", "Adam step ms", "commit ms", "commit + file ms", "restore ms",
              "commit / step", "commit + file / step"]  # fmt: skip
    body = [
        [
            f"{row.n_params:,} x {row.numel:,}",
            f"{row.ms['step']:.3f}",
            f"{row.ms['commit']:.3f}",
            f"{row.ms['commit + file']:.3f}",
            f"{row.ms['restore']:.3f}",
            f"{row.ms['commit'] / row.ms['step']:.1f}x",
            f"{row.ms['commit + file'] / row.ms['step']:.1f}x",
        ]
        for row in rows
    ]
    return format_table(header, body, left=1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    plan = Plan(repeats=args.repeats, warmup=2, target_seconds=0.2)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; median ms")
    print(table(time_elastic(plan, args.quick, seed=0)))


if __name__ == "__main__":
    main()


__all__ = ["ElasticRow", "table", "time_elastic", "time_shape"]
