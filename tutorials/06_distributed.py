# %% [markdown]
# # Data-parallel SVI: horovod and torch.distributed
#
# The Bayesian regression of tutorial 1, trained by two worker processes that each see
# half of the data. After every backward pass the wrapper sums the workers' gradients
# in ONE collective (pyro.optim's `HorovodOptimizer` issues one per parameter) and
# every worker takes the same optimizer step:
#
# - `pyroopt.HorovodOptimizer(pyroopt.Adam(...))`, launched with
#   `horovodrun -np 2 -H localhost:2 --gloo`;
# - `pyroopt.DistributedOptimizer(pyroopt.Adam(...))` on `torch.distributed`, launched
#   with `torchrun --standalone --nproc_per_node 2`.
#
# `pyroopt.distributed.shard` gives each worker its block of rows. The likelihood sits in
# a `pyro.plate` of the full size subsampled to those rows, so each worker's loss
# counts its rows `N / rows` times, and the average of the workers' gradients is the
# full-data gradient. With the same seed on every worker (the same guide samples), the
# two-worker runs retrace a single-process run on all the data, up to rounding.
#
# This file is both the tutorial and the worker: the launchers run it with `--worker`.

# %%
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyro
import pyro.distributions as dist
import torch
from pyro.infer import SVI, Trace_ELBO
from pyro.infer.autoguide import AutoNormal
from regression import QUICK, data, output_dir

import pyroopt
from pyroopt.distributed import shard

torch.set_default_dtype(torch.float64)  # compare runs across processes closely
STEPS = 40 if QUICK else 400
LR = 0.05
N = 500
TIMEOUT = 180  # seconds for one launch, start-up included
OUT = output_dir("06_distributed")


def model(x: torch.Tensor, y: torch.Tensor, rows: torch.Tensor) -> None:
    """Tutorial 1's regression; ``x``, ``y`` are the rows ``rows`` of N data points."""
    weight = pyro.sample("weight", dist.Normal(0.0, 1.0).expand([4]).to_event(1))
    bias = pyro.sample("bias", dist.Normal(0.0, 10.0))
    sigma = pyro.sample("sigma", dist.LogNormal(0.0, 1.0))
    with pyro.plate("data", N, subsample=rows):  # scales the likelihood by N / len(rows)
        pyro.sample("obs", dist.Normal(x @ weight + bias, sigma), obs=y)


def train(optim: pyro.optim.PyroOptim, rows: torch.Tensor, mean_loss=None) -> list[float]:
    """SVI on ``rows`` of the data; ``mean_loss`` averages a loss over the workers."""
    pyro.clear_param_store()
    pyro.set_rng_seed(0)  # the same guide samples on every worker
    x, y = data(N)
    x, y = x[rows], y[rows]
    svi = SVI(model, AutoNormal(model), optim, Trace_ELBO())
    losses = []
    for _ in range(STEPS):
        loss = svi.step(x, y, rows)
        losses.append(loss if mean_loss is None else mean_loss(loss))
    return losses


def final_params() -> dict[str, list[float]]:
    store = pyro.get_param_store()
    return {name: store[name].detach().reshape(-1).tolist() for name in sorted(store.keys())}


def worker(backend: str, out: Path) -> None:
    """One of two workers: train on this rank's shard; rank 0 writes the curve."""
    if backend == "horovod":
        import horovod.torch as hvd

        hvd.init()
        optim = pyroopt.HorovodOptimizer(pyroopt.Adam({"lr": LR}))

        def mean_loss(loss: float) -> float:  # for the curve only: the full-data loss
            return float(hvd.allreduce(torch.tensor(loss), op=hvd.Average, name="loss"))

    else:
        import torch.distributed as tdist

        tdist.init_process_group("gloo")
        optim = pyroopt.DistributedOptimizer(pyroopt.Adam({"lr": LR}))

        def mean_loss(loss: float) -> float:
            total = torch.tensor(loss)
            tdist.all_reduce(total)
            return float(total) / tdist.get_world_size()

    rank, size = pyroopt.distributed.world()
    rows = torch.arange(N)[shard(N)]  # this worker's block, e.g. rows 0-249 on rank 0
    losses = train(optim, rows, mean_loss)
    if rank == 0:
        result = {"size": size, "rows": len(rows), "losses": losses, "params": final_params()}
        out.write_text(json.dumps(result))
    if backend == "torch":
        tdist.destroy_process_group()


