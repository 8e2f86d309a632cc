"""pyroopt.distributed.ElasticState: commits, restores and syncs, in one process and
under real elastic launchers (horovodrun with a host-discovery script, torchrun
``--nnodes 1:2``), loopback addresses only.

The launcher tests run tests/distributed_jobs/elastic_job.py: float64 SVI on two
workers at most, a commit every 4 steps, 24 steps, a parameter that first appears at
step 10 (discovered and broadcast in whatever world is live then). The three launches start together
(one fixture) so that their start-up times overlap.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pyro
import pytest
import torch
from programs import assert_same_optimizer_state
from pyro.infer import SVI, Trace_ELBO

import pyroopt
from pyroopt.distributed import DistributedPyroOptim, ElasticState, read_commit
from pyroopt.distributed.buffer import ROW
from pyroopt.distributed.collectives import Collectives

JOBS = Path(__file__).parent / "distributed_jobs"
sys.path.insert(0, str(JOBS))
import regression  # noqa: E402

BIN = Path(sys.executable).parent
STEPS, EVERY = 24, 4
LATE_FROM = 10  # the parameter "late" appears at this step in every launched job


# -- one process ----------------------------------------------------------------------


def svi_run(dtype, plan, *, optim=None):
    """SVI on the regression model; ``plan`` maps a step to "commit" or "restore" (done
    after that step, once). A parameter "late" appears from step 5 on. Returns the
    loss of every step taken (a step retaken after a restore overwrites), the final
    store and the optimizer state."""
    pyro.clear_param_store()
    pyro.set_rng_seed(3)
    x, y = (t.to(dtype) for t in regression.data())
    regression._LATE_INIT[0] = 2.0
    optim = optim or pyroopt.Adam({"lr": 0.05})
    svi = SVI(regression.model, regression.guide, optim, Trace_ELBO())
    state = ElasticState(optim, step=0)
    losses, done = {}, set()
    while state.step < 10:
        step = state.step + 1
        losses[step] = svi.step(x, y, None, step >= 5)
        state.step = step
        action = plan.get(step)
        if action and step not in done:
            done.add(step)
            getattr(state, action)()
    store = pyro.get_param_store()
    params = {n: store.get_param(n).unconstrained().detach().clone() for n in sorted(store)}
    return losses, params, optim.get_state(), state


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("commit_at", [3, 6], ids=["late param after the commit", "before"])
def test_restore_retraces_training_bit_for_bit(dtype, commit_at):
    """Commit, go on, restore, go on: the same losses, parameters and optimizer state
    as straight through (a parameter that first appeared after the commit is dropped
    and appears again with fresh state)."""
    torch.set_default_dtype(dtype)
    straight = svi_run(dtype, {})
    resumed = svi_run(dtype, {commit_at: "commit", 8: "restore"})
    assert resumed[0] == straight[0]
    assert resumed[1].keys() == straight[1].keys()
    for name in straight[1]:
        assert resumed[1][name].dtype == dtype
        assert torch.equal(resumed[1][name], straight[1][name]), name
    assert_same_optimizer_state(resumed[2], straight[2])
    assert resumed[3].generation == 1


def test_restore_under_an_autoguide_retraces_training():
    """AutoNormal's parameters live in a PyroModule that re-reads the store: after a
    restore it takes the restored tensors, and training retraces straight through."""
    from pyro.infer.autoguide import AutoNormal

    x, y = regression.data()

    def run(restore_at):
        pyro.clear_param_store()
        pyro.set_rng_seed(5)
        optim = pyroopt.Adam({"lr": 0.05})
        svi = SVI(regression.model, AutoNormal(regression.model), optim, Trace_ELBO())
        state = ElasticState(optim, step=0)
        losses = {}
        while state.step < 6:
            losses[state.step + 1] = svi.step(x, y)
            state.step += 1
            if state.step == 2 and state.generation == 0:
                state.commit()
            if state.step == restore_at and state.generation == 1 and restore_at:
                restore_at = 0
                state.restore()
        return losses, {n: v.detach().clone() for n, v in pyro.get_param_store().items()}

    straight, resumed = run(0), run(4)
    assert resumed[0] == straight[0]
    for name, value in straight[1].items():
        assert torch.equal(resumed[1][name], value), name


def test_restore_brings_back_schedules_and_skip_counters():
    def scheduled():
        return pyroopt.StepLR(
            {"optimizer": torch.optim.Adam, "optim_args": {"lr": 0.1}, "step_size": 1},
            skip_nonfinite=True,
        )

    x = pyro.param("x", torch.ones(2)).unconstrained()
    optim = scheduled()
    state = ElasticState(optim, epoch=0)
    x.grad = torch.ones(2)
    optim([x])
    optim.step()
    state.epoch = 1
    state.commit()
    committed = (pyro.param("x").detach().clone(), optim.get_last_lr())
    x.grad = torch.tensor([float("nan"), 1.0])
    with pytest.warns(RuntimeWarning, match="skipped an optimizer step"):
        optim([x])
    optim.step()
    state.epoch = 2
    assert optim.skipped_steps == 1 and optim.get_last_lr() != committed[1]
    state.restore()
    assert optim.skipped_steps == 0 and state.epoch == 1
    assert torch.equal(pyro.param("x"), committed[0])
    x = pyro.param("x").unconstrained()
    x.grad = torch.ones(2)
    optim([x])  # the new tensor takes the committed state: the schedule's lr
    assert optim.get_last_lr() == committed[1]


def test_a_failing_commit_keeps_the_last_one(tmp_path, monkeypatch):
    """An error in the middle of a commit (the commit file cannot be written, a
    generator cannot be read) leaves the last commit whole and restorable."""
    x = pyro.param("x", torch.zeros(2)).unconstrained()
    optim = pyroopt.SGD({"lr": 1.0})
    state = ElasticState(optim, commit_file=tmp_path / "commit.pt", step=0)
    x.grad = torch.ones(2)
    optim([x])
    state.step = 1
    state.commit()
    assert read_commit(tmp_path / "commit.pt")["generation"] == 1
    x.grad = torch.ones(2)
    optim([x])
    state.step = 2

    state.commit_file = str(tmp_path / "missing" / "commit.pt")
    with pytest.raises(FileNotFoundError):
        state.commit()
    state.commit_file = str(tmp_path / "commit.pt")

    def broken():
        raise RuntimeError("generator unreadable")

    monkeypatch.setattr(pyroopt.distributed.elastic.checkpoint, "rng_state", broken)
    with pytest.raises(RuntimeError, match="generator unreadable"):
        state.commit()
    monkeypatch.undo()

    assert state.generation == 1
    assert read_commit(tmp_path / "commit.pt")["generation"] == 1
    state.restore()
    assert state.step == 1
    assert pyro.param("x").tolist() == [-1.0, -1.0]
    assert optim.get_state()["x"]["state"] == {}  # SGD without momentum holds none


class Link:
    """Two workers seen from rank 1: rank 0 offers ``theirs`` (a commit) or fails."""

    def __init__(self, theirs=None, fail=False):
        self.theirs, self.fail = theirs, fail
        self.rank, self.size, self.local_rank = 1, 2, 0

    def allgather_object(self, obj):
        return [(self.theirs["generation"] if self.theirs else 0, None), obj]

    def broadcast_object(self, obj, root):
        if self.fail:
            raise ConnectionResetError("rank 0 died during the sync")
        return obj if root == self.rank else self.theirs


def two_states():
    """Rank 0's state after 3 commits, and a fresh rank 1 (the same parameter)."""
    pyro.set_rng_seed(0)
    x = pyro.param("x", torch.zeros(3)).unconstrained()
    optim = pyroopt.Adam({"lr": 0.1})
    state = ElasticState(optim, step=0)
    for step in range(1, 4):
        x.grad = torch.full((3,), float(step))
        optim([x])
        state.step = step
        state.commit()
    theirs = state.committed()
    pyro.clear_param_store()
    pyro.param("x", torch.zeros(3))
    return theirs, ElasticState(pyroopt.Adam({"lr": 0.1}), step=0)


