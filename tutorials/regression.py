"""The Bayesian linear regression the tutorials train, and where they write."""

from __future__ import annotations

import os
from pathlib import Path

import pyro
import pyro.distributions as dist
import torch

QUICK = os.environ.get("PYROOPT_QUICK") == "1"
TRUE_WEIGHT = torch.tensor([1.5, -2.0, 0.5, 0.0])


def output_dir(tutorial: str) -> Path:
    """``$PYROOPT_OUT/<tutorial>`` (default ``outputs/<tutorial>``), created."""
    folder = Path(os.environ.get("PYROOPT_OUT", "outputs")) / tutorial
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def data(n: int = 500, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` points from ``y = x @ w + 1 + noise`` with four features."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, generator=generator)
    y = x @ TRUE_WEIGHT.to(x.dtype) + 1.0 + 0.3 * torch.randn(n, generator=generator)
    return x, y


def model(x: torch.Tensor, y: torch.Tensor | None = None) -> None:
    weight = pyro.sample("weight", dist.Normal(0.0, 1.0).expand([4]).to_event(1))
    bias = pyro.sample("bias", dist.Normal(0.0, 10.0))
    sigma = pyro.sample("sigma", dist.LogNormal(0.0, 1.0))
    with pyro.plate("data", x.shape[0]):
        pyro.sample("obs", dist.Normal(x @ weight + bias, sigma), obs=y)
