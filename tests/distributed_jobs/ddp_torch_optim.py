"""One torchrun worker: DistributedDataParallel(ELBO module) stepped by torch.optim.Adam
and by pyroopt.torch.Adam side by side; writes ``ddp_r<rank>.json`` into argv[1].

Both copies start from the same values (DDP broadcasts rank 0's), see the same
mini-batches and the same sampling noise, so after every step their parameters must be
equal bit for bit, and equal across ranks (DDP averages the gradients).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pyro
import pyro.distributions as dist
import torch
import torch.distributed as tdist
from pyro.infer import Trace_ELBO
from pyro.infer.autoguide import AutoNormal
from pyro.nn import PyroModule
from torch.nn.parallel import DistributedDataParallel

import pyroopt.torch

SIZE, FEATURES, STEPS = 200, 8, 30


class Model(PyroModule):
    def forward(self, x, y=None):
        weight = pyro.sample("weight", dist.Normal(0.0, 1.0).expand([FEATURES]).to_event(1))
        bias = pyro.sample("bias", dist.Normal(0.0, 10.0))
        scale = pyro.sample("scale", dist.LogNormal(0.0, 1.0))
        with pyro.plate("data", SIZE, subsample_size=len(x)):
            return pyro.sample("obs", dist.Normal(x @ weight + bias, scale), obs=y)


def make(x, y):
    pyro.set_rng_seed(0)
    model = Model()
    elbo = Trace_ELBO()(model, AutoNormal(model))
    elbo(x, y)  # creates the guide's parameters before DDP and the optimizer see them
    return DistributedDataParallel(elbo)


def main() -> None:
    out = Path(sys.argv[1])
    tdist.init_process_group("gloo")
    rank, world = tdist.get_rank(), tdist.get_world_size()
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(SIZE, FEATURES, generator=gen)
    y = x @ torch.linspace(-1, 1, FEATURES) + 0.3 * torch.randn(SIZE, generator=gen)
    mine = slice(rank * SIZE // world, (rank + 1) * SIZE // world)
    result: dict = {"rank": rank, "equal_each_step": [], "losses": []}
    with pyro.settings.context(module_local_params=True):
        theirs, ours = make(x[mine], y[mine]), make(x[mine], y[mine])
        opt_theirs = torch.optim.Adam(theirs.parameters(), lr=0.02)
        opt_ours = pyroopt.torch.Adam(ours.parameters(), lr=0.02)
        for step in range(STEPS):
            losses = []
            for ddp, opt in ((theirs, opt_theirs), (ours, opt_ours)):
                torch.manual_seed(1000 * step + rank)
                opt.zero_grad()
                loss = ddp(x[mine], y[mine])
                loss.backward()
                opt.step()
                losses.append(loss.item())
            result["losses"].append(losses)
            result["equal_each_step"].append(
                all(
                    torch.equal(a, b)
                    for a, b in zip(theirs.parameters(), ours.parameters(), strict=True)
                )
            )
        result["params"] = [p.detach().tolist() for p in ours.parameters()]
    (out / f"ddp_r{rank}.json").write_text(json.dumps(result))
    tdist.destroy_process_group()


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
    # Every result is written: leave without C++ static destruction, where gloo's threads
    # abort a worker now and then ("terminate called without an active exception"), as
    # tests/distributed_jobs/job.py does.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