def test_sync_adopts_the_newest_commit_of_any_worker():
    theirs, state = two_states()
    state._link = Link(theirs)
    state.sync()
    assert state.generation == 3 and state.step == 3
    assert torch.equal(pyro.param("x"), theirs["param_store"]["params"]["x"])
    x = pyro.param("x").unconstrained()
    x.grad = torch.ones(3)
    state.optim([x])
    assert state.optim.get_state()["x"]["state"][0]["step"] == 4  # Adam went on


def test_a_worker_dying_during_sync_leaves_the_last_commit():
    theirs, state = two_states()
    x = pyro.param("x").unconstrained()
    x.grad = torch.ones(3)
    state.optim([x])
    state.step = 1
    state.commit()
    mine = (pyro.param("x").detach().clone(), state.optim.get_state())
    state._link = Link(theirs, fail=True)
    with pytest.raises(ConnectionResetError):
        state.sync()
    assert state.generation == 1
    x = pyro.param("x").unconstrained()
    x.grad = torch.ones(3)
    state.optim([x])
    state.restore()  # what hvd.elastic.run does next
    assert state.step == 1
    assert torch.equal(pyro.param("x"), mine[0])
    assert_same_optimizer_state(state.optim.get_state(), mine[1])


def test_an_unreadable_commit_file_fails_the_sync_on_every_worker(tmp_path):
    theirs, _ = two_states()
    (tmp_path / "c.pt").write_bytes(b"not a commit")
    state = ElasticState(pyroopt.Adam({"lr": 0.1}), commit_file=tmp_path / "c.pt")
    state._link = Link(theirs)  # rank 0 reads its file fine; this rank 1 cannot
    with pytest.raises(RuntimeError, match="rank 1 could not read its commit file"):
        state.sync()
    assert state.generation == 0


