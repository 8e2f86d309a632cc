"""A minipyro-like program: the mean and spread of 200 numbers, a few scalar parameters.

The model puts a Normal prior on the mean and a point estimate on the spread; the guide
is a Normal over the mean. Each SVI step is a handful of tiny tensor operations, so
Python and per-call overhead are most of the run::

    python -m benchmarks.programs.tiny_model --optim pyroopt --steps 500
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pyro
import pyro.distributions as dist
import torch
from pyro.infer import SVI, Trace_ELBO
from torch import Tensor

from benchmarks.programs.common import TimedOptim, finish, optim_module, parse_args

STEPS = 500
N_DATA = 200


def model(data: Tensor) -> None:
    loc = pyro.sample("loc", dist.Normal(0.0, 10.0))
    scale = pyro.param("scale", torch.tensor(1.0), constraint=dist.constraints.positive)
    with pyro.plate("data", len(data)):
        pyro.sample("obs", dist.Normal(loc, scale), obs=data)


def guide(data: Tensor) -> None:
    q_loc = pyro.param("q_loc", torch.tensor(0.0))
    q_scale = pyro.param("q_scale", torch.tensor(1.0), constraint=dist.constraints.positive)
    pyro.sample("loc", dist.Normal(q_loc, q_scale))


def make_data(seed: int) -> Tensor:
    generator = torch.Generator().manual_seed(seed)
    return 3.0 + 2.0 * torch.randn(N_DATA, generator=generator)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args("A minipyro-like program.", STEPS, argv)
    optim = optim_module(args.optim)
    pyro.set_rng_seed(args.seed)
    data = make_data(args.seed)
    adam = TimedOptim(optim.Adam({"lr": 0.02}))
    svi = SVI(model, guide, adam, Trace_ELBO())
    loss = 0.0
    for _ in range(args.steps):
        loss = svi.step(data)
    return finish(args.optim, adam, args.steps, loss)


if __name__ == "__main__":
    main()
