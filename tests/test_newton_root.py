"""The in-line float32 square root of the native loops (newton_root.h): MKL's bits,
compared with MKL on every float32 it takes before the loops use it, and torch's own
root wherever it could not give them."""

from __future__ import annotations

import ctypes
import os
import platform

import numpy as np
import pytest
import torch

import pyroopt
from pyroopt import native
from pyroopt.native import _entry, _newton_root

VSQRT_F32 = ctypes.CFUNCTYPE(
    None,
    ctypes.c_int,
    ctypes.POINTER(ctypes.c_float),
    ctypes.POINTER(ctypes.c_float),
    ctypes.c_longlong,
)
ONE = 0x3F800000  # 1.0f


@pytest.fixture
def lib():
    lib = native.library()
    assert lib is not None, native.unavailable_reason()
    return lib


#: the root torch calls for float32 (MKL's), or None where torch has no MKL
MKL_ROOT = _entry.sqrt_function(torch.float32)
#: where the in-line root must be on: AMD's CPUs with torch's MKL, which runs its
#: untuned kernel there, the one the Newton root reproduces (seen with MKL 2024.2 on an
#: AMD EPYC). On other CPUs MKL may run another kernel; there the root is off, rightly,
#: and the tests below check that instead.
MUST_BE_ON = MKL_ROOT is not None and "AuthenticAMD" in _newton_root.cpu_identity()


@pytest.fixture
def in_line(lib):
    """Whether the loops take roots in line here (the process's verdict); back to it
    after the test."""
    reason = _newton_root.reason_off(lib)
    if MUST_BE_ON:
        assert reason is None, f"the in-line root is off on an AMD CPU: {reason}"
    yield reason is None
    lib.pyroopt_use_newton_root(int(reason is None))


@pytest.fixture
def forced(lib):
    """The Newton kernel itself, on for the test whatever this machine's verdict (for
    tests of the kernel, not of its agreement with MKL); back to the verdict after."""
    lib.pyroopt_use_newton_root(1)
    yield
    lib.pyroopt_use_newton_root(int(_newton_root.reason_off(lib) is None))


def _in_line(lib, x: torch.Tensor) -> int:
    function = lib.pyroopt_newton_root_f32
    function.argtypes = [ctypes.c_void_p, ctypes.c_int64]
    function.restype = ctypes.c_int
    return function(x.data_ptr(), x.numel())


def _floats(patterns) -> torch.Tensor:
    return torch.tensor(np.array(patterns, dtype=np.uint32).view(np.float32))


def test_kept_verdict_is_a_fresh_check_of_every_float32(lib):
    reason = _newton_root.reason_off(lib)
    if os.environ.get(_newton_root.SWITCH) == "0":
        assert reason == f"turned off by {_newton_root.SWITCH}=0"
    elif MKL_ROOT is None:
        assert reason == "torch takes the correctly rounded root here, which the loops call"
    else:
        assert _newton_root.check(lib, MKL_ROOT) == (reason or "same")


@VSQRT_F32
def _correctly_rounded(n, a, r, mode):
    """libm's roots, as a vmsSqrt (a fifth of them differ from MKL's)."""
    values = np.ctypeslib.as_array(a, shape=(n,))
    np.ctypeslib.as_array(r, shape=(n,))[:] = np.sqrt(values)


def _newton_kernel(lib):
    """The Newton kernel, as a vmsSqrt: what the check compares with agrees with it
    everywhere, so a check against it finds nothing, whatever this CPU's MKL does."""

    @VSQRT_F32
    def roots(n, a, r, mode):
        out = np.ctypeslib.as_array(r, shape=(n,))
        out[:] = np.ctypeslib.as_array(a, shape=(n,))
        assert _in_line(lib, torch.from_numpy(out)) == 1  # the check passes only those

    return roots


def _address(function) -> int:
    return ctypes.cast(function, ctypes.c_void_p).value


