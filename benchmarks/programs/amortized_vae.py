"""A VAE: an encoder network amortizes the guide, a decoder network is the likelihood.

1024 synthetic binary vectors of 24 features, made by a fixed random network from 2
hidden coordinates; the model learns a decoder from a 2-dimensional latent space, the
guide an encoder back to it (both ``nn.Module`` s, registered with ``pyro.module``).
Each step takes one minibatch of 64 (``pyro.plate`` with ``subsample``), in an order
drawn once per pass over the data::

    python -m benchmarks.programs.amortized_vae --optim pyroopt --steps 200
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import pyro
import pyro.distributions as dist
import torch
from pyro.infer import SVI, Trace_ELBO
from torch import Tensor, nn

from benchmarks.programs.common import TimedOptim, finish, optim_module, parse_args

STEPS = 200
N_DATA = 1024
BATCH = 64
FEATURES = 24
LATENT = 2
HIDDEN = 64


class Encoder(nn.Module):
    """The guide's Normal over a data point's latent code: its loc and scale."""

    def __init__(self) -> None:
        super().__init__()
        self.hidden = nn.Sequential(nn.Linear(FEATURES, HIDDEN), nn.Softplus())
        self.loc = nn.Linear(HIDDEN, LATENT)
        self.scale = nn.Sequential(nn.Linear(HIDDEN, LATENT), nn.Softplus())

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        h = self.hidden(x)
        return self.loc(h), self.scale(h) + 1e-3


class Decoder(nn.Module):
    """The Bernoulli logits of every feature, from a latent code."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(LATENT, HIDDEN), nn.Softplus(), nn.Linear(HIDDEN, FEATURES)
        )

    def forward(self, z: Tensor) -> Tensor:
        return self.net(z)


class VAE(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.encoder = Encoder()
        self.decoder = Decoder()

    def model(self, data: Tensor, batch: Tensor) -> None:
        pyro.module("decoder", self.decoder)
        with pyro.plate("data", len(data), subsample=batch):
            prior = dist.Normal(torch.zeros(len(batch), LATENT), 1.0).to_event(1)
            z = pyro.sample("z", prior)
            logits = self.decoder(z)
            pyro.sample("x", dist.Bernoulli(logits=logits).to_event(1), obs=data[batch])

    def guide(self, data: Tensor, batch: Tensor) -> None:
        pyro.module("encoder", self.encoder)
        with pyro.plate("data", len(data), subsample=batch):
            loc, scale = self.encoder(data[batch])
            pyro.sample("z", dist.Normal(loc, scale).to_event(1))


def make_data(seed: int) -> Tensor:
    """Binary vectors whose probabilities a fixed network sets from 2 coordinates."""
    generator = torch.Generator().manual_seed(seed)
    codes = torch.randn(N_DATA, LATENT, generator=generator)
    weight = 3.0 * torch.randn(LATENT, FEATURES, generator=generator)
    probs = torch.sigmoid(torch.sin(codes @ weight))
    return torch.bernoulli(probs, generator=generator)


def minibatches(steps: int, seed: int) -> Iterator[Tensor]:
    """``steps`` index tensors of ``BATCH`` points, a new shuffle every pass."""
    generator = torch.Generator().manual_seed(seed + 1)
    per_pass = N_DATA // BATCH
    order = torch.randperm(N_DATA, generator=generator)
    for step in range(steps):
        if step and step % per_pass == 0:
            order = torch.randperm(N_DATA, generator=generator)
        k = step % per_pass
        yield order[k * BATCH : (k + 1) * BATCH]


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args("A VAE with an amortized guide.", STEPS, argv)
    optim = optim_module(args.optim)
    pyro.set_rng_seed(args.seed)
    data = make_data(args.seed)
    vae = VAE()
    adam = TimedOptim(optim.Adam({"lr": 1e-2}))
    svi = SVI(vae.model, vae.guide, adam, Trace_ELBO())
    loss = 0.0
    for batch in minibatches(args.steps, args.seed):
        loss = svi.step(data, batch)
    return finish(args.optim, adam, args.steps, loss)


if __name__ == "__main__":
    main()
