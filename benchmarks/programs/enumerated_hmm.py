"""An HMM whose discrete hidden states are summed out, with an MLP for the emissions.

16 synthetic sequences of 10 steps, 3 features each. The hidden state (4 values)
follows a Markov chain with learned initial and transition logits; each state's
emission mean comes from a small MLP (``pyro.module``) applied to its one-hot code,
with a shared noise scale that the guide estimates as a point (``AutoDelta``).
``config_enumerate`` and ``TraceEnum_ELBO`` marginalise the states in parallel::

    python -m benchmarks.programs.enumerated_hmm --optim pyroopt --steps 200
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.infer import SVI, TraceEnum_ELBO, config_enumerate
from pyro.infer.autoguide import AutoDelta
from torch import Tensor, nn

from benchmarks.programs.common import TimedOptim, finish, optim_module, parse_args

STEPS = 200
STATES = 4
FEATURES = 3
SEQUENCES = 16
LENGTH = 10
HIDDEN = 16


class Emitter(nn.Module):
    """The emission mean of each hidden state, from its one-hot code."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(STATES, HIDDEN), nn.Tanh(), nn.Linear(HIDDEN, FEATURES))

    def forward(self, one_hot: Tensor) -> Tensor:
        return self.net(one_hot)


@config_enumerate
def model(sequences: Tensor, emitter: Emitter) -> None:
    """``sequences`` has shape (sequences, length, features)."""
    pyro.module("emitter", emitter)
    initial = pyro.param("initial_logits", torch.zeros(STATES))
    transition = pyro.param("transition_logits", 2.0 * torch.eye(STATES))
    noise = pyro.sample("noise", dist.LogNormal(0.0, 1.0))
    codes = torch.eye(STATES)
    with pyro.plate("sequences", sequences.shape[0], dim=-1):
        state: Tensor | None = None
        for t in pyro.markov(range(sequences.shape[1])):
            logits = initial if state is None else transition[state]
            state = pyro.sample(f"state_{t}", dist.Categorical(logits=logits))
            mean = emitter(codes[state])
            pyro.sample(f"obs_{t}", dist.Normal(mean, noise).to_event(1), obs=sequences[:, t])


def make_data(seed: int) -> Tensor:
    """Sequences drawn from a sticky chain whose states emit well-separated means."""
    generator = torch.Generator().manual_seed(seed)
    means = 2.0 * torch.randn(STATES, FEATURES, generator=generator)
    stay = 0.8
    transition = torch.full((STATES, STATES), (1 - stay) / (STATES - 1))
    transition.fill_diagonal_(stay)
    states = torch.empty(SEQUENCES, LENGTH, dtype=torch.long)
    states[:, 0] = torch.randint(STATES, (SEQUENCES,), generator=generator)
    for t in range(1, LENGTH):
        next_probs = transition[states[:, t - 1]]
        states[:, t] = torch.multinomial(next_probs, 1, generator=generator).squeeze(-1)
    noise = 0.5 * torch.randn(SEQUENCES, LENGTH, FEATURES, generator=generator)
    return means[states] + noise


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args("An enumerated HMM with an MLP emitter.", STEPS, argv)
    optim = optim_module(args.optim)
    pyro.set_rng_seed(args.seed)
    sequences = make_data(args.seed)
    emitter = Emitter()
    guide = AutoDelta(poutine.block(model, expose=["noise"]))
    adam = TimedOptim(optim.Adam({"lr": 0.05}))
    svi = SVI(model, guide, adam, TraceEnum_ELBO(max_plate_nesting=1))
    loss = 0.0
    for _ in range(args.steps):
        loss = svi.step(sequences, emitter)
    return finish(args.optim, adam, args.steps, loss)


if __name__ == "__main__":
    main()
