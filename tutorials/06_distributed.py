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
# The last section trains elastically: a worker is lost and another joins mid-run, and
# the job goes on from its last in-memory commit (`pyroopt.distributed.ElasticState`).
#
# This file is both the tutorial and the worker: the launchers run it with `--worker`.

# %%
from __future__ import annotations

import json
import os
import shlex
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
    if backend == "elastic":
        elastic_worker(out)
        return
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


ELASTIC_STEPS = 40 if QUICK else 200
COMMIT_EVERY = 5
LOSE_AT = ELASTIC_STEPS // 4 + 3  # rank 1 dies just before this step, 2 after a commit
# a worker joins right after the commit of this step
REGAIN_AT = ELASTIC_STEPS * 5 // 8 // COMMIT_EVERY * COMMIT_EVERY


def elastic_worker(out: Path) -> None:
    """One worker of the elastic job. Rank 0 (never the one that dies) records each
    start and each step's mean loss, and writes the records to ``out`` at the end."""
    import horovod.torch as hvd

    from pyroopt.distributed import ElasticState

    hvd.init()
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    optim = pyroopt.HorovodOptimizer(pyroopt.Adam({"lr": LR}))
    svi = SVI(model, AutoNormal(model), optim, Trace_ELBO())
    state = ElasticState(optim, step=0)  # commits: param store, Adam, generators, step
    x_all, y_all = data(N)
    hosts = out.with_name("hosts.txt")  # what the discovery script reads
    records: list[dict] = []

    def log(**record) -> None:
        if hvd.rank() == 0:
            records.append(record)

    @hvd.elastic.run
    def train(state: ElasticState) -> None:
        rows = torch.arange(N)[shard(N)]  # this worker's block in the current world
        log(event="start", step=state.step, size=hvd.size())
        while state.step < ELASTIC_STEPS:
            if state.step + 1 == LOSE_AT and hvd.rank() == 1 and hvd.size() == 2:
                here = os.environ["HOROVOD_HOSTNAME"]  # horovod places ranks as it likes
                kept = [host for host in ("localhost", "127.0.0.1") if host != here]
                hosts.write_text(f"{kept[0]}:1\n")  # this host leaves the pool ...
                os.kill(os.getpid(), signal.SIGKILL)  # ... and its worker dies
            loss = svi.step(x_all[rows], y_all[rows], rows)
            state.step += 1
            mean = float(hvd.allreduce(torch.tensor(loss), op=hvd.Average, name="loss"))
            log(event="step", step=state.step, size=hvd.size(), loss=mean)
            if state.step % COMMIT_EVERY == 0:
                state.commit()  # raises HostsUpdatedInterrupt when a host was added
                if state.step == REGAIN_AT and hvd.size() == 1:
                    hosts.write_text("localhost:1\n127.0.0.1:1\n")  # a host comes back
                    while True:  # until horovod announces it (well within a second)
                        state.check_host_updates()
                        time.sleep(0.05)

    train(state)
    if hvd.rank() == 0:
        adam_steps = {float(s["state"][0]["step"]) for s in optim.get_state().values()}
        out.write_text(json.dumps({"records": records, "adam_steps": sorted(adam_steps)}))


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
    launcher = "torchrun" if backend == "torch" else "horovodrun"
    path = shutil.which(launcher, path=str(BIN))
    if path is None:
        raise FileNotFoundError(f"{launcher} is not installed next to {sys.executable}")
    worker_args = [str(Path(__file__).resolve()), "--worker", backend, str(out)]
    if backend == "horovod":
        return [path, "-np", "2", "-H", "localhost:2", "--gloo", sys.executable, *worker_args]
    if backend == "elastic":  # see the last section
        return [path, *elastic_options(out), "--gloo", sys.executable, *worker_args]
    return [path, "--standalone", "--nproc_per_node", "2", *worker_args]


