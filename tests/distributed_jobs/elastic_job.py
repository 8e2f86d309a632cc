"""An elastic SVI job for tests/test_elastic.py: workers die or join mid-run.

Usage::

    horovodrun ... --host-discovery-script elastic_discover.sh python elastic_job.py \\
        horovod OUT_DIR --steps 24 --every 4 [--kill-at 11] [--join-at 8] [--late-from 10]
    torchrun --nnodes 1:2 ... elastic_job.py torch OUT_DIR --steps 24 --every 4 ...

Float64 SVI on tests/distributed_jobs/regression.py's model with
``pyroopt.HorovodOptimizer`` / ``pyroopt.DistributedOptimizer`` around
``pyroopt.Adam``, every worker seeded alike, an :class:`ElasticState` with the step
counter, a commit after every ``--every`` steps, the data re-sharded for the live
world at every (re)start.

- ``--kill-at S``: just before step S, once: under horovod the worker of rank 1
  SIGKILLs itself; under torchrun the worker of the node launched with
  ``PYROOPT_KILL_THIS_NODE=1`` SIGKILLs its node's agent, then itself.
- ``--join-at A`` (horovod): after the commit of step A, rank 0 adds ``127.0.0.1`` to
  the hosts file the discovery script reads (``PYROOPT_ELASTIC_HOSTS``) and waits for
  horovod's host-change interrupt, so the new worker joins at step A exactly.
- ``--late-from L``: the model gains the parameter "late" at step L (regression.py).
- ``--join-at A`` (torch): after the commit of step A, rank 0 writes
  ``OUT_DIR/rdzv_port`` and waits; the test then starts the second node, whose
  arrival makes the agent restart this worker.

Each process appends JSON lines to ``OUT_DIR/log_<pid>.jsonl``: ``start`` (after each
sync: rank, size, step, generation, rows of data), ``step`` (rank, size, step, loss,
a digest of the param store and the optimizer state after the step) and ``commit``
(step, generation, Adam's step count per parameter). Rank 0 writes every commit to
``OUT_DIR/commit_<generation>.pt``; every worker that finishes writes
``OUT_DIR/final_r<rank>.pt`` (the param store's tensors, ``optim.get_state()``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import signal
import sys
import time
from pathlib import Path

import pyro
import torch
from pyro.infer import SVI, Trace_ELBO

sys.path.insert(0, str(Path(__file__).parent))
import regression
from attempt_group import init_attempt_group

import pyroopt
from pyroopt.distributed import ElasticState, shard

SEED = 11
KILL_RANK = 1


def digest(optim) -> str:
    """SHA-256 of every parameter's and every optimizer state tensor's bytes, by name."""
    h = hashlib.sha256()
    store = pyro.get_param_store()

    def feed(value):
        if isinstance(value, torch.Tensor):
            h.update(str(value.dtype).encode())
            h.update(value.detach().contiguous().numpy().tobytes())
        elif isinstance(value, dict):
            for key in sorted(value, key=str):
                h.update(str(key).encode())
                feed(value[key])
        elif isinstance(value, (list, tuple)):
            for item in value:
                feed(item)
        else:
            h.update(repr(value).encode())

    feed({name: store.get_param(name).unconstrained() for name in sorted(store.keys())})
    feed(optim.get_state())
    return h.hexdigest()


def adam_steps(optim) -> dict:
    return {name: float(s["state"][0]["step"]) for name, s in optim.get_state().items()}


class Job:
    def __init__(self, args: argparse.Namespace, backend) -> None:
        self.args = args
        self.backend = backend
        self.out: Path = args.out
        self.log = (self.out / f"log_{os.getpid()}.jsonl").open("a")
        self.x, self.y = regression.data()
        pyro.clear_param_store()
        pyro.set_rng_seed(SEED)
        self.optim = backend.optimizer(pyroopt.Adam({"lr": 0.05}))
        self.svi = SVI(regression.model, regression.guide, self.optim, Trace_ELBO())
        self.state = ElasticState(self.optim, commit_file=backend.commit_file(self.out), step=0)

    def write(self, **record) -> None:
        self.log.write(json.dumps(record) + "\n")
        self.log.flush()

    def train(self, state: ElasticState) -> None:
        args, backend = self.args, self.backend
        rank, size = backend.rank(), backend.size()
        idx = torch.tensor(list(shard(regression.N)))  # this worker's rows, in this world
        x_local, y_local = shard(self.x), shard(self.y)
        self.write(
            event="start", rank=rank, size=size, step=state.step,
            generation=state.generation, rows=len(idx),
        )  # fmt: skip
        while state.step < args.steps:
            step = state.step + 1
            if step == args.kill_at and backend.dies(rank) and not (self.out / "killed").exists():
                (self.out / "killed").touch()
                self.log.close()
                backend.die()
            late = 0 < args.late_from <= step  # a parameter that appears mid-run
            loss = self.svi.step(x_local, y_local, idx, late)
            state.step = step
            self.write(
                event="step", rank=rank, size=size, step=step, loss=loss,
                digest=digest(self.optim),
            )  # fmt: skip
            if step % args.every == 0:
                joining = step == args.join_at and size == 1
                state.commit()
                self.write(
                    event="commit", rank=rank, step=step, generation=state.generation,
                    adam_steps=adam_steps(self.optim),
                )  # fmt: skip
                if rank == 0:
                    torch.save(state.committed(), self.out / f"commit_{state.generation:03d}.pt")
                if joining:
                    backend.wait_for_join(self, state)
        store = pyro.get_param_store()
        final = {
            "params": {n: store.get_param(n).unconstrained().detach() for n in sorted(store)},
            "optimizer": self.optim.get_state(),
            "step": state.step,
        }
        torch.save(final, self.out / f"final_r{rank}.pt")


class Horovod:
    def __init__(self) -> None:
        import horovod.torch as hvd

        self.hvd = hvd
        hvd.init()

    def optimizer(self, local):
        return pyroopt.HorovodOptimizer(local)

    def commit_file(self, out):
        return False  # horovod's workers live on: commits stay in memory

    def rank(self) -> int:
        return int(self.hvd.rank())

    def size(self) -> int:
        return int(self.hvd.size())

    def dies(self, rank: int) -> bool:
        return rank == KILL_RANK

    def die(self) -> None:
        os.kill(os.getpid(), signal.SIGKILL)

    def wait_for_join(self, job, state) -> None:
        """Add the second host, then wait for horovod's interrupt (raised on all ranks)."""
        if self.rank() == 0:
            hosts = Path(os.environ["PYROOPT_ELASTIC_HOSTS"])
            tmp = hosts.with_suffix(".tmp")
            tmp.write_text("localhost:1\n127.0.0.1:1\n")
            tmp.replace(hosts)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            state.check_host_updates()  # raises HostsUpdatedInterrupt once announced
            time.sleep(0.05)
        raise TimeoutError("horovod announced no new host within 60 s")

    def run(self, job: Job) -> None:
        self.hvd.elastic.run(job.train)(job.state)


