"""pyroopt on CUDA against pyro.optim on CUDA.

Runs only where ``torch.cuda.is_available()``; elsewhere the whole module is one skip.
Every parameter of these programs is created on ``cuda`` (the ``_on_cuda`` fixture
sets torch's default device), gradients are computed there, and nothing is moved.

What is asserted bit for bit (``torch.equal``), and why:

* Every factory of ``tests/test_optim.py``'s ``CASES`` (and Muon, Adafactor,
  SparseAdam), float32 and float64, 100 steps with late and skipped parameters.
  On CUDA pyro.optim builds one torch optimizer per parameter and torch defaults those
  to its ``foreach`` path (a list of one tensor); pyroopt's rules run their chain of
  ``torch._foreach_*`` ops over many tensors (the native C loops are CPU only) and its
  TorchBuckets run one torch optimizer over many tensors, also ``foreach``. The
  multi-tensor CUDA kernels compute each element on its own, with the same functor
  whatever else is in the list, and the per-step coefficients are the same Python
  floats, so each element sees the same operations in the same order: bitwise.
  ``fused=True`` cases are torch's fused kernels in both: elementwise, bitwise.
* Clipping by norm (``clip_norm``): a reduction, but one per gradient in both.
  pyro.optim's ``clip_grad_norm_`` takes ``torch._foreach_norm`` of a list of one
  gradient; pyroopt takes it of all gradients at once. The CUDA foreach norm splits each
  tensor into chunks by that tensor's own size and reduces its partials separately, so
  the norm of a gradient does not depend on its neighbours in the list: asserted
  bitwise. (``clip_global_norm`` has no pyro.optim counterpart and is not compared.)
* The lr schedules, checkpoints moved CPU <-> CUDA (``map_location`` copies the bytes),
  mixed CPU/CUDA parameters (the CPU bucket runs pyroopt's CPU path, which
  ``tests/test_optim.py`` already holds bitwise to pyro.optim; the CUDA bucket as above).

Where bitwise is asserted but not certain -- the GPU run decides, and a failure there
means "torch's two CUDA code paths round differently", not a wrong update:

* pyro's own optimizers ``ClippedAdam`` and ``AdagradRMSProp`` (and ``DCTAdam``'s
  per-tensor ops) run per-tensor ops (``Tensor.addcmul_``, ``Tensor.mul_`` ...) even on
  CUDA, while pyroopt's rules for them run ``torch._foreach_*``. The single-tensor
  and multi-tensor CUDA kernels are different compiled code: where nvcc contracts
  ``a + alpha * b * c`` into an FMA differently in the two (``addcmul``), the last bit
  can differ.
* SGD with momentum: torch's ``foreach`` SGD clones the first momentum buffer; pyroopt
  mirrors that op for op, so bitwise is expected.

Not compared bitwise: nothing else here compares numbers across implementations; the
seating, sync-count and device tests assert placement and counts, not values.
"""

from __future__ import annotations

import warnings

import pyro
import pyro.optim
import pytest
import torch

if not torch.cuda.is_available():
    pytest.skip(
        "CUDA tests: no CUDA device on this machine (torch.cuda.is_available() is False)",
        allow_module_level=True,
    )

from programs import Program, fresh_store, run
from test_lr_scheduler import CASES as SCHEDULE_CASES
from test_lr_scheduler import assert_same_history, run_schedule
from test_optim import BOUNDARY_SHAPES, CASES, assert_same_trajectory, both

import pyroopt
from pyroopt import checkpoint
from pyroopt.seating import _same_storage

CUDA = torch.device("cuda", torch.cuda.current_device())
DTYPES = pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])


@pytest.fixture(autouse=True)
def _on_cuda():
    """Create every tensor of a test on the GPU (Program's ``torch.linspace`` included)."""
    before = torch.get_default_device()
    torch.set_default_device(CUDA)
    yield
    torch.set_default_device(before)
    torch.cuda.synchronize()


def _assert_on_cuda(trajectory):
    for name, value in trajectory[-1].items():
        assert value.device.type == "cuda", name


# -- every factory against pyro.optim ---------------------------------------------------
@DTYPES
@pytest.mark.parametrize("name,args", CASES, ids=[f"{n}-{i}" for i, (n, _) in enumerate(CASES)])
def test_factory_matches_pyro_optim_on_cuda(name, args, dtype):
    torch.set_default_dtype(dtype)
    program = Program(shapes=BOUNDARY_SHAPES, appears_at={"late": 40})
    expected, actual = both(name, args, steps=100, program=program)
    _assert_on_cuda(actual)
    assert_same_trajectory(expected, actual)


@DTYPES
def test_clip_norm_and_value_match_pyro_optim_on_cuda(dtype):
    torch.set_default_dtype(dtype)
    program = Program(shapes=BOUNDARY_SHAPES, appears_at={"late": 40}, no_grad_at={})
    for clip in ({"clip_norm": 0.3}, {"clip_value": 0.2}, {"clip_norm": 0.3, "clip_value": 0.2}):
        expected, actual = both("Adam", {"lr": 0.05}, clip, steps=100, program=program)
        assert_same_trajectory(expected, actual)


