"""pyroopt.distributed: real two-worker runs under horovodrun and torchrun.

Each launch runs tests/distributed_jobs/job.py on two workers, which write one JSON
file per rank; the tests read them. Single-process references are computed here.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pyro
import pytest
import torch
from pyro.infer import SVI, Trace_ELBO
from torch.testing import assert_close

import pyroopt
from pyroopt.distributed import DistributedPyroOptim, shard, shard_bounds
from pyroopt.distributed.collectives import Collectives

JOBS = Path(__file__).parent / "distributed_jobs"
sys.path.insert(0, str(JOBS))
import regression  # noqa: E402

BIN = Path(sys.executable).parent
BACKENDS = ["horovod", "torch"]
#: a worker computes the full-batch gradient as the mean of two half-batch gradients,
#: which rounds differently from one full-batch sum; over 8 Adam steps in float64
#: the parameters agree to this tolerance (measured differences are ~1e-15)
REF_TOL = {"rtol": 1e-10, "atol": 1e-10}


def launcher(name: str) -> str:
    path = shutil.which(name, path=str(BIN))
    assert path is not None, f"{name} is not installed next to {sys.executable}: run make install"
    return path


def launch(backend: str, out: Path, timeout: float) -> None:
    """Run both scenarios of the job on two workers; they write JSON into ``out``."""
    script = [str(JOBS / "job.py"), backend, "all", str(out)]
    if backend == "horovod":
        cmd = [launcher("horovodrun"), "-np", "2", "-H", "localhost:2", "--gloo"]
        cmd += [sys.executable, *script]
    else:
        cmd = [launcher("torchrun"), "--standalone", "--nproc_per_node", "2", *script]
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    try:
        output, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the launcher and its workers
        output, _ = proc.communicate()
        pytest.fail(f"{backend} job hung for {timeout} s:\n{output[-3000:]}")
    assert proc.returncode == 0, output[-5000:]
    # a C++ abort at a worker's exit (e.g. a process group left to static destruction)
    assert "terminate called" not in output, output[-5000:]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """``runs(backend, scenario)``: both ranks' results, launching once per backend."""
    outs: dict[str, Path] = {}

    def get(backend: str, scenario: str) -> list[dict]:
        if backend not in outs:
            outs[backend] = tmp_path_factory.mktemp(backend)
            launch(backend, outs[backend], timeout=150)
        results = []
        for rank in (0, 1):
            path = outs[backend] / f"{scenario}_{backend}_r{rank}.json"
            results.append({**json.loads(path.read_text()), "_out": str(outs[backend])})
        return results

    return get


def as_tensors(snapshot: dict) -> dict:
    return {k: torch.tensor(v, dtype=torch.float64) for k, v in snapshot.items()}


def reference_svi(steps: int, late_from: int, late_init: float) -> list[dict]:
    """Single-process SVI on the full batch, as the two workers should reproduce it."""
    regression._LATE_INIT[0] = late_init
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    x, y = regression.data()
    svi = SVI(regression.model, regression.guide, pyroopt.Adam({"lr": 0.05}), Trace_ELBO())
    snaps = []
    for step in range(1, steps + 1):
        svi.step(x, y, None, step >= late_from)
        snaps.append(as_tensors(regression.snapshot()))
    return snaps


def step_lr():
    return pyroopt.StepLR(
        {"optimizer": torch.optim.Adam, "optim_args": {"lr": 0.05}, "step_size": 2, "gamma": 0.5}
    )


def plateau():
    return pyroopt.ReduceLROnPlateau(
        {"optimizer": torch.optim.Adam, "optim_args": {"lr": 0.05}, "patience": 0, "factor": 0.5}
    )


def reference_scheduled(optim, seed: int, steps: int, late_from: int | None = None) -> dict:
    """Single-process SVI on the full batch with one schedule step per SVI step."""
    regression._LATE_INIT[0] = 10.0
    pyro.clear_param_store()
    pyro.set_rng_seed(seed)
    x, y = regression.data()
    svi = SVI(regression.model, regression.guide, optim, Trace_ELBO())
    out: dict = {"params": [], "lrs": []}
    for step in range(1, steps + 1):
        loss = svi.step(x, y, None, late_from is not None and step >= late_from)
        if optim.pt_scheduler_constructor is torch.optim.lr_scheduler.ReduceLROnPlateau:
            optim.step(loss)  # the full-batch loss: the mean of the workers' losses
        else:
            optim.step()
        out["params"].append(as_tensors(regression.snapshot()))
        out["lrs"].append(optim.get_last_lr())
    return out


