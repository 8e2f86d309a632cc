"""A whole ``svi.step()`` with pyro.optim.Adam and with pyroopt.Adam.

The model has 100 latent sample sites (vectors of 10) and one observed site over
50 data points; the guide is ``AutoNormal`` (200 parameters) and the loss
``Trace_ELBO``. A third column steps nothing: the cost of the rest of the SVI step,
so ``(column - no optimizer step) / column`` is the optimizer's share of a step.

Each column keeps its parameters in its own param store scope (it starts empty, as
after ``pyro.clear_param_store()``) and is built under the same seed, so the columns
can run interleaved without sharing a parameter.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

import pyro
import pyro.distributions as dist
import pyro.optim
import torch
from pyro.infer import SVI, Trace_ELBO
from pyro.infer.autoguide import AutoNormal
from pyro.params.param_store import StateDict
from torch import Tensor

import pyroopt
from benchmarks.columns import Built, ColumnResult, Entry, run_columns
from benchmarks.optimizer_steps import pyro_factory
from benchmarks.timing import Case, Plan

N_SITES = 100
SITE_DIM = 10
N_DATA = 50
ADAM_ARGS: dict[str, Any] = {"lr": 1e-2}


def model(data: Tensor) -> None:
    """``N_SITES`` standard normal latent vectors, observed with unit noise."""
    locs = [
        pyro.sample(f"z_{i}", dist.Normal(torch.zeros(SITE_DIM), 1.0).to_event(1))
        for i in range(N_SITES)
    ]
    with pyro.plate("data", data.shape[0]):
        pyro.sample("x", dist.Normal(torch.stack(locs), 1.0).to_event(2), obs=data)


def make_data(seed: int) -> Tensor:
    """``N_DATA`` observations of every site, around a nonzero mean."""
    generator = torch.Generator().manual_seed(seed)
    return 1.0 + torch.randn(N_DATA, N_SITES, SITE_DIM, generator=generator)


class NoStep(pyro.optim.PyroOptim):
    """An optimizer that SVI accepts and that does nothing: the floor of an SVI step."""

    def __init__(self) -> None:  # pyro's __init__ would need a constructor it never uses
        pass

    def __call__(self, params: Iterable[Tensor], *args: Any, **kwargs: Any) -> None:
        """Step nothing."""


def _svi_column(make_optim: Callable[[], pyro.optim.PyroOptim], data: Tensor, seed: int) -> Built:
    """An SVI over :func:`model` and ``AutoNormal`` in a param store scope of its own."""
    state: StateDict = {"params": {}, "constraints": {}}

    def scope() -> AbstractContextManager[object]:
        return pyro.get_param_store().scope(state)

    optim = make_optim()
    with scope():
        pyro.set_rng_seed(seed)
        svi = SVI(model, AutoNormal(model), optim, Trace_ELBO())
    description = f"{type(optim).__module__}.{type(optim).__name__}"
    return Built(Case(lambda: svi.step(data), scope), lambda: description)


@dataclass
class SviResult:
    """Every column's time per ``svi.step()``."""

    n_sites: int
    columns: dict[str, ColumnResult]

    def median_ms(self, key: str) -> float | None:
        """The median ms per SVI step of column ``key``, or ``None`` if it did not run."""
        return self.columns[key].median_ms


def time_svi(plan: Plan, seed: int) -> SviResult:
    """Time ``svi.step()`` with pyro.optim.Adam, pyroopt.Adam and no optimizer step."""
    data = make_data(seed)
    optims: tuple[tuple[str, str, Callable[[], pyro.optim.PyroOptim]], ...] = (
        ("pyro_optim", "pyro.optim.Adam", lambda: pyro_factory("Adam")(dict(ADAM_ARGS))),
        ("pyroopt", "pyroopt.Adam", lambda: pyroopt.Adam(dict(ADAM_ARGS))),
        ("no_step", "no optimizer step", NoStep),
    )
    entries = [
        Entry(key, label, functools.partial(_svi_column, make, data, seed))
        for key, label, make in optims
    ]
    return SviResult(N_SITES, run_columns(entries, plan))