if __name__ == "__main__" and sys.argv[1:2] == ["--worker"]:
    worker(sys.argv[2], Path(sys.argv[3]))
    sys.exit()

# %% [markdown]
# ## Launch two workers per backend, both launches at once
# The launchers are installed next to this Python (`make install`). Each launch gets
# its own process group, so a hung launch can be killed with all its workers; a launch
# that fails or hangs is reported with the end of its output, and the tutorial exits
# with an error after plotting what did finish.

# %%
import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

BIN = Path(sys.executable).parent


def command(backend: str, out: Path) -> list[str]:
    launcher = "horovodrun" if backend == "horovod" else "torchrun"
    path = shutil.which(launcher, path=str(BIN))
    if path is None:
        raise FileNotFoundError(f"{launcher} is not installed next to {sys.executable}")
    worker_args = [str(Path(__file__).resolve()), "--worker", backend, str(out)]
    if backend == "horovod":
        return [path, "-np", "2", "-H", "localhost:2", "--gloo", sys.executable, *worker_args]
    return [path, "--standalone", "--nproc_per_node", "2", *worker_args]


def start(backend: str) -> subprocess.Popen | str:
    """Start a two-worker run of ``backend``, or say why it cannot start."""
    (OUT / f"{backend}.json").unlink(missing_ok=True)
    try:
        cmd = command(backend, OUT / f"{backend}.json")
    except FileNotFoundError as error:
        return f"{error}: run make install"
    return subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )


def finish(backend: str, proc: subprocess.Popen | str, deadline: float) -> dict | str:
    """The rank-0 result of a two-worker run, or why there is none."""
    if isinstance(proc, str):
        return proc
    try:
        output, _ = proc.communicate(timeout=max(deadline - time.perf_counter(), 1.0))
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the launcher and its workers
        output, _ = proc.communicate()
        return f"timed out after {TIMEOUT} s; last output:\n{output[-3000:]}"
    out = OUT / f"{backend}.json"
    if proc.returncode != 0:
        return f"{proc.args[0]} exited with {proc.returncode}; last output:\n{output[-3000:]}"
    if not out.exists():
        return f"rank 0 wrote no result to {out}; last output:\n{output[-3000:]}"
    return json.loads(out.read_text())


# both launches run at once; the single-process reference below trains meanwhile
began = time.perf_counter()
procs = {backend: start(backend) for backend in ("horovod", "torch")}

# %% [markdown]
# ## The single-process reference on all the data, while the workers run

# %%
single_losses = train(pyroopt.Adam({"lr": LR}), torch.arange(N))
single_params = final_params()

runs: dict[str, dict] = {}
failures: dict[str, str] = {}
for backend, proc in procs.items():
    result = finish(backend, proc, began + TIMEOUT)
    if isinstance(result, str):
        failures[backend] = result
        print(f"FAILED: the {backend} launch did not finish: {result}")
    else:
        runs[backend] = result
        print(f"{backend}: 2 workers, {STEPS} steps, done {time.perf_counter() - began:.1f} s in")

# %% [markdown]
# ## Compare: loss curves, and the final parameters

# %%
labels = {
    "horovod": "HorovodOptimizer (horovodrun)",
    "torch": "DistributedOptimizer (torchrun)",
}
fig, ax = plt.subplots(figsize=(7, 4.5))
ax.plot(single_losses, label="1 process, all 500 rows", linewidth=4, alpha=0.4)
for backend, result in runs.items():
    style = "--" if backend == "horovod" else ":"
    ax.plot(result["losses"], style, label=f"{labels[backend]}: 2 x {result['rows']} rows")
ax.set_xlabel("SVI step")
ax.set_ylabel("loss on all the data (negative ELBO, log scale)")
ax.set_yscale("log")
ax.set_title("Two workers on half the data each retrace one process")
ax.legend()
fig.tight_layout()
plot = OUT / "distributed.png"
fig.savefig(plot, dpi=100)

for backend, result in runs.items():
    diff = max(
        abs(a - b)
        for name, values in single_params.items()
        for a, b in zip(values, result["params"][name], strict=True)
    )
    print(f"{backend}: largest difference in final parameters from 1 process: {diff:.2e}")
print(f"final loss: {single_losses[-1]:.1f}")
print(f"plot: {plot}")
if failures:
    sys.exit(f"{len(failures)} launch(es) failed: {', '.join(failures)} (see above)")