def test_muon_adafactor_sparse_adam_match_pyro_optim_on_cuda():
    runs = [
        ("Muon", {"lr": 0.02}, Program(shapes={"w1": (4, 3), "w2": (3, 5)}, no_grad_at={})),
        ("Adafactor", {"lr": 0.05}, Program(shapes={"a": (3,), "w": (2, 3), "late": (4,)})),
        ("SparseAdam", {"lr": 0.05}, Program(shapes={"emb": (5, 3)}, no_grad_at={}, sparse=True)),
    ]
    for name, args, program in runs:
        expected, actual = both(name, args, steps=100, program=program)
        _assert_on_cuda(actual)
        assert_same_trajectory(expected, actual)


# -- seating and flat buffers ------------------------------------------------------------
@DTYPES
def test_parameters_are_seated_in_a_cuda_buffer(dtype):
    torch.set_default_dtype(dtype)
    fresh_store()
    optim = pyroopt.Adam({"lr": 0.05})
    shapes = {"a": (3,), "b": (2, 3), "c": ()}
    for i, (name, shape) in enumerate(shapes.items()):
        # parameters of their own storage: Program's are views of a linspace (their
        # ``_base`` holds it), which pyroopt rightly refuses to move into a buffer
        pyro.param(name, torch.full(shape, 0.5 + i))
    program = Program(shapes=shapes, no_grad_at={}, not_passed_at={})
    run(lambda: optim, 3, program)
    (bucket,) = optim._placement.buckets
    assert bucket.device == CUDA and bucket.dtype == dtype
    values = bucket._values
    assert values is not None, "small parameters should run on flat buffers"
    assert values.buffer.device == CUDA and values.buffer.dtype == dtype
    params = [pyro.get_param_store().get_param(n).unconstrained() for n in ("a", "b", "c")]
    assert {id(p) for p in values.seated} == {id(p) for p in params}
    for p in params:
        assert p.data.device == CUDA and p.grad.device == CUDA
        assert _same_storage(p, values.buffer)
    for flat in bucket._flat.values():
        assert flat.device == CUDA and flat.dtype == dtype
    values.buffer.zero_()  # writing the buffer writes the parameters
    assert all(not p.detach().any() for p in params)


# -- checkpoints across devices ----------------------------------------------------------
def _tensors(state):
    for entry in state.values():
        for value in entry["state"].get(0, {}).values():
            if isinstance(value, torch.Tensor):
                yield value


def test_checkpoint_saved_on_cuda_loads_on_cpu_and_back(tmp_path):
    fresh_store()
    straight = run(lambda: pyro.optim.Adam({"lr": 0.05}), 15)
    fresh_store()
    first = pyroopt.Adam({"lr": 0.05})
    head = run(lambda: first, 8)
    first.save(tmp_path / "cuda.pt")
    assert any(t.device.type == "cuda" for t in _tensors(first.get_state()))
    # read on the CPU: every tensor lands there; written back from there
    on_cpu = checkpoint.load_state(tmp_path / "cuda.pt", map_location="cpu")
    assert all(t.device.type == "cpu" for t in _tensors(on_cpu))
    checkpoint.save_state(on_cpu, tmp_path / "cpu.pt")
    # and back on CUDA: the trajectory goes on as if never interrupted
    second = pyroopt.Adam({"lr": 0.05})
    second.load(tmp_path / "cpu.pt", map_location=CUDA)
    tail = run(lambda: second, 7, start=8, optim=second)
    assert_same_trajectory(straight, head + tail)
    # a CPU state loaded without map_location: copied onto the parameters' device
    fresh_store()
    head = run(lambda: pyroopt.Adam({"lr": 0.05}), 8)
    third = pyroopt.Adam({"lr": 0.05})
    third.load(tmp_path / "cpu.pt")
    tail = run(lambda: third, 7, start=8, optim=third)
    assert_same_trajectory(straight, head + tail)
    assert all(t.device.type == "cuda" for t in _tensors(third.get_state()) if t.numel() > 1)


def test_cpu_checkpoint_steps_cuda_parameters(tmp_path):
    # state from a CPU run applied to the same parameters created on CUDA
    with torch.device("cpu"):
        fresh_store()
        first = pyroopt.Adam({"lr": 0.05})
        run(lambda: first, 6)
        first.save(tmp_path / "cpu.pt")
        values = {k: v.detach().clone() for k, v in pyro.get_param_store().items()}
    fresh_store()
    for name, value in values.items():
        pyro.param(name, value.to(CUDA))
    second = pyroopt.Adam({"lr": 0.05})
    second.load(tmp_path / "cpu.pt")  # no map_location: the state is on the CPU
    after = run(lambda: second, 3, start=6, optim=second)
    for bucket in second._placement.buckets:
        assert bucket.device == CUDA
        for flat in getattr(bucket, "_flat", {}).values():
            assert flat.device == CUDA
    assert all(v.device == CUDA and v.isfinite().all() for v in after[-1].values())