def test_check_reports_the_smallest_differing_pattern(lib, forced):
    """Against libm's correctly rounded roots, on 1 and 2 threads; the expected pattern
    found by the Newton kernel itself, element by element."""
    span = (ONE + 12345, ONE + 12345 + 200_000)
    values = _floats(np.arange(span[0], span[1] + 1))
    ours = values.clone()
    assert _in_line(lib, ours) == 1
    differs = ours.numpy().view(np.uint32) != np.sqrt(values.numpy()).view(np.uint32)
    first = span[0] + int(np.argmax(differs))
    assert differs.any() and first > span[0]
    for threads in (1, 2):
        verdict = _newton_root.check(lib, _address(_correctly_rounded), (span,), threads=threads)
        assert verdict == f"the Newton root differs from torch's at bit pattern {first:#010x}"


EDGES = ((0, 0x00800100), (0x7F7FE000, 0x7FFFFFFF), (0x80000000, 0x80001000))


def test_check_covers_the_edges_of_what_it_takes(lib, forced):
    """Ranges with patterns the Newton root does not take (subnormals, infinities, NaN,
    negatives) compare only those it takes."""
    kernel = _newton_kernel(lib)
    for span in EDGES:
        assert _newton_root.check(lib, _address(kernel), (span,), threads=1) == "same"


def test_torchs_root_agrees_at_the_edges_where_the_root_is_on(lib, in_line):
    """On: torch's root agrees at the edges too. Off because of a difference: the
    pattern the verdict names really differs."""
    reason = _newton_root.reason_off(lib)
    if in_line:
        assert {_newton_root.check(lib, MKL_ROOT, (span,)) for span in EDGES} == {"same"}
    elif MKL_ROOT is not None and reason.startswith("the Newton root differs"):
        pattern = int(reason.rsplit(" ", 1)[1], 16)
        assert _newton_root.check(lib, MKL_ROOT, ((pattern, pattern),)) == reason


