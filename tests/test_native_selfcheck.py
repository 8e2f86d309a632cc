"""The native loops' self-check (pyroopt.native.selfcheck): a loop that rounds one element
differently from torch is turned off, with the reason, and pyroopt's numbers stay
pyro.optim's; the verdict is kept per machine and build, and costs nothing per call."""

from __future__ import annotations

import ctypes
import math
import platform
import re
import subprocess
import sys
from pathlib import Path

import pyro.optim
import pytest
import torch
from programs import Program, fresh_store, run

import pyroopt
from pyroopt import native
from pyroopt.native import (
    _entry,
    _newton_root,
    adagrad,
    adagrad_rmsprop,
    adam,
    rmsprop,
    rprop,
    selfcheck,
    sgd,
)

#: every wrapper's cached lookup of its C function
LOOKUPS = (
    adam._adam_function,
    adam._clipped_function,
    sgd._function,
    rmsprop._function,
    rprop._function,
    adagrad._function,
    adagrad_rmsprop._function,
)
_UNSIGNED = {torch.float32: ctypes.c_uint32, torch.float64: ctypes.c_uint64}


def _forget_lookups():
    for lookup in LOOKUPS:
        lookup.cache_clear()


@pytest.fixture
def verdicts(monkeypatch, tmp_path):
    """Verdicts kept in ``tmp_path`` (none remembered yet), and every wrapper's lookup
    made afresh, before the test and after it."""
    monkeypatch.setattr(
        selfcheck, "verdict_path", lambda name, dtype: tmp_path / f"{name}-{dtype}.txt"
    )
    monkeypatch.setattr(selfcheck, "_VERDICTS", {})
    _forget_lookups()
    yield tmp_path
    _forget_lookups()


class OneUlpOff:
    """The real C loop, then (``perturb``) the last element of the last tensor of the call
    one unit in the last place off: a loop that rounds one tail element differently."""

    def __init__(self, function, dtype, perturb=True):
        self.function = function
        self.unsigned = _UNSIGNED[dtype]
        self.perturb = perturb
        self.calls = 0

    def __call__(self, args):
        parts = self.function(args)
        self.calls += 1
        n, params, numels = args.n_tensors, args.params, args.numels
        if self.perturb and n and numels[n - 1]:
            # the last element of the call that holds a number (the check lets any NaN
            # stand for any NaN, so a NaN's bits are no test of it)
            size = ctypes.sizeof(self.unsigned)
            real = ctypes.c_float if size == 4 else ctypes.c_double
            for index in reversed(range(numels[n - 1])):
                address = params[n - 1] + index * size
                if not math.isnan(real.from_address(address).value):
                    self.unsigned.from_address(address).value ^= 1
                    break
        return parts


@pytest.fixture
def substitute(monkeypatch):
    """``substitute(name, dtype, perturb)``: the library's loop ``name`` in ``dtype``
    becomes a :class:`OneUlpOff` of itself, for the self-check and for every caller."""
    real = _entry.unchecked
    made = {}

    def unchecked(spec, dtype):
        function = real(spec, dtype)
        return made.get((spec.name, dtype), function) if function is not None else None

    def make(name, dtype, perturb=True):
        made[name, dtype] = OneUlpOff(real(selfcheck.LOOPS[name].spec, dtype), dtype, perturb)
        return made[name, dtype]

    monkeypatch.setattr(_entry, "unchecked", unchecked)
    return make


def _both(name, args, program, steps=8):
    """Trajectories of pyro.optim's and pyroopt's ``name`` on ``program``."""
    out = []
    for module in (pyro.optim, pyroopt):
        fresh_store()
        factory = getattr(module, name)
        out.append(run(lambda f=factory: f(args), steps, program))
    return out