def test_commit_file_round_trip_and_bad_files(tmp_path):
    pyro.param("s", torch.ones(2), constraint=pyro.distributions.constraints.positive)
    optim = pyroopt.Adam({"lr": 0.1})
    state = ElasticState(optim, commit_file=tmp_path / "c.pt", epoch=0, batch=[1, 2])
    state.epoch = 4
    state.commit()
    pyro.clear_param_store()
    other = ElasticState(pyroopt.Adam({"lr": 0.1}), epoch=0, batch=[])
    other.load(tmp_path / "c.pt")
    assert (other.epoch, other.batch, other.generation) == (4, [1, 2], 1)
    assert torch.equal(pyro.param("s"), torch.ones(2))
    torch.save({"params": {}}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="is not an elastic commit"):
        read_commit(tmp_path / "other.pt")
    state.remove_commit_file()
    assert not (tmp_path / "c.pt").exists()


def test_bad_arguments_are_named():
    with pytest.raises(
        TypeError, match=r"needs a pyroopt optimizer .*got pyro\.optim\.optim\.PyroOptim"
    ):
        ElasticState(pyro.optim.Adam({"lr": 0.1}))
    with pytest.raises(ValueError, match="counter name 'commit'"):
        ElasticState(pyroopt.Adam({"lr": 0.1}), commit=1)
    with pytest.raises(ValueError, match="counter name 'local_optim'"):
        ElasticState(pyroopt.Adam({"lr": 0.1}), local_optim=1)
    with pytest.raises(TypeError, match="commit_file must be a path"):
        ElasticState(pyroopt.Adam({"lr": 0.1}), commit_file=3)


class Resizable(Collectives):
    """``size`` identical workers in one process: a sum multiplies by the size."""

    def __init__(self, size):
        self.rank, self.size, self.next_size = 0, size, size

    def refresh(self):
        self.size = self.next_size

    def allreduce_(self, buffer, exact, name):
        rows = self.size * ROW  # every worker's header row is rank 0's
        buffer[ROW:rows] = buffer[:ROW].repeat(self.size - 1)
        buffer[rows:].mul_(self.size)  # has-gradient counts and gradients

    def allgather_object(self, obj):
        return [obj] * self.size

    def broadcast_object(self, obj):
        return obj

    def broadcast_(self, flat):
        pass