@pytest.mark.parametrize("n", [*range(1, 18), 255, 256, 257, 4099])
def test_in_line_root_is_torchs_root_at_every_length(lib, in_line, n):
    """Where the root is on, it takes every block of ordinary values and gives torch's
    bits; where it is off, it takes none (the loops call torch's root)."""
    gen = torch.Generator().manual_seed(n)
    scale = 10.0 ** torch.randint(-37, 38, (n,), generator=gen).float()  # 1e-37..1e37
    x = (torch.rand(n, generator=gen, dtype=torch.float32) + 0.5) * scale
    x[:: max(1, n // 3)] = 0.0
    ours = x.clone()
    assert _in_line(lib, ours) == int(in_line)
    assert torch.equal(ours, torch.sqrt(x) if in_line else x)


@pytest.mark.parametrize(
    "pattern",
    [0x00000001, 0x007FFFFF, 0x7F7FF001, 0x7F800000, 0x7FC00000, 0xBF800000, 0x80000001],
    ids=[
        "subnormal",
        "largest subnormal",
        "too large",
        "inf",
        "nan",
        "negative",
        "negative subnormal",
    ],
)
def test_in_line_root_leaves_a_block_with_what_it_does_not_take(lib, forced, pattern):
    x = torch.rand(300, dtype=torch.float32) + 0.5
    x[123] = _floats([pattern])[0]
    ours = x.clone()
    assert _in_line(lib, ours) == 0
    assert torch.equal(ours.view(torch.int32), x.view(torch.int32))


def _in_lanes(lib, x: torch.Tensor, lanes: int) -> int:
    function = lib.pyroopt_newton_root_in_lanes
    function.argtypes = [ctypes.c_void_p, ctypes.c_int64, ctypes.c_int]
    function.restype = ctypes.c_int
    return function(x.data_ptr(), x.numel(), lanes)


def _lanes_here(lib) -> int:
    function = lib.pyroopt_newton_root_lanes
    function.restype = ctypes.c_int
    return function()


#: what a block may hold: ordinary values and each kind the Newton root refuses or
#: passes through (zeros of both signs, subnormals, too large, inf, NaN, negatives)
EDGE_PATTERNS = [0x00000000, 0x80000000, 0x00000001, 0x007FFFFF, 0x00800000, 0x7F7FF000,
                 0x7F7FF001, 0x7F800000, 0x7FC00000, 0xFFC00001, 0xBF800000]  # fmt: skip


@pytest.mark.parametrize("n", [1, 7, 8, 9, 15, 16, 17, 31, 63, 64, 65, 200])
def test_every_form_of_the_newton_root_gives_the_same_bits(lib, n):
    """The loops run the widest form the CPU has (16 lanes with AVX-512F, else 8) and
    the verdict is checked on that form; every form must give the same bits and take or
    refuse the same blocks, at every length (whole vectors and masked tails)."""
    lanes_here = _lanes_here(lib)
    if lanes_here == 0:  # no estimate instruction to reproduce: no form takes a block
        assert platform.machine().lower() not in ("x86_64", "amd64")
        x = torch.rand(n, dtype=torch.float32) + 0.5
        ours = x.clone()
        assert _in_lanes(lib, ours, 8) == 0
        assert torch.equal(ours, x)
        return
    assert lanes_here in (8, 16)
    forms = [lanes for lanes in (8, 16) if lanes <= lanes_here]
    gen = torch.Generator().manual_seed(n)
    blocks = []
    for trial in range(40):
        scale = 10.0 ** torch.randint(-37, 38, (n,), generator=gen).float()
        x = (torch.rand(n, generator=gen, dtype=torch.float32) + 0.5) * scale
        if trial % 2:  # one value of an edge kind somewhere in the block
            at = int(torch.randint(n, (1,), generator=gen))
            x[at] = _floats([EDGE_PATTERNS[trial // 2 % len(EDGE_PATTERNS)]])[0]
        blocks.append(x)
    mkl_is_newton = MKL_ROOT is not None and _newton_root.reason_off(lib) is None
    outcomes = set()
    for x in blocks:
        results = []
        for lanes in forms:
            ours = x.clone()
            results.append((_in_lanes(lib, ours, lanes), ours.view(torch.int32)))
        taken, bits = results[0]
        outcomes.add(taken)
        for other_taken, other_bits in results[1:]:
            assert other_taken == taken
            assert torch.equal(other_bits, bits)
        if not taken:
            assert torch.equal(bits, x.view(torch.int32))  # a refused block is untouched
        elif mkl_is_newton:
            assert torch.equal(bits, torch.sqrt(x).view(torch.int32))
    assert outcomes == {0, 1}  # the blocks took both ways


def test_in_line_root_keeps_the_sign_of_zero(lib, forced):
    x = torch.tensor([0.0, -0.0, 4.0, -0.0], dtype=torch.float32)
    assert _in_line(lib, x) == 1
    assert (
        x.view(torch.int32).tolist()
        == _floats([0, 0x80000000, 0x40000000, 0x80000000]).view(torch.int32).tolist()
    )


def test_in_line_root_is_off_when_turned_off_or_flushing_subnormals(lib, forced):
    x = torch.rand(64, dtype=torch.float32) + 0.5
    lib.pyroopt_use_newton_root(0)
    assert _in_line(lib, x.clone()) == 0
    lib.pyroopt_use_newton_root(1)
    assert _in_line(lib, x.clone()) == 1
    assert torch.set_flush_denormal(True)
    try:
        assert _in_line(lib, x.clone()) == 0  # MKL sets its own mode; the loops cannot
    finally:
        torch.set_flush_denormal(False)
    assert _in_line(lib, x.clone()) == 1


RULES = {
    "Adam": (pyroopt.Adam, {"lr": 1e-2}),
    "AdamW amsgrad": (pyroopt.AdamW, {"lr": 1e-2, "amsgrad": True}),
    "RMSprop centered": (pyroopt.RMSprop, {"lr": 1e-2, "centered": True, "momentum": 0.5}),
    "Adagrad": (pyroopt.Adagrad, {"lr": 1e-2}),
    "ClippedAdam": (pyroopt.ClippedAdam, {"lr": 1e-2, "clip_norm": 0.5}),
    "AdagradRMSProp": (pyroopt.AdagradRMSProp, {"eta": 1e-2}),
}


def _run(factory, args, sizes, steps=25):
    """Parameters after ``steps`` float32 steps; gradients with zeros (state under the
    root stays zero), large values (clipped) and, in each tensor's first 40 elements
    only, tiny ones (subnormal state: those blocks take torch's root, the others the
    in-line one)."""
    gen = torch.Generator().manual_seed(7)
    params = [torch.randn(n, generator=gen, dtype=torch.float32).requires_grad_() for n in sizes]
    optim = factory(dict(args))
    for _ in range(steps):
        for p in params:
            g = torch.randn(p.shape, generator=gen, dtype=torch.float32)
            g[::5] = 0.0
            g[1:40:7] *= 1e-22
            g[2::11] *= 40.0
            p.grad = g
        optim(params)
    return [p.detach().clone() for p in params]


@pytest.mark.parametrize("rule", sorted(RULES))
def test_loops_give_the_same_bits_as_with_torchs_root_for_every_block(lib, in_line, rule):
    """The loops as this machine's verdict runs them (the in-line root where it is on)
    against the same loops with torch's root for every block. (Where the root is off,
    both take torch's; on an AMD CPU it must be on, so there this compares the two.)"""
    factory, args = RULES[rule]
    sizes = [1, 17, 300, 1037, 5000]
    lib.pyroopt_use_newton_root(0)
    with_torchs_root = _run(factory, args, sizes)
    lib.pyroopt_use_newton_root(int(in_line))
    as_here = _run(factory, args, sizes)
    for ours, theirs in zip(as_here, with_torchs_root, strict=True):
        assert torch.equal(ours, theirs)


def test_flushing_subnormals_on_one_thread_still_gives_torchs_bits(lib, in_line):
    """With torch.set_flush_denormal(True) the loops take torch's root (MKL computes it
    in its own mode) and round the rest as torch's ops on that thread do."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    assert torch.set_flush_denormal(True)
    try:
        gen = torch.Generator().manual_seed(3)
        values = [torch.randn(n, generator=gen, dtype=torch.float32) * 1e-20 for n in (17, 1037)]
        ours = [v.clone().requires_grad_() for v in values]
        theirs = [v.clone().requires_grad_() for v in values]
        optim = pyroopt.Adam({"lr": 1e-21, "eps": 1e-30})
        reference = torch.optim.Adam(theirs, lr=1e-21, eps=1e-30, foreach=False)
        for _ in range(20):
            grads = [
                torch.randn(v.shape, generator=gen, dtype=torch.float32) * 1e-22 for v in values
            ]
            for p, q, g in zip(ours, theirs, grads, strict=True):
                p.grad, q.grad = g.clone(), g.clone()
            optim(ours)
            reference.step()
        for p, q in zip(ours, theirs, strict=True):
            assert torch.equal(p, q)
    finally:
        torch.set_flush_denormal(False)
        torch.set_num_threads(before)


class _Checks:
    def __init__(self, verdict):
        self.verdict, self.calls = verdict, 0

    def __call__(self, lib, root, *args, **kwargs):
        self.calls += 1
        return self.verdict


@pytest.fixture
def kept(monkeypatch, tmp_path):
    """reason_off with the library "built" in tmp_path, a counted stand-in check and,
    where torch has no MKL, a stand-in address for its root (the check never calls it)."""
    library = tmp_path / "pyroopt_native-0123456789abcdef.so"
    monkeypatch.setattr(native, "build", lambda: library)
    if MKL_ROOT is None:
        monkeypatch.setattr(_entry, "sqrt_function", lambda dtype: 1)
    monkeypatch.delenv(_newton_root.SWITCH, raising=False)

    def use(verdict):
        checks = _Checks(verdict)
        monkeypatch.setattr(_newton_root, "check", checks)
        return checks

    return library, use


def test_verdict_is_checked_once_then_read(kept):
    library, use = kept
    checks = use("same")
    assert _newton_root.reason_off(None) is None
    path = _newton_root.verdict_path(library)
    assert path.read_text() == "same\n" and checks.calls == 1
    assert _newton_root.reason_off(None) is None and checks.calls == 1
    assert sorted(p.name for p in library.parent.iterdir()) == [path.name]


def test_kept_difference_turns_the_root_off_without_a_check(kept):
    library, use = kept
    reason = "the Newton root differs from torch's at bit pattern 0x3f812345"
    _newton_root.verdict_path(library).write_text(reason + "\n")
    checks = use("same")
    assert _newton_root.reason_off(None) == reason and checks.calls == 0


def test_empty_verdict_file_is_checked_again(kept):
    library, use = kept
    _newton_root.verdict_path(library).write_text("")
    checks = use("same")
    assert _newton_root.reason_off(None) is None and checks.calls == 1


def test_unwritable_cache_still_gives_the_verdict_and_leaves_nothing(kept, monkeypatch, tmp_path):
    gone = tmp_path / "missing" / "pyroopt_native-0123456789abcdef.so"
    monkeypatch.setattr(native, "build", lambda: gone)
    _, use = kept
    checks = use("the CPU has no AVX, which the Newton root is written for")
    assert _newton_root.reason_off(None) == checks.verdict
    assert not gone.parent.exists() and checks.calls == 1


def test_switch_turns_the_root_off_without_a_check(kept, monkeypatch):
    _, use = kept
    checks = use("same")
    monkeypatch.setenv(_newton_root.SWITCH, "0")
    assert _newton_root.reason_off(None) == "turned off by PYROOPT_NEWTON_ROOT=0"
    assert checks.calls == 0


def test_verdict_is_kept_per_cpu_and_mkl_settings(kept, monkeypatch):
    library, _ = kept
    here = _newton_root.verdict_path(library)
    monkeypatch.setenv("MKL_ENABLE_INSTRUCTIONS", "AVX2")
    assert _newton_root.verdict_path(library) != here
    monkeypatch.delenv("MKL_ENABLE_INSTRUCTIONS")
    assert _newton_root.verdict_path(library) == here
    monkeypatch.setattr(_newton_root, "cpu_identity", lambda: "another CPU")
    assert _newton_root.verdict_path(library) != here
    assert (
        _newton_root.verdict_path(library.with_name("pyroopt_native-fedcba9876543210.so")) != here
    )


def test_switch_in_a_fresh_process_gives_the_same_bits(tmp_path):
    """PYROOPT_NEWTON_ROOT=0 (torch's root for every block) against the default."""
    import subprocess
    import sys

    program = (
        "import torch, pyroopt\n"
        "torch.manual_seed(0)\n"
        "p = torch.randn(5000, dtype=torch.float32).requires_grad_()\n"
        "optim = pyroopt.Adam({'lr': 1e-2})\n"
        "for _ in range(30):\n"
        "    p.grad = torch.randn(5000, dtype=torch.float32)\n"
        "    optim([p])\n"
        "print(p.detach().numpy().tobytes().hex())\n"
    )
    outputs = []
    for switch in ("0", "1"):
        env = {**os.environ, _newton_root.SWITCH: switch}
        done = subprocess.run(
            [sys.executable, "-c", program], env=env, capture_output=True, text=True, check=True
        )
        outputs.append(done.stdout)
    assert outputs[0] == outputs[1] and len(outputs[0]) > 40000
