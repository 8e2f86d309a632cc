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
from pyroopt.distributed import shard, shard_bounds

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
        first, late = r["errors"]
        assert first is not None and "rank 1 has ['only_on_rank_1'], which rank 0 lacks" in first
        assert late is not None and "rank 1 lacks ['late'], which rank 0 has" in late
    assert r0["after"] == r1["after"]  # the workers could go on together


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
