"""100 latent sample sites under an ``AutoNormal`` guide (200 parameters).

A hierarchical-looking regression: site ``w_i`` (a vector of 4) weighs feature group
``i`` of 64 synthetic data points; every site has a standard Normal prior, and
``AutoNormal`` gives each one a loc and a scale. Each step touches every site, so
the optimizer sees 200 small parameters::

    python -m benchmarks.programs.autonormal_sites --optim pyroopt --steps 100
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pyro
import pyro.distributions as dist
import torch
from pyro.infer import SVI, Trace_ELBO
from pyro.infer.autoguide import AutoNormal
from torch import Tensor

from benchmarks.programs.common import TimedOptim, finish, optim_module, parse_args

STEPS = 100
SITES = 100
SITE_DIM = 4
N_DATA = 64


def model(features: Tensor, targets: Tensor) -> None:
    """``features`` has shape (data, sites, site_dim); ``targets`` shape (data,)."""
    weights = [
        pyro.sample(f"w_{i}", dist.Normal(torch.zeros(SITE_DIM), 1.0).to_event(1))
        for i in range(SITES)
    ]
    mean = (features * torch.stack(weights)).sum((-1, -2))
    with pyro.plate("data", len(targets)):
        pyro.sample("y", dist.Normal(mean, 1.0), obs=targets)


def make_data(seed: int) -> tuple[Tensor, Tensor]:
    generator = torch.Generator().manual_seed(seed)
    features = torch.randn(N_DATA, SITES, SITE_DIM, generator=generator)
    true_weights = 0.3 * torch.randn(SITES, SITE_DIM, generator=generator)
    noise = torch.randn(N_DATA, generator=generator)
    return features, (features * true_weights).sum((-1, -2)) + noise


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args("100 sample sites under AutoNormal.", STEPS, argv)
    optim = optim_module(args.optim)
    pyro.set_rng_seed(args.seed)
    features, targets = make_data(args.seed)
    adam = TimedOptim(optim.Adam({"lr": 0.01}))
    svi = SVI(model, AutoNormal(model), adam, Trace_ELBO())
    loss = 0.0
    for _ in range(args.steps):
        loss = svi.step(features, targets)
    return finish(args.optim, adam, args.steps, loss)


if __name__ == "__main__":
    main()