def test_reset_world_averages_over_the_live_workers():
    x = pyro.param("x", torch.zeros(2)).unconstrained()
    comm = Resizable(2)
    optim = DistributedPyroOptim(pyroopt.SGD({"lr": 1.0}), comm)
    x.grad = torch.ones(2)
    optim([x])
    assert x.tolist() == [-1.0, -1.0]  # the mean of two equal gradients
    comm.next_size = 3  # a worker joined
    optim.reset_world()
    x.grad = torch.ones(2)
    optim([x])
    assert x.tolist() == [-2.0, -2.0]  # divided by 3, not 2
    assert optim.size == 3 and optim.last_collectives > 1  # agreed anew


# -- real launchers -------------------------------------------------------------------


def launcher(name: str) -> str:
    path = BIN / name
    assert path.exists(), f"{name} is not installed next to {sys.executable}: run make install"
    return str(path)


def start(cmd: list[str], out: Path, log: str, **env: str) -> subprocess.Popen:
    with (out / log).open("w") as sink:  # the child writes to its own copy
        return subprocess.Popen(
            cmd,
            stdout=sink,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env={**os.environ, "OMP_NUM_THREADS": "1", **env},
        )


def job_args(backend: str, out: Path, **flags: int) -> list[str]:
    args = [str(JOBS / "elastic_job.py"), backend, str(out)]
    args += ["--steps", str(STEPS), "--every", str(EVERY), "--late-from", str(LATE_FROM)]
    for flag, value in flags.items():
        args += [f"--{flag.replace('_', '-')}", str(value)]
    return args


def horovod_job(out: Path, hosts: list[str], **flags: int) -> subprocess.Popen:
    """horovodrun elastic on loopback hosts named by a discovery script's file."""
    out.mkdir()
    (out / "hosts").write_text("".join(f"{h}:1\n" for h in hosts))
    cmd = [launcher("horovodrun"), "-np", str(len(hosts)), "--min-np", "1", "--max-np", "2"]
    cmd += ["--host-discovery-script", str(JOBS / "elastic_discover.sh")]
    # one host at the start: no second host to find the common interface with
    cmd += ["--network-interface", "lo", "--gloo", sys.executable]
    cmd += job_args("horovod", out, **flags)
    return start(cmd, out, "launcher.txt", PYROOPT_ELASTIC_HOSTS=str(out / "hosts"))


