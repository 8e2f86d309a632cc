"""The C Rprop loop against torch.optim.Rprop, bit for bit, and how the library is built."""

from __future__ import annotations

import platform
import re
import subprocess
import sys

import pyro
import pytest
import torch

import pyroopt
from pyroopt import native, rule_bucket
from pyroopt.kernels.base import Batch
from pyroopt.native import _entry
from pyroopt.native import rprop as native_rprop
from pyroopt.native.rprop import rprop_update
from pyroopt.registry import RULES

ARGS = {"lr": 0.01, "etas": (0.3, 1.5), "step_sizes": (1e-4, 0.05)}


def _forget_the_library():
    native._load.cache_clear()
    native_rprop._function.cache_clear()


@pytest.fixture
def fresh_load(monkeypatch, tmp_path):
    """Forget the loaded library and build into an empty cache directory."""
    monkeypatch.setenv("PYROOPT_CACHE_DIR", str(tmp_path))
    _forget_the_library()
    yield tmp_path
    _forget_the_library()  # later tests load it again, from the usual cache


def test_library_is_built_here():
    """``make install`` builds it; a machine without it would run Rprop 4x slower."""
    assert native.library() is not None, native.unavailable_reason()


def _clone_calls(path):
    """Per vector clone in the library (``name.avx512f``, ``name.arch_x86_64_v3``,
    ``name.avx2``), the functions it calls through the PLT, from ``objdump -d``."""
    listing = subprocess.run(
        ["objdump", "-d", "--no-show-raw-insn", str(path)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    calls: dict[str, set[str]] = {}
    function = None
    for line in listing.splitlines():
        head = re.match(r"^[0-9a-f]+ <([^>]+)>:$", line)
        if head:
            function = head.group(1)
            suffix = function.rpartition(".")[2]
            if suffix.startswith(("avx", "arch_")):
                calls[function] = set()
            continue
        target = re.search(r"\bcall\s.*<([^>@]+)@plt>", line)
        if target and function in calls:
            calls[function].add(target.group(1))
    return calls


@pytest.mark.skipif(
    not (sys.platform.startswith("linux") and platform.machine() == "x86_64"),
    reason="vector clones are compiled on x86-64 Linux only",
)
def test_vector_clones_compute_fused_multiply_adds_in_line():
    """Each loop has an AVX-512 and an AVX2 clone, and neither calls libm's fma: under
    plain AVX2 GCC did, for every element (Adam 6-7x slower)."""
    calls = _clone_calls(native.build())
    names = {f.rsplit(".", 1)[0] for f in calls}
    assert {"adam_range_f32", "rmsprop_range_f64", "sgd_range_f32"} <= names
    for name in names:
        assert f"{name}.avx512f" in calls, name
        assert any(f.startswith((f"{name}.arch_", f"{name}.avx2")) for f in calls), name
    slow = {f: c & {"fma", "fmaf"} for f, c in calls.items() if c & {"fma", "fmaf"}}
    assert not slow


def _grads(sizes, step, dtype):
    gen = torch.Generator().manual_seed(step)
    grads = [torch.randn(n, generator=gen, dtype=dtype) for n in sizes]
    for g in grads:  # exact zeros and repeated signs, as well as flips
        g[::5] = 0.0
        g[1::7] = g[1::7].abs()
    return grads


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("maximize", [False, True])
@pytest.mark.parametrize("threads", [1, 2, 3])
def test_matches_torch_bit_for_bit(monkeypatch, dtype, maximize, threads):
    """Sizes put thread boundaries inside tensors and an empty tensor between two."""
    monkeypatch.setattr(native_rprop, "MIN_NUMEL_PER_THREAD", 1000)
    sizes = [7, 1500, 0, 3, 1701]  # 2 threads split at 1605, 3 at 1070 and 2140
    torch.manual_seed(0)
    ours = [torch.randn(n, dtype=dtype) for n in sizes]
    theirs = [p.clone().requires_grad_() for p in ours]
    reference = torch.optim.Rprop(theirs, **ARGS, maximize=maximize, foreach=False)
    prevs = [torch.zeros_like(p) for p in ours]
    step_sizes = [torch.full_like(p, 123.0) for p in ours]  # fresh: overwritten with lr
    inf, nan = float("inf"), float("nan")
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for step in range(12):
            grads = _grads(sizes, step, dtype)
            if step in (4, 5):  # infinite and NaN gradients, and a flip through infinity
                grads[0][:3] = torch.tensor([inf if step == 4 else -inf, nan, -inf])
            for p, g in zip(theirs, grads, strict=True):
                p.grad = g.clone()
            reference.step()
            done = rprop_update(
                ours, grads, prevs, step_sizes, [step == 0] * len(sizes), **ARGS, maximize=maximize
            )
            assert done
            for i, p in enumerate(theirs):
                state = reference.state[p]
                torch.testing.assert_close(ours[i], p.detach(), rtol=0, atol=0, equal_nan=True)
                torch.testing.assert_close(step_sizes[i], state["step_size"], rtol=0, atol=0)
                torch.testing.assert_close(prevs[i], state["prev"], rtol=0, atol=0, equal_nan=True)
    finally:
        torch.set_num_threads(before)


def test_written_tensors_are_marked_modified_for_autograd():
    params, grads, prevs, sizes = ([torch.ones(2)] for _ in range(4))
    before = [t._version for t in (*params, *prevs, *sizes)]
    assert rprop_update(params, grads, prevs, sizes, [False], **ARGS, maximize=False)
    after = [t._version for t in (*params, *prevs, *sizes)]
    assert all(a > b for a, b in zip(after, before, strict=True))


@pytest.mark.parametrize("flat", [True, False], ids=["flat", "per-tensor"])
def test_autograd_refuses_a_graph_that_saved_a_parameter_rprop_then_changed(monkeypatch, flat):
    """As with torch.optim.Rprop: backward through stale saved values raises."""
    monkeypatch.setattr(rule_bucket, "FLAT_MAX_AVG_NUMEL", 1 << 30 if flat else 0)
    pyro.clear_param_store()
    param = torch.randn(5, requires_grad=True)
    optim = pyroopt.Rprop({"lr": 0.1})
    loss = (param * param).sum()  # saves param for backward
    param.grad = torch.ones(5)
    optim([param])
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        loss.backward()


def test_fresh_tensors_start_at_lr_whatever_their_step_size_holds():
    params = [torch.zeros(2), torch.zeros(2)]
    grads = [torch.ones(2), torch.ones(2)]
    prevs = [torch.zeros(2), torch.ones(2)]
    sizes = [torch.full((2,), 7.0), torch.full((2,), 0.02)]
    assert rprop_update(params, grads, prevs, sizes, [True, False], **ARGS, maximize=False)
    torch.testing.assert_close(sizes[0], torch.full((2,), 0.01))  # lr, sign unknown yet
    torch.testing.assert_close(sizes[1], torch.full((2,), 0.03))  # 0.02 * eta_plus


@pytest.mark.parametrize(
    "case",
    [
        "half precision",
        "mixed dtypes",
        "not contiguous",
        "lazily negated",
        "sizes differ",
        "meta device",
    ],
)
def test_declines_what_it_cannot_compute_and_changes_nothing(case):
    def tensors(dtype=torch.float32, **kwargs):  # float32: the tests' default is float64
        return [torch.ones(4, dtype=dtype, **kwargs) for _ in range(4)]

    params, grads, prevs, sizes = tensors(), tensors(), tensors(), tensors()
    if case == "half precision":
        params, grads, prevs, sizes = (tensors(torch.float16) for _ in range(4))
    elif case == "mixed dtypes":
        grads = tensors(torch.float64)
    elif case == "not contiguous":
        params = [torch.ones(4, 2, dtype=torch.float32)[:, 0] for _ in range(4)]
    elif case == "lazily negated":
        grads = [torch._neg_view(g) for g in tensors()]
    elif case == "sizes differ":
        prevs = [torch.ones(5, dtype=torch.float32) for _ in range(4)]
    else:
        params = tensors(device="meta")
    snapshot = [[t.clone() for t in ts] for ts in (params, grads, prevs, sizes)]
    assert not rprop_update(params, grads, prevs, sizes, [False] * 4, **ARGS, maximize=False)
    if case != "meta device":
        for ts, saved in zip((params, grads, prevs, sizes), snapshot, strict=True):
            for t, s in zip(ts, saved, strict=True):
                assert torch.equal(t, s)


def test_one_fresh_flag_per_tensor_is_required():
    params, grads, prevs, sizes = ([torch.ones(3)] for _ in range(4))
    with pytest.raises(ValueError, match="fresh has 0 flags for 1 tensors"):
        rprop_update(params, grads, prevs, sizes, [], **ARGS, maximize=False)


def test_no_tensors_is_a_step_of_nothing():
    assert rprop_update([], [], [], [], [], **ARGS, maximize=False)


def test_build_writes_one_library_per_source_and_reuses_it(fresh_load):
    path = native.build()
    assert path.parent == fresh_load / "native" and path.suffix == ".so"
    built = path.stat().st_mtime_ns
    assert native.build() == path and path.stat().st_mtime_ns == built
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no partial files left
    assert native.library() is not None


def test_a_failing_compiler_is_reported_and_leaves_no_library(fresh_load, monkeypatch):
    monkeypatch.setenv("CC", "false")
    with pytest.raises(native.NativeBuildError, match=r"false .* failed"):
        native.build()
    assert not any((fresh_load / "native").iterdir())
    assert native.library() is None
    assert "failed" in native.unavailable_reason()


def test_turned_off_by_the_environment(fresh_load, monkeypatch):
    monkeypatch.setenv("PYROOPT_NATIVE", "0")
    assert native.library() is None
    assert native.unavailable_reason() == "turned off by PYROOPT_NATIVE=0"
    params, grads, prevs, sizes = ([torch.ones(3)] for _ in range(4))
    assert not rprop_update(params, grads, prevs, sizes, [False], **ARGS, maximize=False)


def test_module_entry_point_builds_and_prints_the_path(fresh_load):
    done = subprocess.run(
        [sys.executable, "-m", "pyroopt.native"], capture_output=True, text=True, check=True
    )
    assert str(fresh_load / "native") in done.stdout
    # and keeps the in-line root's verdict, so that no first step waits for its check
    assert "in-line float32 square root: " in done.stdout
    kept = list((fresh_load / "native").glob("newton-root-*.txt"))
    assert len(kept) == (0 if _entry.sqrt_function(torch.float32) is None else 1)


def test_module_entry_point_says_why_the_loops_are_not_loaded(fresh_load, monkeypatch):
    monkeypatch.setenv("PYROOPT_NATIVE", "0")
    done = subprocess.run(
        [sys.executable, "-m", "pyroopt.native"], capture_output=True, text=True, check=True
    )
    assert "not loaded: turned off by PYROOPT_NATIVE=0" in done.stdout


def test_module_entry_point_fails_loudly_without_a_compiler(fresh_load, monkeypatch):
    monkeypatch.setenv("CC", "/nonexistent/cc")
    done = subprocess.run([sys.executable, "-m", "pyroopt.native"], capture_output=True, text=True)
    assert done.returncode == 1 and "pyroopt.native:" in done.stderr


def test_module_entry_point_fails_loudly_when_the_cache_is_not_writable(fresh_load, monkeypatch):
    blocker = fresh_load / "a-file"
    blocker.write_text("")
    monkeypatch.setenv("PYROOPT_CACHE_DIR", str(blocker))
    done = subprocess.run([sys.executable, "-m", "pyroopt.native"], capture_output=True, text=True)
    assert done.returncode == 1 and "pyroopt.native:" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize("steps", [[1], [1, 1]], ids=["one count for all", "a count each"])
def test_the_rule_runs_first_steps_natively(steps):
    """Batch allows one step count standing for all tensors, or one per tensor."""
    params = [torch.zeros(2), torch.zeros(3)]
    state = {k: [torch.zeros_like(p) for p in params] for k in ("prev", "step_size")}
    group = {"lr": 0.01, "etas": (0.5, 1.2), "step_sizes": (1e-6, 50.0), "maximize": False}
    batch = Batch(params, [torch.ones(2), -torch.ones(3)], state, steps)
    assert RULES[torch.optim.Rprop].native_update(batch, group)
    torch.testing.assert_close(torch.cat(state["step_size"]), torch.full((5,), 0.01))
    torch.testing.assert_close(torch.cat(params), torch.tensor([-0.01] * 2 + [0.01] * 3))


def test_off_on_cpu_kernels_whose_roundings_were_not_checked(fresh_load, monkeypatch):
    """On another kernel set (torch's default or NEON ones) the loops could round
    differently from torch: the chains, exact everywhere, run instead."""
    monkeypatch.setattr(native, "torch_cpu_capability", lambda: "DEFAULT")
    assert native.library() is None
    assert "DEFAULT" in (native.unavailable_reason() or "")