#: (factory, its arguments, the loop its rule runs)
ENGINE_CASES = [
    ("Adam", {"lr": 0.05}, adam.ADAM_LOOP),
    ("SGD", {"lr": 0.05, "momentum": 0.9}, sgd.LOOP),
    ("RMSprop", {"lr": 0.01, "centered": True}, rmsprop.LOOP),
    ("Rprop", {"lr": 0.01}, rprop.LOOP),
    ("Adagrad", {"lr": 0.1}, adagrad.LOOP),
    ("ClippedAdam", {"lr": 0.05, "clip_norm": 0.5}, adam.CLIPPED_LOOP),
    ("AdagradRMSProp", {"eta": 0.5}, adagrad_rmsprop.LOOP),
]
IDS = [name for name, _, _ in ENGINE_CASES]
#: sizes with vector bodies and tails, and one parameter that joins late
PROGRAM = Program(
    shapes={"a": (3,), "w": (17, 61), "b": (7,), "late": (1037,)}, appears_at={"late": 3}
)


def test_the_library_is_here():
    assert native.library() is not None, native.unavailable_reason()


@pytest.mark.parametrize("name, args, loop", ENGINE_CASES, ids=IDS)
def test_a_loop_one_ulp_off_is_turned_off_and_the_numbers_stay_torchs(
    verdicts, substitute, name, args, loop
):
    torch.set_default_dtype(torch.float32)
    perturbed = substitute(loop, torch.float32)
    reason = selfcheck.reason_off(loop, torch.float32)
    # the first difference is the perturbed element: the last number of the 1031-element
    # tensor (its last element, or the one before where that is a NaN), in the check's
    # first (plain) option variant, one bit apart
    assert reason is not None and reason.startswith(f"{loop}_f32 differs from ")
    found = re.search(
        r"at step 1 on 1 thread, tensor 6 \(1031 elements\), param\[10(30|29)\]: "
        r"ours \S+ \((0x[0-9a-f]{8})\), torch's \S+ \((0x[0-9a-f]{8})\)$",
        reason,
    )
    assert found, reason
    assert int(found[2], 16) ^ int(found[3], 16) == 1
    assert (verdicts / f"{loop}-{torch.float32}.txt").read_text().strip() == reason
    in_check = perturbed.calls
    assert in_check > 0

    expected, actual = _both(name, args, PROGRAM)
    for step, (e, a) in enumerate(zip(expected, actual, strict=True)):
        for key in e:
            assert a[key].dtype == torch.float32
            assert torch.equal(a[key], e[key]), f"{key}@{step}"
    assert perturbed.calls == in_check  # the engine ran the chain, never the loop


@pytest.mark.parametrize("name, args, loop", ENGINE_CASES, ids=IDS)
def test_a_loop_that_passes_its_check_is_the_one_that_runs(verdicts, substitute, name, args, loop):
    """The control: the same loop, not perturbed, runs in the engine exactly when its
    self-check passed (here: unless it differs from torch on this machine)."""
    torch.set_default_dtype(torch.float32)
    counted = substitute(loop, torch.float32, perturb=False)
    reason = selfcheck.reason_off(loop, torch.float32)
    in_check = counted.calls
    expected, actual = _both(name, args, PROGRAM)
    for e, a in zip(expected, actual, strict=True):
        assert all(torch.equal(a[key], e[key]) for key in e)
    assert (counted.calls > in_check) == (reason is None), reason