def free_port() -> int:
    """A port for the rendezvous both node agents must name (the first one hosts it)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def torchrun_node(out: Path, run_id: str, port: int, host: bool, kill: bool) -> subprocess.Popen:
    cmd = [launcher("torchrun"), "--nnodes", "1:2", "--nproc_per_node", "1"]
    cmd += ["--max-restarts", "3", "--monitor-interval", "0.1"]
    cmd += ["--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id", run_id]
    # a second to wait for more nodes once one is there; a silent node counts as gone
    # after 5 missed one-second heartbeats (by default: 30 s and 15 s)
    conf = "last_call_timeout=1,keep_alive_interval=1,keep_alive_max_attempt=5"
    cmd += ["--rdzv-conf", f"is_host={str(host).lower()},{conf}"]
    cmd += job_args("torch", out, join_at=8, kill_at=15)
    return start(
        cmd,
        out,
        f"agent_{'host' if host else 'joiner'}.txt",
        PYROOPT_KILL_THIS_NODE=str(int(kill)),
        # torch shares the agent's store with the workers by default, and a node that
        # stays rank 0 across a scale-up then never publishes the new round's master
        # address: the joining agent waits for it forever (seen with torch 2.13)
        TORCH_DISABLE_SHARE_RDZV_TCP_STORE="1",
    )


def wait_all(procs: dict[str, subprocess.Popen], deadline: float) -> dict[str, int]:
    codes = {}
    for name, proc in procs.items():
        try:
            codes[name] = proc.wait(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            codes[name] = None
    return codes


@pytest.fixture(scope="module")
def elastic_runs(tmp_path_factory):
    """Three elastic jobs at once: horovod losing a worker, horovod gaining one, and
    torchrun gaining a node and then losing it. Returns their folders."""
    root = tmp_path_factory.mktemp("elastic")
    run_id = f"pyroopt-test-{os.getpid()}"
    shm = Path(f"/dev/shm/pyroopt-elastic-{run_id}.pt")
    procs = {
        "hvd_kill": horovod_job(root / "hvd_kill", ["localhost", "127.0.0.1"], kill_at=11),
        "hvd_join": horovod_job(root / "hvd_join", ["localhost"], join_at=8),
    }
    torch_out = root / "torch"
    torch_out.mkdir()
    port = free_port()
    procs["torch_host"] = torchrun_node(torch_out, run_id, port, host=True, kill=False)
    deadline = time.monotonic() + 150
    try:
        while not (torch_out / "rdzv_port").exists():  # the host trained to step 8 alone
            if time.monotonic() > deadline or procs["torch_host"].poll() is not None:
                break
            time.sleep(0.05)
        procs["torch_joiner"] = torchrun_node(torch_out, run_id, port, host=False, kill=True)
        codes = wait_all(procs, deadline)
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        shm.unlink(missing_ok=True)
    outs = {"hvd_kill": root / "hvd_kill", "hvd_join": root / "hvd_join", "torch": torch_out}
    for name, code in codes.items():
        folder = outs["torch" if name.startswith("torch") else name]
        expected = -signal.SIGKILL if name == "torch_joiner" else 0
        assert code == expected, f"{name} exited {code}:\n" + "\n".join(
            p.read_text()[-3000:] for p in sorted(folder.glob("*.txt"))
        )
    assert not shm.exists()  # the job removed its commit file
    return outs


def read_logs(out: Path) -> list[list[dict]]:
    """Each worker process's records, in the order the processes started."""
    logs = [[json.loads(line) for line in p.read_text().splitlines()] for p in out.glob("log_*")]
    return sorted(logs, key=lambda records: (records[0]["step"], records[0]["rank"]))


def assert_steps_counted(records: list[dict]) -> None:
    """One process's steps run on from each start without gap or repeat, and at every
    commit Adam has stepped each parameter exactly as many times as the counter says."""
    step = None
    for r in records:
        if r["event"] == "start":
            step = r["step"]
        elif r["event"] == "step":
            assert r["step"] == step + 1, records
            step = r["step"]
        elif r["event"] == "commit":
            assert r["step"] == step and r["generation"] == step // EVERY
            late = r["adam_steps"].pop("late", None)
            assert set(r["adam_steps"].values()) == {float(step)}, r
            assert late == (float(step - LATE_FROM + 1) if step >= LATE_FROM else None), r


def reference_from(commit_path: Path) -> tuple[dict, dict, dict]:
    """One worker, no launcher: resume from the commit on all the data to the end."""
    regression._LATE_INIT[0] = 0.0  # as in the jobs
    pyro.clear_param_store()
    x, y = regression.data()
    optim = pyroopt.Adam({"lr": 0.05})
    svi = SVI(regression.model, regression.guide, optim, Trace_ELBO())
    state = ElasticState(optim, step=0)
    state.load(commit_path)
    idx = torch.arange(regression.N)
    losses = {}
    while state.step < STEPS:
        state.step += 1
        losses[state.step] = svi.step(x, y, idx, state.step >= LATE_FROM)
    store = pyro.get_param_store()
    params = {n: store.get_param(n).unconstrained().detach() for n in sorted(store)}
    return losses, params, optim.get_state()


def assert_final_equals_reference(out: Path, survivor: list[dict]) -> None:
    restart = [r for r in survivor if r["event"] == "start"][-1]
    assert restart["size"] == 1 and restart["rows"] == regression.N  # re-sharded
    losses, params, state = reference_from(out / f"commit_{restart['generation']:03d}.pt")
    final = torch.load(out / "final_r0.pt", weights_only=False)
    assert final["step"] == STEPS
    assert final["params"].keys() == params.keys()
    for name in params:
        assert torch.equal(final["params"][name], params[name]), name
    assert_same_optimizer_state(final["optimizer"], state)
    after = {r["step"]: r["loss"] for r in survivor if r["event"] == "step" and r["size"] == 1}
    assert after == {s: losses[s] for s in range(restart["step"] + 1, STEPS + 1)}