def elastic_options(out: Path) -> list[str]:
    """Elastic horovodrun options: 1 to 2 workers on the "hosts" of a file that a
    discovery script reads (a host lost rejoins after a cooldown of 1 to 2 s)."""
    hosts = out.with_name("hosts.txt")
    hosts.write_text("localhost:1\n127.0.0.1:1\n")
    script = out.with_name("discover_hosts.sh")  # horovod runs it every second
    script.write_text(f"#!/bin/sh\nexec cat {shlex.quote(str(hosts))}\n")
    script.chmod(0o755)
    return [
        "-np", "2", "--min-np", "1", "--max-np", "2", "--host-discovery-script", str(script),
        "--blacklist-cooldown-range", "1", "2",
        "--network-interface", "lo",  # a world of one host has no other to agree with
    ]  # fmt: skip


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
elastic_proc = start("elastic")  # the last section's job: it mostly waits, so start it now

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

# %% [markdown]
# ## Elastic training: a worker lost, a worker regained
# Workers on shared or preemptible machines come and go. Under horovod's elastic mode
# (`horovodrun --min-np 1 --max-np 2 --host-discovery-script ...`) the training function
# runs inside `hvd.elastic.run`, and an `ElasticState` commits the training state in
# memory every 5 steps: the param store, Adam's state, the random generators and the
# step counter. The two "hosts" here are `localhost` and `127.0.0.1`, named by a
# discovery script that reads a file.
#
# - Before step `LOSE_AT`, the worker of rank 1 takes its own host out of the file and
#   dies (SIGKILL). The survivor's next collective fails; it restores the last commit
#   (the steps after it are redone), re-forms a world of one, re-shards the data (all
#   500 rows) and goes on: the average now divides by one worker.
# - After the commit of step `REGAIN_AT`, the host comes back into the file. The
#   driver starts a worker there; horovod interrupts the survivor, both sync to rank
#   0's commit (the new worker starts exactly where the other is) and go on with 250
#   rows each.
#
# Each segment of the curve below is one world. After the loss, the survivor redoes the
# two steps since the last commit; its curve retraces the lost one there, since one
# worker on all the rows takes the gradient two workers took on half each (up to
# rounding). At the end, Adam has stepped every parameter exactly once per SVI step.

# %%
elastic = finish("elastic", elastic_proc, began + TIMEOUT)
if isinstance(elastic, str):
    failures["elastic"] = elastic
    print(f"FAILED: the elastic launch did not finish: {elastic}")
else:
    worlds: list[dict] = []  # one per start of the training function
    for r in elastic["records"]:
        if r["event"] == "start":
            worlds.append({"size": r["size"], "steps": [], "losses": []})
        elif r["event"] == "step":
            worlds[-1]["steps"].append(r["step"])
            worlds[-1]["losses"].append(r["loss"])
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for i, world in enumerate(worlds):
        where = "" if i == 0 else f", from the commit of step {world['steps'][0] - 1}"
        label = f"{world['size']} worker{'s' if world['size'] > 1 else ''}{where}"
        ax.plot(world["steps"], world["losses"], "-" if world["size"] > 1 else "--", label=label)
    ax.axvline(LOSE_AT, color="grey", linewidth=0.8)
    ax.axvline(REGAIN_AT, color="grey", linewidth=0.8)
    ax.set_xlabel("SVI step")
    ax.set_ylabel("mean loss over the workers (log scale)")
    ax.set_yscale("log")
    ax.set_title(f"Elastic SVI: a worker lost before step {LOSE_AT}, one regained at {REGAIN_AT}")
    ax.legend()
    fig.tight_layout()
    elastic_plot = OUT / "elastic.png"
    fig.savefig(elastic_plot, dpi=100)
    print(
        f"elastic: worlds of {[w['size'] for w in worlds]} workers, starting at steps "
        f"{[w['steps'][0] - 1 for w in worlds]}; {worlds[-1]['steps'][-1]} steps, done "
        f"{time.perf_counter() - began:.1f} s in"
    )
    # every SVI step counted once: Adam stepped each parameter once per step
    print(f"elastic: Adam steps per parameter at the end: {elastic['adam_steps']}")
    print(f"plot: {elastic_plot}")
if failures:
    sys.exit(f"{len(failures)} launch(es) failed: {', '.join(failures)} (see above)")