def test_a_turned_off_loop_declines_and_changes_nothing(verdicts, substitute):
    substitute(adam.ADAM_LOOP, torch.float32)
    params, grads = [torch.ones(5, dtype=torch.float32)], [torch.ones(5, dtype=torch.float32)]
    state = [torch.zeros(5, dtype=torch.float32) for _ in range(2)]
    options = {"betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0.0, "decoupled": False}
    done = adam.adam_update(
        params, grads, *state, [], [1], lr=0.1, **options, amsgrad=False, maximize=False
    )
    assert not done and adam._adam_function(torch.float32) is None
    assert torch.equal(params[0], torch.ones(5, dtype=torch.float32))
    # the other dtype is a loop of its own
    assert (adam._adam_function(torch.float64) is None) == (
        selfcheck.reason_off(adam.ADAM_LOOP, torch.float64) is not None
    )


def test_the_check_costs_nothing_per_call_after_the_first_lookup(verdicts, monkeypatch):
    params, grads, prevs, sizes = ([torch.ones(4)] for _ in range(4))
    args = {"lr": 0.01, "etas": (0.5, 1.2), "step_sizes": (1e-6, 50.0), "maximize": False}
    rprop.rprop_update(params, grads, prevs, sizes, [True], **args)
    asked = []
    monkeypatch.setattr(selfcheck, "reason_off", lambda *a: asked.append(a))
    monkeypatch.setattr(native, "verdict_path", lambda *a: asked.append(a))
    for _ in range(3):
        rprop.rprop_update(params, grads, prevs, sizes, [False], **args)
    assert asked == []


def test_a_kept_verdict_is_read_not_checked_again(verdicts, monkeypatch):
    runs = []

    def check(loop, dtype, function):
        runs.append((loop.name, dtype))
        return "pyroopt_sgd_f64 differs from a test"

    monkeypatch.setattr(selfcheck, "check", check)
    assert selfcheck.reason_off(sgd.LOOP, torch.float64) == "pyroopt_sgd_f64 differs from a test"
    monkeypatch.setattr(selfcheck, "_VERDICTS", {})  # a new process
    assert selfcheck.reason_off(sgd.LOOP, torch.float64) == "pyroopt_sgd_f64 differs from a test"
    assert runs == [(sgd.LOOP, torch.float64)]
    assert sgd._function(torch.float64) is None


def test_a_check_that_cannot_run_turns_the_loop_off_in_this_process_only(verdicts, monkeypatch):
    def check(loop, dtype, function):
        raise RuntimeError("torch moved")

    monkeypatch.setattr(selfcheck, "check", check)
    reason = selfcheck.reason_off(sgd.LOOP, torch.float32)
    assert reason == f"the self-check of {sgd.LOOP} could not run: RuntimeError('torch moved')"
    assert sgd._function(torch.float32) is None
    assert list(verdicts.iterdir()) == []


def test_the_verdict_is_kept_per_torch_build_cpu_model_and_mkl(monkeypatch):
    """What the in-line root's verdict is keyed by, and MKL's own version besides."""
    library = native.build()
    before = native.verdict_path("selfcheck-x", library)
    assert before == native.verdict_path("selfcheck-x", library)
    assert before.parent == library.parent and before.name.startswith("selfcheck-x-")
    changes = [
        lambda m: m.setattr(torch, "__version__", "2.99.0+cpu"),
        lambda m: m.setattr(_newton_root, "cpu_identity", lambda: "model name: another"),
        lambda m: m.setattr(_entry, "mkl_version", lambda: "MKL 2099.1"),
        lambda m: m.setenv("MKL_ENABLE_INSTRUCTIONS", "AVX2"),
    ]
    seen = {before}
    for change in changes:
        with monkeypatch.context() as m:
            change(m)
            seen.add(native.verdict_path("selfcheck-x", library))
    assert len(seen) == 1 + len(changes)
    assert native.verdict_path("selfcheck-x", library) == before


def test_each_loop_and_dtype_has_a_verdict_of_its_own():
    paths = {
        selfcheck.verdict_path(name, dtype)
        for name in selfcheck.LOOPS
        for dtype in (torch.float32, torch.float64)
    }
    assert len(paths) == 2 * len(selfcheck.LOOPS)


def test_the_mkl_version_is_read_from_mkl():
    version = _entry.mkl_version()
    assert version is None or "Math Kernel Library" in version
    assert (version is None) == (not torch.backends.mkl.is_available())


def test_any_nan_stands_for_any_nan_but_a_sign_of_zero_is_a_difference():
    """torch's own NaN payloads depend on where an element sits (``maximum``'s vector
    body and scalar tail) and on operand order, so the check compares where NaNs are,
    not their bits; every other value is compared bit for bit."""
    nan = torch.tensor([math.nan], dtype=torch.float32)
    assert selfcheck._first_difference(nan, torch.neg(nan)) is None
    assert selfcheck._first_difference(nan, nan.clone()) is None
    assert selfcheck._first_difference(nan, torch.ones(1, dtype=torch.float32)) == (
        "[0]: ours nan (0x7fc00000), torch's 1.0 (0x3f800000)"
    )
    zero = torch.zeros(3, dtype=torch.float64)
    assert selfcheck._first_difference(zero, torch.neg(zero)) == (
        "[0]: ours 0.0 (0x0000000000000000), torch's -0.0 (0x8000000000000000)"
    )


def test_the_inputs_hold_every_kind_of_special_value():
    for dtype in (torch.float32, torch.float64):
        values = torch.cat(selfcheck._gradients(0, dtype))
        bits = values.view(torch.int32 if dtype == torch.float32 else torch.int64)
        assert bool(values.isnan().any() & (bits < 0).any())  # a NaN with its sign bit
        assert bool((values.isnan() & (bits > 0)).any())
        assert bool((values == math.inf).any() and (values == -math.inf).any())
        assert bool(((values == 0) & (bits < 0)).any())  # -0
        tiny = torch.finfo(dtype).tiny
        assert bool(((values != 0) & (values.abs() < tiny)).any())  # subnormal
        assert bool((values.abs() ** 2 == math.inf).any())


def test_every_loop_checks_both_lerp_branches_and_its_options():
    adam_cases = selfcheck.LOOPS[adam.ADAM_LOOP].cases
    lerp_weights = {1 - c.options.get("betas", (0.9, 0.999))[0] for c in adam_cases}
    assert min(lerp_weights) < 0.5 < max(lerp_weights)
    assert {c.reference for c in adam_cases} == {torch.optim.Adam, torch.optim.AdamW}
    for loop in selfcheck.LOOPS.values():
        torch_cases = [c for c in loop.cases if c.reference.__module__.startswith("torch")]
        if torch_cases:
            assert any(c.options.get("maximize") for c in torch_cases), loop.name
    assert selfcheck.STEPS > 1 and set(selfcheck.THREADS) == {1, 2}


def test_the_check_uses_a_team_of_two(verdicts, monkeypatch):
    parts = []
    real = selfcheck._OnThreads.__call__

    def record(self, *args):
        parts.append(real(self, *args))
        return parts[-1]

    monkeypatch.setattr(selfcheck._OnThreads, "__call__", record)
    selfcheck.reason_off(rprop.LOOP, torch.float64)
    assert set(parts) == {1, 2}


def test_module_entry_point_says_what_runs_for_each_rule_and_dtype():
    done = subprocess.run(
        [sys.executable, "-m", "pyroopt.native"], capture_output=True, text=True, check=True
    )
    for rule, loop in selfcheck.RULE_LOOPS:
        for suffix, dtype in (("f32", "float32"), ("f64", "float64")):
            line = re.search(rf"^{re.escape(rule)} +{dtype} +(.*)$", done.stdout, re.M)
            assert line, (rule, dtype)
            assert line[1].startswith(
                (f"native loop {loop}_{suffix} (", f"torch-op chain: self-check mismatch: {loop}_")
            ), line[1]
        assert re.search(
            rf"^{re.escape(rule)} +bfloat16 +torch-op chain: dtype not", done.stdout, re.M
        )
    assert "self-check against torch: " in done.stdout


def test_module_entry_point_says_there_is_no_library(monkeypatch):
    monkeypatch.setenv("PYROOPT_NATIVE", "0")
    done = subprocess.run(
        [sys.executable, "-m", "pyroopt.native"], capture_output=True, text=True, check=True
    )
    assert re.search(
        r"^torch\.optim\.Adam +float32 +torch-op chain: no library \(turned off by "
        r"PYROOPT_NATIVE=0\)$",
        done.stdout,
        re.M,
    )


@pytest.mark.skipif(
    not (sys.platform.startswith("linux") and platform.machine() == "x86_64"),
    reason="vector clones are compiled on x86-64 Linux only",
)
def test_the_reported_clone_is_the_widest_the_cpu_has():
    info = Path("/proc/cpuinfo").read_text()
    flags = set(re.search(r"^flags\s*:(.*)$", info, re.M)[1].split())
    expected = next(name for name, needs in native.VECTOR_CLONES if needs <= flags)
    assert native.vector_clone() == expected
    assert (expected == "avx512f") == ("avx512f" in flags)