def reference_accumulated(calls: int, passes: int) -> list[dict]:
    """Full-batch training that sums the gradients of ``passes`` backward passes."""
    pyro.clear_param_store()
    pyro.set_rng_seed(2)
    x, y = regression.data()
    optim = pyroopt.Adam({"lr": 0.05})
    elbo = Trace_ELBO()
    snaps = []
    for call in range(1, calls + 1):
        with pyro.poutine.trace(param_only=True) as tr:
            elbo.loss_and_grads(regression.model, regression.guide, x, y, None, False)
        params = [site["value"].unconstrained() for site in tr.trace.nodes.values()]
        if call % passes == 0:  # autograd has summed the passes into p.grad
            optim(params)
            for p in params:
                p.grad = None
        snaps.append(as_tensors(regression.snapshot()))
    return snaps


@pytest.mark.distributed
@pytest.mark.parametrize("backend", BACKENDS)
def test_svi_matches_full_batch_and_ranks_agree(runs, backend):
    r0, r1 = runs(backend, "main")
    assert r0["size"] == r1["size"] == 2
    # identical on both ranks after every step, bit for bit
    assert r0["svi_params"] == r1["svi_params"]
    # equal to single-process training on the full batch, including the parameter
    # that appears on step 3
    reference = reference_svi(8, late_from=3, late_init=10.0)
    for step, (got, want) in enumerate(zip(r0["svi_params"], reference, strict=True), 1):
        assert sorted(got) == sorted(want), step
        assert_close(as_tensors(got), want, **REF_TOL, msg=f"step {step}")


@pytest.mark.distributed
@pytest.mark.parametrize("backend", BACKENDS)
def test_new_parameter_is_broadcast_from_rank0(runs, backend):
    r0, r1 = runs(backend, "main")
    # rank 0 starts "late" at 10, rank 1 at 20: rank 0's value wins and stays in sync
    assert r0["late_params"] == r1["late_params"]
    assert "late" not in r0["late_params"][1]
    assert r0["late_params"][2]["late"] == pytest.approx([10.0 - 0.05] * 2)  # Adam's 1st step
    assert r0["late_warnings"] == []
    # rank 1 is told that its first gradient was taken at its own value
    assert len(r1["late_warnings"]) == 1
    assert "different value on this worker" in r1["late_warnings"][0]


@pytest.mark.distributed
@pytest.mark.parametrize("backend", BACKENDS)
def test_one_collective_per_steady_step(runs, backend):
    r0, r1 = runs(backend, "main")
    for r in (r0, r1):
        # step 1 and step 3 (a new parameter) agree on names and broadcast values;
        # every other step is a single collective
        assert r["svi_collectives"] == [4, 1, 4, 1, 1, 1, 1, 1]
        # with 2 backward passes per step, odd calls only accumulate
        assert r["accumulate_collectives"] == [0, 4, 0, 1]
    if backend == "horovod":
        # pyro.optim's HorovodOptimizer: one allreduce per parameter (4 here)
        assert r0["pyro_collectives"] == [4, 4, 4]


@pytest.mark.distributed
@pytest.mark.parametrize("backend", BACKENDS)
def test_checkpoint_on_rank0_resumes_exactly(runs, backend):
    r0, r1 = runs(backend, "main")
    for r in (r0, r1):
        assert r["resumed"] == r["straight"]
    out = Path(r0["_out"])
    assert (out / "optim_r0.pt").exists()
    assert not (out / "optim_r1.pt").exists()  # save() writes on rank 0 only