# -- CPU and CUDA parameters in one optimizer --------------------------------------------
class MixedProgram(Program):
    """``Program`` with the parameters in ``on_cpu`` created on the CPU."""

    on_cpu = frozenset({"a", "late"})

    def params_at(self, step):
        for name in self.on_cpu:
            if step >= self.appears_at.get(name, 0) and name not in pyro.get_param_store():
                i = list(self.shapes).index(name)
                n = int(torch.Size(self.shapes[name]).numel())
                init = torch.linspace(-1.0, 1.0, n, device="cpu") + 0.1 * i
                pyro.param(name, init.reshape(self.shapes[name]))
        return super().params_at(step)


@DTYPES
@pytest.mark.parametrize("name,args", [("Adam", {"lr": 0.05}), ("NAdam", {"lr": 0.05})])
def test_mixed_cpu_and_cuda_parameters(name, args, dtype):
    torch.set_default_dtype(dtype)
    expected, actual = both(name, args, steps=30, program=MixedProgram())
    assert_same_trajectory(expected, actual)
    for n, value in actual[-1].items():
        assert value.device.type == ("cpu" if n in MixedProgram.on_cpu else "cuda"), n
    fresh_store()
    optim = getattr(pyroopt, name)(args)
    run(lambda: optim, 10, MixedProgram())
    assert {b.device.type for b in optim._placement.buckets} == {"cpu", "cuda"}


@pytest.mark.parametrize("clip", [{"clip_norm": 0.3}, {"skip_nonfinite": True}])
def test_mixed_devices_with_clipping_or_skipping(clip):
    # per-parameter norms of CPU and CUDA gradients are gathered in one list
    program = MixedProgram(no_grad_at={})
    fresh_store()
    if "skip_nonfinite" in clip:
        expected = run(lambda: pyro.optim.Adam({"lr": 0.05}), 10, program)
    else:
        expected = run(lambda: pyro.optim.Adam({"lr": 0.05}, clip), 10, program)
    fresh_store()
    actual = run(lambda: pyroopt.Adam({"lr": 0.05}, clip), 10, program)
    assert_same_trajectory(expected, actual)


# -- skip_nonfinite: one host sync per step, not one per parameter --------------------------
@DTYPES
def test_skip_nonfinite_syncs_at_most_once_per_step(dtype):
    torch.set_default_dtype(dtype)
    fresh_store()
    shapes = {f"p{i}": (7 + i,) for i in range(40)}
    program = Program(shapes=shapes, appears_at={}, not_passed_at={}, no_grad_at={})
    optim = pyroopt.Adam({"lr": 0.05}, skip_nonfinite=True)
    run(lambda: optim, 2, program)  # warm up: buckets and flat buffers made
    torch.cuda.synchronize()
    for step in range(2, 8):
        params = program.params_at(step)
        if step == 5:
            with torch.no_grad():
                params[3].grad[0] = float("nan")
        before = {id(p): p.detach().clone() for p in params}
        torch.cuda.synchronize()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                optim(set(params))
            finally:
                torch.cuda.set_sync_debug_mode("default")
        syncs = [w for w in caught if "synchroniz" in str(w.message).lower()]
        assert len(syncs) <= 1, f"step {step}: {len(syncs)} syncs: {syncs[:3]}"
        moved = [not torch.equal(before[id(p)], p.detach()) for p in params]
        assert (not any(moved)) if step == 5 else all(moved), step
    assert optim.skipped_steps == 1


def test_without_skip_nonfinite_a_step_does_not_sync():
    fresh_store()
    shapes = {f"p{i}": (5 + i,) for i in range(20)}
    program = Program(shapes=shapes, appears_at={}, not_passed_at={}, no_grad_at={})
    optim = pyroopt.Adam({"lr": 0.05})
    run(lambda: optim, 2, program)
    params = program.params_at(2)
    torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            optim(set(params))
        finally:
            torch.cuda.set_sync_debug_mode("default")
    syncs = [w for w in caught if "synchroniz" in str(w.message).lower()]
    assert not syncs, syncs[:3]


# -- lr schedules ------------------------------------------------------------------------
@DTYPES
@pytest.mark.parametrize(
    "name,cls,kwargs",
    [c for c in SCHEDULE_CASES if c[0] in ("StepLR", "ExponentialLR", "OneCycleLR", "CyclicLR")],
    ids=lambda v: v if isinstance(v, str) else getattr(v, "__name__", None),
)
def test_schedule_matches_pyro_optim_on_cuda(name, cls, kwargs, dtype):
    torch.set_default_dtype(dtype)
    fresh_store()
    _, expected = run_schedule(pyro.optim, name, cls, kwargs)
    fresh_store()
    _, actual = run_schedule(pyroopt, name, cls, kwargs)
    assert_same_history(expected, actual)
    assert all(v.device.type == "cuda" for v in actual[-1][1].values())
