"""One 2-worker SVI job for ``benchmarks/distributed.py``, run under a real launcher.

Usage: ``horovodrun -np 2 -H localhost:2 --gloo python benchmarks/distributed_job.py
horovod OUT.json [REPEATS]`` or ``torchrun --standalone --nproc_per_node 2
benchmarks/distributed_job.py torch OUT.json [REPEATS]``.

Three models, each trained by every variant on this worker's half of the same data:

- ``autonormal50``: ``SITES`` vector sample sites and an AutoNormal guide (50
  parameters); SVI's own work (model, guide, ELBO, backward) is heavy;
- ``regression24``: a Bayesian linear regression whose weights come in ``BLOCKS``
  blocks, with a hand-written mean-field guide (24 ``pyro.param`` tensors), in the
  style of Pyro's own horovod example; SVI's own work is lighter;
- ``mlp24``: a 10-layer tanh network whose weights and biases are ``pyro.param``
  point estimates in the model (20 tensors), and two latent sites with a
  hand-written guide (4 more): 3 sample sites only, so SVI's own work is light and
  the optimizer's share of a step shows.

Every variant runs the same model, data, seed and number of steps. The variants take
turns: each *round* times every variant once (a fresh param store, ``WARMUP`` steps,
then ``STEPS`` steps timed one by one, of which the median is kept), so that load from
other work on the machine hits them alike; rank 0 writes, per model and variant, the
median over rounds of those ms per SVI step and the number of collectives of one
steady step.
"""

from __future__ import annotations

import functools
import json
import os
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
from pyro.distributions import constraints
from pyro.infer import SVI, Trace_ELBO
from pyro.infer.autoguide import AutoNormal

import pyroopt
from pyroopt.distributed import shard

SITES, WIDTH, DATA = 25, 10, 200
BLOCKS, BLOCK_WIDTH, FEATURES_DATA = 12, 4, 400
LAYERS, LAYER_WIDTH = 10, 8
WARMUP, STEPS, REPEATS = 3, 15, 7
CALLS = {"n": 0}
PYRO_ADAM = getattr(pyro.optim, "Adam")  # noqa: B009  (defined in a loop, unseen by mypy)
LR = 0.01


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


# -- model 1: many sample sites, AutoNormal ---------------------------------------------
def sites_model(y: torch.Tensor) -> None:
    sites = [
        pyro.sample(f"z{i}", dist.Normal(0.0, 1.0).expand([WIDTH]).to_event(1))
        for i in range(SITES)
    ]
    total = torch.stack(sites).sum()
    with pyro.plate("data", y.shape[0]):
        pyro.sample("y", dist.Normal(total / SITES, 1.0), obs=y)


# -- model 2: a light regression with a hand-written guide ------------------------------
def regression_model(x: torch.Tensor, y: torch.Tensor) -> None:
    blocks = [
        pyro.sample(f"w{k}", dist.Normal(0.0, 1.0).expand([BLOCK_WIDTH]).to_event(1))
        for k in range(BLOCKS)
    ]
    with pyro.plate("data", y.shape[0]):
        pyro.sample("y", dist.Normal(x @ torch.cat(blocks), 1.0), obs=y)


def regression_guide(x: torch.Tensor, y: torch.Tensor) -> None:
    for k in range(BLOCKS):
        loc = pyro.param(f"w{k}_loc", lambda: torch.zeros(BLOCK_WIDTH))
        scale = pyro.param(
            f"w{k}_scale", lambda: torch.full((BLOCK_WIDTH,), 0.1), constraint=constraints.positive
        )
        pyro.sample(f"w{k}", dist.Normal(loc, scale).to_event(1))


# -- model 3: a small network as point estimates, two latent sites --------------------
def mlp_model(x: torch.Tensor, y: torch.Tensor) -> None:
    h = x
    for k in range(LAYERS):
        w = pyro.param(f"layer{k}.weight", lambda: torch.randn(LAYER_WIDTH, LAYER_WIDTH) / 3)
        b = pyro.param(f"layer{k}.bias", lambda: torch.zeros(LAYER_WIDTH))
        h = torch.tanh(h @ w + b)
    shift = pyro.sample("shift", dist.Normal(0.0, 1.0))
    noise = pyro.sample("noise", dist.LogNormal(0.0, 1.0))
    with pyro.plate("data", y.shape[0]):
        pyro.sample("y", dist.Normal(h.sum(-1) + shift, noise), obs=y)


def mlp_guide(x: torch.Tensor, y: torch.Tensor) -> None:
    positive = constraints.positive
    shift_loc = pyro.param("shift_loc", lambda: torch.tensor(0.0))
    shift_scale = pyro.param("shift_scale", lambda: torch.tensor(0.1), constraint=positive)
    noise_loc = pyro.param("noise_loc", lambda: torch.tensor(0.0))
    noise_scale = pyro.param("noise_scale", lambda: torch.tensor(0.1), constraint=positive)
    pyro.sample("shift", dist.Normal(shift_loc, shift_scale))
    pyro.sample("noise", dist.LogNormal(noise_loc, noise_scale))