@pytest.mark.distributed
@pytest.mark.parametrize("backend", BACKENDS)
def test_reduction_variants(runs, backend):
    r0, r1 = runs(backend, "main")
    assert r0["variants"] == r1["variants"]
    v = r0["variants"]
    # SGD(lr=1) on gradients 1 (rank 0) and 2 (rank 1) for v; 2 on rank 0 only for u
    for label in ("average", "predivide", *(("fp16",) if backend == "horovod" else ())):
        assert v[label]["v"] == [-1.5] * 3, label
        assert v[label]["u"] == [-1.0] * 2, label
    assert v["sum"]["v"] == [-3.0] * 3
    assert v["sum"]["u"] == [-2.0] * 2
    for label in v:  # no worker had a gradient for z: not stepped, no state
        assert v[label]["z"] == [0.0]
        assert not v[label]["z_has_state"]


@pytest.mark.distributed
@pytest.mark.parametrize("backend", BACKENDS)
def test_gradient_accumulation_matches_summed_passes(runs, backend):
    r0, r1 = runs(backend, "main")
    assert r0["accumulate_params"] == r1["accumulate_params"]
    reference = reference_accumulated(4, passes=2)
    for call, (got, want) in enumerate(zip(r0["accumulate_params"], reference, strict=True), 1):
        assert_close(as_tensors(got), want, **REF_TOL, msg=f"call {call}")


@pytest.mark.distributed
@pytest.mark.parametrize("backend", BACKENDS)
def test_mismatched_parameters_raise_instead_of_hanging(runs, backend):
    r0, r1 = runs(backend, "mismatch")
    for r in (r0, r1):
        first, late, shaped = r["errors"]
        assert first is not None and "rank 1 has ['only_on_rank_1'], which rank 0 lacks" in first
        assert late is not None and "rank 1 lacks ['late'], which rank 0 has" in late
        assert shaped is not None
        assert "'shaped' is torch.float64[3] on rank 1 but torch.float64[2] on rank 0" in shaped
    assert r0["after"] == r1["after"]  # the workers could go on together


@pytest.mark.distributed
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    ("label", "make_schedule", "seed", "steps", "late_from"),
    [("step_lr", step_lr, 4, 6, 3), ("plateau_svi", plateau, 5, 8, None)],
)
def test_wrapped_schedule_matches_single_process(
    runs, backend, label, make_schedule, seed, steps, late_from
):
    r0, r1 = runs(backend, "schedules")
    got0, got1 = r0[label], r1[label]
    assert got0["params"] == got1["params"]  # bit for bit across ranks
    assert got0["lrs"] == got1["lrs"]
    reference = reference_scheduled(make_schedule(), seed, steps, late_from)
    assert got0["lrs"] == reference["lrs"]  # the same decisions as one process
    for step, (got, want) in enumerate(zip(got0["params"], reference["params"], strict=True), 1):
        assert_close(as_tensors(got), want, **REF_TOL, msg=f"{label} step {step}")
    lrs = [lr for step_lrs in got0["lrs"] for lr in step_lrs.values()]
    assert min(lrs) < 0.05  # the schedule did lower the lr
    # one collective per steady SVI step; a plateau step adds one for its metric
    assert got0["step_collectives"][1] == 1 and got0["step_collectives"][-1] == 1
    per_schedule_step = 1 if label == "plateau_svi" else 0
    assert got0["schedule_collectives"] == [per_schedule_step] * steps


@pytest.mark.distributed
@pytest.mark.parametrize("backend", BACKENDS)
def test_plateau_decides_on_the_mean_metric_alike_on_all_ranks(runs, backend):
    r0, r1 = runs(backend, "schedules")
    got0, got1 = r0["plateau_local_metrics"], r1["plateau_local_metrics"]
    assert got0["lrs"] == got1["lrs"] and got0["v"] == got1["v"]
    means = [(a + b) / 2 for a, b in zip(got0["metrics"], got1["metrics"], strict=True)]
    v = pyro.param("v", torch.zeros(2)).unconstrained()
    optim = plateau()
    want = []
    for mean in means:
        v.grad = torch.ones(2)
        optim([v])
        optim.step(mean)
        want.append(optim.get_last_lr()["v"])
    assert got0["lrs"] == want
    # rank 0's own falling metrics would never lower the lr; the rising mean does
    assert want[-1] < want[0] == 0.05
    wrong_call, wrong_metric, no_schedule = r0["schedule_errors"]
    assert "needs exactly the metric" in wrong_call
    assert "must be a real number or a one-element tensor, got str: 'low'" in wrong_metric
    assert "has none: wrap a pyroopt scheduler" in no_schedule
    assert r1["schedule_errors"] == r0["schedule_errors"]


