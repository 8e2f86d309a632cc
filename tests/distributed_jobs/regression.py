"""A small Bayesian linear regression shared by the distributed jobs and their tests.

The likelihood sits in a ``pyro.plate`` of size ``N`` subsampled to this worker's
rows, so each worker's loss scales its rows by ``N / rows``: the mean over workers of
their gradients is the full-batch gradient (given the same guide samples).
"""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import torch
from pyro.distributions import constraints

N = 40
D = 3


def data() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(2024)
    x = torch.randn(N, D, generator=g, dtype=torch.float64)
    w = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    y = x @ w + 0.3 + 0.5 * torch.randn(N, generator=g, dtype=torch.float64)
    return x, y


def model(x, y, idx=None, late=False):
    w = pyro.sample("w", dist.Normal(torch.zeros(D), torch.ones(D)).to_event(1))
    b = pyro.sample("b", dist.Normal(torch.tensor(0.0), torch.tensor(1.0)))
    if late:
        # a parameter that only appears from some step on; each worker would start it
        # elsewhere (late_init), the optimizer must broadcast rank 0's value
        c = pyro.param("late", lambda: torch.full((2,), late_init()))
        pyro.factor("late_penalty", -((c - 1.0) ** 2).sum())
    with pyro.plate("data", N, subsample=idx):
        pyro.sample("obs", dist.Normal(x @ w + b, 0.5), obs=y)


_LATE_INIT = [0.0]


def late_init() -> float:
    return _LATE_INIT[0]


def guide(x, y, idx=None, late=False):
    w_loc = pyro.param("w_loc", torch.zeros(D))
    w_scale = pyro.param("w_scale", torch.full((D,), 0.5), constraint=constraints.positive)
    b_loc = pyro.param("b_loc", torch.tensor(0.0))
    b_scale = pyro.param("b_scale", torch.tensor(0.5), constraint=constraints.positive)
    pyro.sample("w", dist.Normal(w_loc, w_scale).to_event(1))
    pyro.sample("b", dist.Normal(b_loc, b_scale))


def snapshot() -> dict[str, list[float]]:
    store = pyro.get_param_store()
    return {
        name: store.get_param(name).detach().reshape(-1).tolist() for name in sorted(store.keys())
    }
