"""One 2-worker SVI job for ``benchmarks/distributed.py``, run under a real launcher.

Usage: ``horovodrun -np 2 -H localhost:2 --gloo python benchmarks/distributed_job.py
horovod OUT.json`` or ``torchrun --standalone --nproc_per_node 2
benchmarks/distributed_job.py torch OUT.json``.

Each variant trains the same model (``SITES`` vector sample sites, AutoNormal guide,
so twice as many parameters) on this worker's half of the data; rank 0 writes the
median time per SVI step and the number of collectives per steady step.
"""

from __future__ import annotations

import functools
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyro
import pyro.distributions as dist
import pyro.optim
import torch
from pyro.infer import SVI, Trace_ELBO
from pyro.infer.autoguide import AutoNormal

import pyroopt
from pyroopt.distributed import shard

SITES, WIDTH, DATA = 25, 10, 200
WARMUP, STEPS, REPEATS = 3, 10, 5
CALLS = {"n": 0}
PYRO_ADAM = getattr(pyro.optim, "Adam")  # noqa: B009  (defined in a loop, unseen by mypy)


def count_calls(module: Any, name: str) -> None:
    """Count every call of ``module.name`` in ``CALLS``."""
    fn = getattr(module, name)

    @functools.wraps(fn)
    def counted(*args: Any, **kwargs: Any) -> Any:
        CALLS["n"] += 1
        return fn(*args, **kwargs)

    setattr(module, name, counted)


class NoStep(pyro.optim.PyroOptim):
    """Steps nothing: the time of SVI's own work (model, guide, backward)."""

    def __init__(self) -> None:
        super().__init__(torch.optim.SGD, {"lr": 0.0})

    def __call__(self, params: Any, *args: Any, **kwargs: Any) -> None:
        return None


def model(y: torch.Tensor) -> None:
    sites = [
        pyro.sample(f"z{i}", dist.Normal(0.0, 1.0).expand([WIDTH]).to_event(1))
        for i in range(SITES)
    ]
    total = torch.stack(sites).sum()
    with pyro.plate("data", y.shape[0]):
        pyro.sample("y", dist.Normal(total / SITES, 1.0), obs=y)


def time_variant(make_optim: Callable[[], Any], y: torch.Tensor) -> dict[str, float]:
    """Median ms per SVI step and collectives per steady step for one optimizer."""
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    svi = SVI(model, AutoNormal(model), make_optim(), Trace_ELBO())
    for _ in range(WARMUP):
        svi.step(y)
    CALLS["n"] = 0
    svi.step(y)
    collectives = CALLS["n"]
    repeats = []
    for _ in range(REPEATS):
        start = time.perf_counter()
        for _ in range(STEPS):
            svi.step(y)
        repeats.append(1e3 * (time.perf_counter() - start) / STEPS)
    n_params = len(pyro.get_param_store())
    return {
        "ms_per_step": statistics.median(repeats),
        "collectives": collectives,
        "params": n_params,
    }


def main() -> None:
    backend, out = sys.argv[1], Path(sys.argv[2])
    torch.set_num_threads(1)  # two workers on two cores
    y = torch.randn(DATA, generator=torch.Generator().manual_seed(0))
    results: dict[str, dict[str, float]] = {}
    if backend == "horovod":
        import horovod.torch as hvd
        import horovod.torch.optimizer as hvd_optimizer

        hvd.init()
        rank = hvd.rank()
        for name in ("grouped_allreduce", "allreduce", "broadcast", "allgather_object"):
            count_calls(hvd, name)
        for name in ("allreduce_async_", "grouped_allreduce_async_"):  # pyro's path
            count_calls(hvd_optimizer, name)
        mine = shard(y)
        results["no optimizer step"] = time_variant(NoStep, mine)
        results["pyro.optim HorovodOptimizer"] = time_variant(
            lambda: pyro.optim.HorovodOptimizer(PYRO_ADAM({"lr": 0.01})), mine
        )
        results["pyroopt HorovodOptimizer"] = time_variant(
            lambda: pyroopt.HorovodOptimizer(pyroopt.Adam({"lr": 0.01})), mine
        )
    else:
        import torch.distributed as torch_dist

        torch_dist.init_process_group("gloo")
        rank = torch_dist.get_rank()
        for name in ("all_reduce", "broadcast", "all_gather_object"):
            count_calls(torch_dist, name)
        mine = shard(y)
        results["pyroopt DistributedOptimizer"] = time_variant(
            lambda: pyroopt.DistributedOptimizer(pyroopt.Adam({"lr": 0.01})), mine
        )
        torch_dist.destroy_process_group()
    if rank == 0:
        out.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