def assert_identical_after_join(joined: list[dict], others: list[list[dict]]) -> None:
    """From the joiner's sync on, every step's digest equals the other worker's."""
    start = joined[0]
    assert start["event"] == "start" and start["size"] == 2 and start["rows"] == 20
    mine = {r["step"]: r["digest"] for r in joined if r["event"] == "step"}
    theirs = {
        r["step"]: r["digest"]
        for records in others
        for r in records
        if r["event"] == "step" and r["size"] == 2 and r["step"] > start["step"]
    }
    assert mine and mine == theirs


@pytest.mark.distributed
def test_horovod_lost_worker_goes_on_from_the_commit(elastic_runs):
    """horovodrun elastic, 2 workers on hosts localhost and 127.0.0.1; rank 1 SIGKILLs
    itself before step 11. The survivor restores the commit of step 8, re-forms a
    world of one, re-shards (40 rows), and its final parameters and Adam state equal
    a single process resumed from that commit, bit for bit; so do its losses."""
    out = elastic_runs["hvd_kill"]
    logs = read_logs(out)
    for records in logs:
        assert_steps_counted(records)
    survivor = next(records for records in logs if records[-1]["step"] == STEPS)
    restart = [r for r in survivor if r["event"] == "start"]
    assert [(r["size"], r["step"]) for r in restart] == [(2, 0), (1, 8)]
    assert_final_equals_reference(out, survivor)


@pytest.mark.distributed
def test_horovod_joined_worker_holds_the_same_state_to_the_end(elastic_runs):
    """horovodrun elastic from one worker; after the commit of step 8 the hosts file
    gains 127.0.0.1, the commit raises HostsUpdatedInterrupt, the new worker syncs;
    from then on both hold bit-identical parameters and optimizer state every step,
    and their final states are equal (torch.equal)."""
    out = elastic_runs["hvd_join"]
    first, joined = read_logs(out)
    for records in (first, joined):
        assert_steps_counted(records)
    assert [(r["size"], r["step"]) for r in first if r["event"] == "start"] == [(1, 0), (2, 8)]
    assert joined[0]["generation"] == 2 and joined[0]["rank"] == 1
    assert_identical_after_join(joined, [first])
    finals = [torch.load(out / f"final_r{r}.pt", weights_only=False) for r in (0, 1)]
    for name in finals[0]["params"]:
        assert torch.equal(finals[0]["params"][name], finals[1]["params"][name]), name
    assert_same_optimizer_state(finals[1]["optimizer"], finals[0]["optimizer"])
    assert {f["step"] for f in finals} == {STEPS}


@pytest.mark.distributed
def test_torchrun_node_joins_then_dies_and_the_job_goes_on(elastic_runs):
    """torchrun --nnodes 1:2 (c10d on 127.0.0.1, gloo): one node trains alone to the
    commit of step 8; a second node's agent arrives, the first agent restarts its
    worker, both sync from the commit in /dev/shm and hold identical states every
    step; before step 15 the second node's agent and worker are SIGKILLed; the first
    agent restarts its worker, which restores the commit of step 12 alone and ends
    equal, bit for bit, to one process resumed from that commit."""
    out = elastic_runs["torch"]
    logs = read_logs(out)
    for records in logs:
        assert_steps_counted(records)
    starts = [(r[0]["size"], r[0]["step"]) for r in logs]
    assert starts == [(1, 0), (2, 8), (2, 8), (1, 12)]
    alone, pair, survivor = logs[0], logs[1:3], logs[3]
    assert alone[-1]["step"] == 8  # stopped by the restart at the join
    assert_identical_after_join(pair[1], [pair[0]])
    assert all(records[-1]["step"] == 14 for records in pair)  # the kill before 15
    assert_final_equals_reference(out, survivor)