@pytest.mark.distributed
def test_adasum_is_refused_naming_what_is_allowed(runs):
    r0, r1 = runs("horovod", "mismatch")
    for r in (r0, r1):
        assert "use hvd.Average or hvd.Sum" in r["adasum_wrapper"]
        # why: horovod built with gloo (no MPI) has no Adasum at all
        assert "No Adasum operation enabled" in r["adasum_horovod"]


def test_uninitialized_backends_raise():
    with pytest.raises(RuntimeError, match=r"torch.distributed is not initialized"):
        pyroopt.DistributedOptimizer(pyroopt.Adam({"lr": 0.1}))
    with pytest.raises(RuntimeError, match=r"horovod is not initialized"):
        pyroopt.HorovodOptimizer(pyroopt.Adam({"lr": 0.1}))


def test_shard_splits_contiguously():
    x = torch.arange(10)
    parts = [shard(x, rank=r, world_size=3) for r in range(3)]
    assert [p.tolist() for p in parts] == [[0, 1, 2, 3], [4, 5, 6], [7, 8, 9]]
    assert shard(5, rank=1, world_size=2) == range(3, 5)
    assert shard_bounds(1, 1, 2) == (1, 1)
    with pytest.raises(ValueError, match="rank"):
        shard(x, rank=2, world_size=2)


class Loopback(Collectives):
    """One worker talking to itself: every collective is the identity."""

    rank, size = 0, 1

    def __init__(self) -> None:
        self.reductions = 0

    def allreduce_(self, buffer, exact, name):
        self.reductions += 1

    def allgather_object(self, obj):
        return [obj]

    def broadcast_object(self, obj):
        return obj

    def broadcast_(self, flat):
        pass


def mixed_params() -> list[torch.Tensor]:
    """1-D, 2-D, 0-d, float32 and float64 parameters, names out of creation order."""
    specs = {
        "m": torch.zeros(2, 3),
        "a": torch.zeros(4),
        "s": torch.tensor(0.5),
        "f32": torch.zeros(3, dtype=torch.float32),
    }
    return [pyro.param(name, value).unconstrained() for name, value in specs.items()]


@pytest.mark.parametrize("leave_grads", [False, True], ids=["fresh grads", "grads accumulated"])
def test_one_worker_equals_the_local_optimizer(leave_grads):
    """Missing gradients, shapes, dtypes, gradients accumulated into the last step's
    p.grad: the wrapper on one worker steps exactly as the optimizer it wraps."""
    gen = torch.Generator().manual_seed(0)
    grads = [
        [torch.randn(p.shape, generator=gen, dtype=torch.float64) for p in mixed_params()]
        for _ in range(5)
    ]
    finals = []
    for wrap in (False, True):
        pyro.clear_param_store()
        params = mixed_params()
        comm = Loopback()
        local = pyroopt.Adam({"lr": 0.1})
        optim = DistributedPyroOptim(local, comm) if wrap else local
        for step, step_grads in enumerate(grads):
            for i, (p, g) in enumerate(zip(params, step_grads, strict=True)):
                if (step + i) % 3 == 2:
                    p.grad = None  # sometimes no gradient
                elif leave_grads and p.grad is not None:
                    p.grad.add_(g.to(p.dtype))  # as autograd accumulates, in place
                else:
                    p.grad = g.to(p.dtype).clone()
            optim(params)
        finals.append([p.detach().clone() for p in params])
        if wrap:
            assert comm.reductions == 1 + len(grads)  # agreeing on step 1, then one each
    for got, want in zip(finals[1], finals[0], strict=True):
        assert_close(got, want, rtol=0, atol=0)


def test_sparse_gradients_are_refused():
    p = pyro.param("p", torch.zeros(3)).unconstrained()
    optim = DistributedPyroOptim(pyroopt.Adam({"lr": 0.1}), Loopback())
    p.grad = torch.ones(3)
    optim([p])
    p.grad = torch.ones(3).to_sparse()
    with pytest.raises(ValueError, match="sparse gradients"):
        optim([p])