class Torch:
    def __init__(self) -> None:
        import torch.distributed as dist

        self.dist = dist
        init_attempt_group("elastic")

    def optimizer(self, local):
        return pyroopt.DistributedOptimizer(local)

    def commit_file(self, out):
        return None  # the default: /dev/shm/pyroopt-elastic-<run id>.pt

    def rank(self) -> int:
        return int(self.dist.get_rank())

    def size(self) -> int:
        return int(self.dist.get_world_size())

    def dies(self, rank: int) -> bool:
        return os.environ.get("PYROOPT_KILL_THIS_NODE") == "1"

    def die(self) -> None:
        """SIGKILL this node's elastic agent, then this worker: the node is gone."""
        os.kill(os.getppid(), signal.SIGKILL)
        os.kill(os.getpid(), signal.SIGKILL)

    def wait_for_join(self, job, state) -> None:
        """Tell the test to start the second node; its agent restarts this worker."""
        if self.rank() == 0:  # the agent's store, where the second node's agent meets
            port = job.out / "rdzv_port"
            port.with_suffix(".tmp").write_text(os.environ["MASTER_PORT"])
            port.with_suffix(".tmp").replace(port)
        time.sleep(120)  # ended by the agent's restart; the test times out first
        raise TimeoutError("the second node did not join within 120 s")

    def run(self, job: Job) -> None:
        try:
            job.state.sync()
            job.train(job.state)
            self.dist.barrier()
            job.state.remove_commit_file()
        finally:
            self.dist.destroy_process_group()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("backend", choices=["horovod", "torch"])
    parser.add_argument("out", type=Path)
    parser.add_argument("--steps", type=int, default=24)
    parser.add_argument("--every", type=int, default=4)
    parser.add_argument("--kill-at", type=int, default=0)
    parser.add_argument("--join-at", type=int, default=0)
    parser.add_argument("--late-from", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.set_default_dtype(torch.float64)
    backend = Horovod() if args.backend == "horovod" else Torch()
    job = Job(args, backend)
    backend.run(job)
    job.log.close()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)  # no C++ static destruction of gloo's threads (see job.py)


if __name__ == "__main__":
    main()
