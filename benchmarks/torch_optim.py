"""pyroopt.torch against torch.optim, the way Pyro's newer training loops use them.

Two rows, each timed with every column side by side in one process (median ms):

- ``Adam step 1000 x 10``: ``optimizer.step()`` alone over 1000 float32 parameters
  of 10 elements, gradients set once and reused;
- ``ELBOModule step``: ``zero_grad``, ``loss = elbo(); loss.backward()``,
  ``optimizer.step()`` for ``Trace_ELBO()(model, AutoNormal(model))`` of a model with
  100 sample sites, i.e. 200 parameters (the guide's locs and scales), as in Pyro's
  ``svi_torch.py``.

Columns: ``torch.optim.Adam`` (its default implementation: on the CPU, the
single-tensor loop), ``torch.optim.Adam(fused=True)`` and ``pyroopt.torch.Adam``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pyro
import pyro.distributions as dist
import torch
from pyro.infer import Trace_ELBO
from pyro.infer.autoguide import AutoNormal
from torch.optim import Optimizer

import pyroopt.torch
from benchmarks.columns import Built, ColumnResult, Entry, run_columns
from benchmarks.timing import Case, Plan

COLUMNS: dict[str, tuple[str, Callable[[list[torch.Tensor]], Optimizer]]] = {
    "torch_default": ("torch Adam", lambda ps: torch.optim.Adam(ps, lr=1e-3)),
    "torch_fused": ("torch Adam fused", lambda ps: torch.optim.Adam(ps, lr=1e-3, fused=True)),
    "pyroopt_torch": ("pyroopt.torch Adam", lambda ps: pyroopt.torch.Adam(ps, lr=1e-3)),
}
SITES = 100


@dataclass
class TorchOptimResult:
    """One row: what it times and its columns."""

    name: str
    columns: dict[str, ColumnResult]


def step_entry(key: str, label: str, make: Callable[[list[torch.Tensor]], Optimizer]) -> Entry:
    def build() -> Built:
        gen = torch.Generator().manual_seed(0)
        params = [torch.randn(10, generator=gen).requires_grad_() for _ in range(1000)]
        for p in params:
            p.grad = torch.randn(10, generator=gen) * 1e-3
        optimizer = make(params)
        return Built(Case(optimizer.step), lambda: type(optimizer).__module__)

    return Entry(key, label, build)


def model(data: torch.Tensor) -> None:
    for i in range(SITES):
        z = pyro.sample(f"z{i}", dist.Normal(0.0, 1.0))
        pyro.sample(f"x{i}", dist.Normal(z, 1.0), obs=data[i])


def elbo_entry(key: str, label: str, make: Callable[[list[torch.Tensor]], Optimizer]) -> Entry:
    def build() -> Built:
        pyro.set_rng_seed(0)
        pyro.clear_param_store()
        with pyro.settings.context(module_local_params=True):
            data = torch.randn(SITES)
            guide = AutoNormal(model)
            elbo = Trace_ELBO()(model, guide)
            elbo(data)  # creates the guide's parameters, as Pyro's examples do first
            params = list(elbo.parameters())
            assert len(params) == 2 * SITES, len(params)
            optimizer = make(params)

        def step() -> None:
            with pyro.settings.context(module_local_params=True):
                optimizer.zero_grad()
                elbo(data).backward()
                optimizer.step()

        return Built(Case(step), lambda: type(optimizer).__module__)

    return Entry(key, label, build)


def run_torch_optim(plan: Plan) -> list[TorchOptimResult]:
    """Both rows, every column of a row timed together."""
    steps = [step_entry(k, label, make) for k, (label, make) in COLUMNS.items()]
    elbos = [elbo_entry(k, label, make) for k, (label, make) in COLUMNS.items()]
    return [
        TorchOptimResult("Adam step 1000 x 10", run_columns(steps, plan)),
        TorchOptimResult(f"ELBOModule step, {2 * SITES} params", run_columns(elbos, plan)),
    ]


def _cell(column: ColumnResult) -> str:
    if column.median_ms is None:
        return column.status
    return f"{column.median_ms:.3f}"


def table(results: list[TorchOptimResult]) -> str:
    """Median ms per step, and pyroopt.torch's speedup over each torch column."""
    labels = [label for label, _ in COLUMNS.values()]
    head = f"{'':<28}" + "".join(f"{label:>20}" for label in labels)
    head += f"{'x torch':>10}{'x fused':>10}"
    lines = [head]
    for row in results:
        cols = row.columns
        cells = "".join(f"{_cell(cols[k]):>20}" for k in COLUMNS)
        ours = cols["pyroopt_torch"].median_ms
        ratios = ""
        for ref in ("torch_default", "torch_fused"):
            theirs = cols[ref].median_ms
            ratios += f"{theirs / ours:>10.2f}" if ours and theirs else f"{'-':>10}"
        lines.append(f"{row.name:<28}{cells}{ratios}")
    return "\n".join(lines)


def to_json(results: list[TorchOptimResult]) -> list[dict[str, object]]:
    """The rows as plain data for results.json."""
    return [
        {
            "name": row.name,
            "columns": {
                key: {
                    "label": c.label,
                    "status": c.status,
                    "median_ms": c.median_ms,
                    "error": c.error,
                }
                for key, c in row.columns.items()
            },
        }
        for row in results
    ]


if __name__ == "__main__":
    from benchmarks.run import FULL

    print(table(run_torch_optim(FULL.steps)))