def test_schedule_step_errors_name_the_problem():
    p = pyro.param("p", torch.zeros(3)).unconstrained()
    plain = DistributedPyroOptim(pyroopt.Adam({"lr": 0.1}), Loopback())
    with pytest.raises(TypeError, match="wrapped optimizer PyroOptim has none"):
        plain.step()
    optim = DistributedPyroOptim(plateau(), Loopback())
    p.grad = torch.ones(3)
    optim([p])
    with pytest.raises(TypeError, match="got a tensor of shape \\(2,\\)"):
        optim.step(torch.ones(2))
    with pytest.raises(TypeError, match="got bool"):
        optim.step(True)
    with pytest.raises(TypeError, match="needs exactly the metric"):
        optim.step(1.0, 2.0)
    optim.step(metrics=torch.tensor(3.0))  # the keyword torch uses works too
    assert optim.get_last_lr() == {"p": 0.05}


# -- a worker killed mid-run under torchrun, resumed from save_training checkpoints ---

FAULT_STEPS, FAULT_EVERY, FAULT_KILL_AT, FAULT_WARMUP = 30, 5, 18, 2


def torchrun_fault_job(out: Path, *job_args: str) -> subprocess.Popen:
    """Start tests/distributed_jobs/fault.py on 2 workers, restartable once.

    The rendezvous is c10d on 127.0.0.1 port 0: the agent's store binds a free port
    itself (no probing for one, no race with other runs on this host).
    """
    cmd = [launcher("torchrun"), "--nproc_per_node", "2", "--max-restarts", "1"]
    cmd += ["--rdzv-backend", "c10d", "--rdzv-endpoint", "127.0.0.1:0"]
    cmd += ["--rdzv-id", f"fault-{os.getpid()}-{out.name}", "--monitor-interval", "0.1"]
    cmd += [str(JOBS / "fault.py"), str(out), *job_args]  # run by sys.executable
    out.mkdir(parents=True)
    return subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )


def finish(proc: subprocess.Popen, what: str, timeout: float) -> str:
    """Wait for ``proc``; fail on a hang or an error exit; return its stderr."""
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        stdout, stderr = proc.communicate()
        pytest.fail(f"{what} hung for {timeout} s:\n{stdout[-2000:]}\n{stderr[-3000:]}")
    assert proc.returncode == 0, f"{what}:\n{stdout[-2000:]}\n{stderr[-5000:]}"
    return stderr


@pytest.fixture(scope="module")
def fault_runs(tmp_path_factory):
    """An uninterrupted run and a run whose rank 1 SIGKILLs itself, launched together."""
    root = tmp_path_factory.mktemp("fault")
    common = ["--steps", str(FAULT_STEPS), "--every", str(FAULT_EVERY)]
    common += ["--warmup", str(FAULT_WARMUP)]
    straight = torchrun_fault_job(root / "straight", *common)
    killed = torchrun_fault_job(root / "killed", *common, "--kill-at", str(FAULT_KILL_AT))
    try:
        stderr = {
            "straight": finish(straight, "the uninterrupted fault job", timeout=150),
            "killed": finish(killed, "the killed and restarted fault job", timeout=150),
        }
    finally:
        for proc in (straight, killed):  # one failed: leave no launcher behind
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.communicate()
    return root, stderr


def read_losses(path: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in map(json.loads, path.read_text().splitlines())}


def assert_state_equal(got, want, where: str) -> None:
    """Nested dicts/lists/tuples of tensors and plain values, tensors by torch.equal."""
    if isinstance(want, torch.Tensor):
        assert isinstance(got, torch.Tensor) and got.dtype == want.dtype, where
        assert torch.equal(got, want), f"{where}: {got.tolist()} != {want.tolist()}"
    elif isinstance(want, dict):
        assert isinstance(got, dict) and sorted(got, key=str) == sorted(want, key=str), where
        for key in want:
            assert_state_equal(got[key], want[key], f"{where}[{key!r}]")
    elif isinstance(want, (list, tuple)):
        assert type(got) is type(want) and len(got) == len(want), where
        for i, (g, w) in enumerate(zip(got, want, strict=True)):
            assert_state_equal(g, w, f"{where}[{i}]")
    else:
        assert got == want, f"{where}: {got!r} != {want!r}"


