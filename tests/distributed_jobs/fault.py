"""A two-worker SVI job that checkpoints, can lose a worker, and resumes from disk.

Usage (under ``torchrun --nproc_per_node 2 --max-restarts 1 ...``)::

    fault.py OUT_DIR --steps 30 --every 5 --kill-at 18 --warmup 2

Float32 SVI (tests/distributed_jobs/regression.py's model) with
``pyroopt.DistributedOptimizer(pyroopt.Adam(...))``, every rank seeded alike. After
every ``--every`` steps rank 0 writes ``OUT_DIR/ckpt/step_NNNN.pt`` with
``save_training`` (atomic) and all ranks meet in a barrier, so no worker starts the
next step before the checkpoint is complete on disk: the newest checkpoint a restarted
group finds is fixed by the step counts alone. In the first attempt
(``TORCHELASTIC_RESTART_COUNT == 0``) all ranks meet in a barrier once they have logged
step ``--kill-at`` - 1, and rank 1 SIGKILLs itself just before step ``--kill-at`` (0:
never).

Every attempt first asks rank 0 for the newest checkpoint. With none, it trains from
scratch ("straight"). With one, it ``load_training``s it (param store, optimizer state,
random generators) three times and trains on to the end each time, into:

- "fresh": a newly built optimizer;
- "warm": a new optimizer that first took ``--warmup`` SVI steps of its own;
- "rollback": the "fresh" optimizer again, after it ran to the end.

Every rank appends ``{"step", "loss"}`` to ``losses_a{attempt}_{mode}_r{rank}.jsonl``
after each step, writes ``final_{mode}_r{rank}.pt`` (the param store's tensors and
``optim.get_state()``) at the end of each mode, and ``summary_r{rank}.json`` (attempt,
resume step, Adam's step counts just before each load) last.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import signal
import sys
from pathlib import Path

import pyro
import torch
import torch.distributed as dist
from pyro.infer import SVI, Trace_ELBO

sys.path.insert(0, str(Path(__file__).parent))
import regression
from attempt_group import init_attempt_group

import pyroopt
from pyroopt.checkpoint import load_training, save_training
from pyroopt.distributed import shard

SEED = 7  # the same on every rank: the ranks draw the same guide samples
KILL_RANK = 1


def rng_digest() -> str:
    return hashlib.sha256(torch.get_rng_state().numpy().tobytes()).hexdigest()


def latest_checkpoint(folder: Path) -> tuple[int, str] | None:
    found = sorted(folder.glob("step_*.pt"))
    if not found:
        return None
    return int(found[-1].stem.removeprefix("step_")), str(found[-1])


def step_counts(optim) -> dict:
    """Adam's ``step`` of every parameter in ``optim.get_state()``."""
    return {
        name: float(s["state"][0]["step"]) if s.get("state") else None
        for name, s in optim.get_state().items()
    }


def run(args: argparse.Namespace) -> None:
    attempt = int(os.environ["TORCHELASTIC_RESTART_COUNT"])
    rank = dist.get_rank()
    out: Path = args.out
    ckpt = out / "ckpt"
    ckpt.mkdir(parents=True, exist_ok=True)

    x, y = regression.data()
    x, y = x.float(), y.float()
    idx = torch.tensor(list(shard(regression.N)))
    x_local, y_local = shard(x), shard(y)

    def fresh_svi():
        pyro.clear_param_store()
        pyro.set_rng_seed(SEED)
        optim = pyroopt.DistributedOptimizer(pyroopt.Adam({"lr": 0.05}))
        return optim, SVI(regression.model, regression.guide, optim, Trace_ELBO())

    def train(mode, optim, svi, start, checkpoints):
        log = (out / f"losses_a{attempt}_{mode}_r{rank}.jsonl").open("a")
        for step in range(start + 1, args.steps + 1):
            if attempt == 0 and rank == KILL_RANK and step == args.kill_at:
                log.close()
                os.kill(os.getpid(), signal.SIGKILL)
            loss = svi.step(x_local, y_local, idx)
            log.write(json.dumps({"step": step, "loss": loss}) + "\n")
            log.flush()
            if attempt == 0 and step == args.kill_at - 1:
                # every rank has logged the last step before the kill: torchrun stops
                # the other workers as soon as it sees rank 1 die, which may otherwise
                # be before rank 0 wrote that step's line
                dist.barrier()
            if checkpoints and step % args.every == 0:
                # rank 0's generators are saved for all: they must be everybody's
                assert all_equal(rng_digest()), f"ranks' generators differ at step {step}"
                if rank == 0:
                    save_training(ckpt / f"step_{step:04d}.pt", optim)
                dist.barrier()  # nobody goes on before the checkpoint is complete
        log.close()
        store = pyro.get_param_store()
        final = {
            "params": {name: store.get_param(name).detach().clone() for name in sorted(store)},
            "optimizer": optim.get_state(),
        }
        torch.save(final, out / f"final_{mode}_r{rank}.pt")

    # rank 0 decides which checkpoint everybody resumes from
    found = dist_broadcast(latest_checkpoint(ckpt) if rank == 0 else None)
    summary: dict = {"attempt": attempt, "resumed_from": 0, "before_load": {}}
    if found is None:
        optim, svi = fresh_svi()
        train("straight", optim, svi, 0, checkpoints=True)
    else:
        start, path = found
        summary["resumed_from"] = start
        # fresh: a new optimizer; warm: one that took --warmup steps of its own first;
        # rollback: the fresh one again, after it ran to the end
        for mode in ("fresh", "warm", "rollback"):
            if mode != "rollback":
                optim, svi = fresh_svi()
            if mode == "warm":
                for _ in range(args.warmup):
                    svi.step(x_local, y_local, idx)
            summary["before_load"][mode] = step_counts(optim)
            load_training(path, optim)
            assert all_equal(rng_digest()), "ranks hold different random generators"
            train(mode, optim, svi, start, checkpoints=mode == "fresh")
    (out / f"summary_r{rank}.json").write_text(json.dumps(summary))


def dist_broadcast(obj):
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def all_equal(obj) -> bool:
    gathered = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, obj)
    return all(g == gathered[0] for g in gathered)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out", type=Path)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--every", type=int, default=5)
    parser.add_argument("--kill-at", type=int, default=0)
    parser.add_argument("--warmup", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.set_default_dtype(torch.float32)
    # without its own keys, attempt 1 tried to connect to the dead rank's old port
    init_attempt_group("fault")
    try:
        run(args)
    finally:
        dist.destroy_process_group()
    # Every result is written: leave without C++ static destruction, where gloo's threads
    # abort a worker now and then ("terminate called without an active exception",
    # SIGABRT; 3 of 14 runs of this job), which torchrun reports as a failed job. So
    # do tests/distributed_jobs/job.py and elastic_job.py.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