def models() -> dict[str, tuple[Callable[..., None], Callable[[], Any], tuple[torch.Tensor, ...]]]:
    """``name: (model, guide factory, this worker's data)``, the same on every launch."""
    g = torch.Generator().manual_seed(0)
    y = torch.randn(DATA, generator=g)
    x2 = torch.randn(FEATURES_DATA, BLOCKS * BLOCK_WIDTH, generator=g)
    w2 = torch.randn(BLOCKS * BLOCK_WIDTH, generator=g)
    y2 = x2 @ w2 + torch.randn(FEATURES_DATA, generator=g)
    x3 = torch.randn(FEATURES_DATA, LAYER_WIDTH, generator=g)
    y3 = x3.sum(-1) + torch.randn(FEATURES_DATA, generator=g)
    return {
        "autonormal50": (sites_model, lambda: AutoNormal(sites_model), (shard(y),)),
        "regression24": (regression_model, lambda: regression_guide, (shard(x2), shard(y2))),
        "mlp24": (mlp_model, lambda: mlp_guide, (shard(x3), shard(y3))),
    }


def time_once(
    model: Callable[..., None],
    make_guide: Callable[[], Any],
    data: tuple[torch.Tensor, ...],
    make_optim: Callable[[], Any],
) -> tuple[float, int, int]:
    """One round of one variant: the median ms of ``STEPS`` SVI steps, collectives per
    steady step, and the number of parameters."""
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    svi = SVI(model, make_guide(), make_optim(), Trace_ELBO())
    for _ in range(WARMUP):
        svi.step(*data)
    CALLS["n"] = 0
    svi.step(*data)
    collectives = CALLS["n"]
    times = []
    for _ in range(STEPS):
        start = time.perf_counter()
        svi.step(*data)
        times.append(1e3 * (time.perf_counter() - start))
    # the median step: a burst of other work on the machine moves it less than the mean
    return statistics.median(times), collectives, len(pyro.get_param_store())


def run(variants: dict[str, Callable[[], Any]], repeats: int) -> dict[str, dict[str, Any]]:
    """``{model: {variant: result}}``, variants taking turns within each round."""
    results: dict[str, dict[str, Any]] = {}
    for name, (model, make_guide, data) in models().items():
        samples: dict[str, list[float]] = {v: [] for v in variants}
        info: dict[str, tuple[int, int]] = {}
        for _ in range(repeats):
            for variant, make_optim in variants.items():
                ms, collectives, params = time_once(model, make_guide, data, make_optim)
                samples[variant].append(ms)
                info[variant] = (collectives, params)
        results[name] = {
            v: {
                "ms_per_step": statistics.median(samples[v]),
                "repeats_ms": samples[v],
                "collectives": info[v][0],
                "params": info[v][1],
            }
            for v in variants
        }
    return results


def main() -> None:
    backend, out = sys.argv[1], Path(sys.argv[2])
    repeats = int(sys.argv[3]) if len(sys.argv) > 3 else REPEATS
    torch.set_num_threads(1)  # two workers on two cores
    variants: dict[str, Callable[[], Any]]
    if backend == "horovod":
        import horovod.torch as hvd
        import horovod.torch.optimizer as hvd_optimizer

        hvd.init()
        rank = hvd.rank()
        for name in (
            "grouped_allreduce",
            "allreduce",
            "allreduce_",
            "broadcast",
            "broadcast_",
            "allgather_object",
        ):
            count_calls(hvd, name)
        for name in ("allreduce_async_", "grouped_allreduce_async_"):  # pyro's path
            count_calls(hvd_optimizer, name)
        variants = {
            "no optimizer step (horovodrun)": NoStep,
            "pyro.optim HorovodOptimizer": lambda: pyro.optim.HorovodOptimizer(
                PYRO_ADAM({"lr": LR})
            ),
            "pyroopt HorovodOptimizer": lambda: pyroopt.HorovodOptimizer(pyroopt.Adam({"lr": LR})),
        }
    else:
        import torch.distributed as torch_dist

        torch_dist.init_process_group("gloo")
        rank = torch_dist.get_rank()
        for name in ("all_reduce", "broadcast", "all_gather_object"):
            count_calls(torch_dist, name)
        variants = {
            "no optimizer step (torchrun)": NoStep,
            "pyroopt DistributedOptimizer": lambda: pyroopt.DistributedOptimizer(
                pyroopt.Adam({"lr": LR})
            ),
        }
    results = run(variants, repeats)
    if rank == 0:
        out.write_text(json.dumps(results, indent=2))
    if backend != "horovod":
        # both ranks done before either tears its group down: a rank that destroyed it
        # while the other still talked to it aborted at exit ("terminate called without
        # an active exception"), seen once in a full run
        torch_dist.barrier()
        torch_dist.destroy_process_group()


if __name__ == "__main__":
    main()
    if sys.argv[1] != "horovod":
        # Every result is written: leave without C++ static destruction, where gloo's
        # threads abort a worker now and then ("terminate called without an active
        # exception"), as tests/distributed_jobs/job.py does.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