@pytest.mark.distributed
@pytest.mark.slow
@pytest.mark.parametrize("mode", ["fresh", "warm", "rollback"])
def test_killed_worker_resumes_bit_identical(fault_runs, mode):
    """A worker lost mid-run under torchrun costs nothing but time.

    Two float32 SVI runs of tests/distributed_jobs/fault.py on 2 gloo workers
    (``DistributedOptimizer(Adam)``, 30 steps, ``save_training`` by rank 0 after every
    5th step, then a barrier), launched with ``torchrun --max-restarts 1``: one straight
    through, one whose rank 1 SIGKILLs itself before step 18 of the first attempt
    (``TORCHELASTIC_RESTART_COUNT == 0``). torchrun restarts both workers; rank 0 finds
    the newest checkpoint (step 15: the barrier guarantees it was complete before any
    worker began step 16, and it is atomic) and every worker ``load_training``s it
    into an optimizer that is

    - ``fresh``: just built;
    - ``warm``: built and stepped twice on a fresh param store first;
    - ``rollback``: the ``fresh`` one again, after it ran on to step 30 (Adam step 30).

    Proves, for each: the parameters and the whole optimizer state (Adam's step,
    moments, param groups) after step 30 equal the uninterrupted run's bit for bit
    (torch.equal) on both ranks; the losses of steps 16..30 equal the uninterrupted
    run's (so the restored generators draw the same guide samples), including steps
    16 and 17, which the first attempt took before the kill; nothing depends on timing
    but the kill point, a step count. Every checkpoint also asserts that both ranks'
    generators agree (save_training stores rank 0's for all). Neither launch's stderr
    holds a ``terminate called`` line (a C++ abort at exit).
    """
    root, stderr = fault_runs
    straight, killed = root / "straight", root / "killed"
    for what, text in stderr.items():
        assert "terminate called" not in text, f"{what}:\n{text[-3000:]}"
    # the kill happened, in the first attempt only, and the restart resumed at 15
    assert "exitcode: -9" in stderr["killed"]
    for rank in (0, 1):
        summary = json.loads((killed / f"summary_r{rank}.json").read_text())
        assert summary["attempt"] == 1 and summary["resumed_from"] == 15
        before = summary["before_load"][mode]
        if mode == "warm":
            assert set(before.values()) == {float(FAULT_WARMUP)}, before
        elif mode == "rollback":
            assert set(before.values()) == {float(FAULT_STEPS)}, before
        straight_summary = json.loads((straight / f"summary_r{rank}.json").read_text())
        assert straight_summary["attempt"] == 0 and straight_summary["resumed_from"] == 0
    assert sorted(p.name for p in (killed / "ckpt").iterdir()) == [
        f"step_{s:04d}.pt" for s in range(FAULT_EVERY, FAULT_STEPS + 1, FAULT_EVERY)
    ]

    want0 = torch.load(straight / "final_straight_r0.pt", weights_only=False)
    for rank in (0, 1):
        want = torch.load(straight / f"final_straight_r{rank}.pt", weights_only=False)
        got = torch.load(killed / f"final_{mode}_r{rank}.pt", weights_only=False)
        assert_state_equal(want, want0, f"straight rank {rank} vs rank 0")
        assert all(p.dtype == torch.float32 for p in want["params"].values())
        assert_state_equal(got["params"], want["params"], f"{mode} r{rank} params")
        assert_state_equal(got["optimizer"], want["optimizer"], f"{mode} r{rank} optimizer")

        reference = read_losses(straight / f"losses_a0_straight_r{rank}.jsonl")
        assert sorted(reference) == list(range(1, FAULT_STEPS + 1))
        first = read_losses(killed / f"losses_a0_straight_r{rank}.jsonl")
        assert sorted(first) == list(range(1, FAULT_KILL_AT))  # killed before step 18
        assert first == {s: reference[s] for s in first}
        resumed = read_losses(killed / f"losses_a1_{mode}_r{rank}.jsonl")
        assert resumed == {s: reference[s] for s in range(16, FAULT_STEPS + 1)}
