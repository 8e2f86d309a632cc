"""The native loops' threads: a team of torch's own OpenMP runtime, used only for large
calls, and never a change of any number."""

from __future__ import annotations

import ctypes

import pytest
import torch

from pyroopt import native
from pyroopt.native import _entry
from pyroopt.native import adam as native_adam
from pyroopt.native import rprop as native_rprop

RPROP = {"lr": 0.01, "etas": (0.5, 1.2), "step_sizes": (1e-6, 50.0)}
ADAM = {
    "lr": 1e-2,
    "betas": (0.9, 0.999),
    "eps": 1e-8,
    "weight_decay": 0.0,
    "decoupled": False,
    "amsgrad": False,
    "maximize": False,
}


class _Recorder:
    """Stands for a typed C entry: calls it and keeps what it returned (the parts run)."""

    def __init__(self, function):
        self.function = function
        self.parts: list[int] = []

    def __call__(self, *args):
        parts = self.function(*args)
        self.parts.append(parts)
        return parts


@pytest.fixture
def torch_threads():
    before = torch.get_num_threads()
    yield torch.set_num_threads
    torch.set_num_threads(before)


def _record(monkeypatch, module, name="_function", dtype=torch.float32):
    recorder = _Recorder(getattr(module, name)(dtype))
    monkeypatch.setattr(module, name, lambda _: recorder)
    return recorder


def _tensors(sizes, seed, dtype=torch.float32):
    """Parameters, gradients and two zero state tensors per size."""
    gen = torch.Generator().manual_seed(seed)
    params = [torch.randn(n, generator=gen, dtype=dtype) for n in sizes]
    grads = [torch.randn(n, generator=gen, dtype=dtype) for n in sizes]
    zeros = [torch.zeros(n, dtype=dtype) for n in sizes]
    return params, grads, (zeros, [z.clone() for z in zeros])


def _run_rprop(sizes, dtype=torch.float32):
    params, grads, (prevs, step_sizes) = _tensors(sizes, 0, dtype)
    for _ in range(3):
        assert native_rprop.rprop_update(
            params, grads, prevs, step_sizes, [False] * len(sizes), **RPROP, maximize=False
        )
    return params, prevs, step_sizes


def _run_adam(sizes, dtype=torch.float32):
    params, grads, (exp_avgs, exp_avg_sqs) = _tensors(sizes, 1, dtype)
    for step in range(1, 4):
        assert native_adam.adam_update(params, grads, exp_avgs, exp_avg_sqs, [], [step], **ADAM)
    return params, exp_avgs, exp_avg_sqs


def test_the_team_comes_from_torchs_openmp_runtime():
    """torch's CPU build here runs on OpenMP; the loops are handed its functions."""
    assert "OpenMP" in torch.__config__.parallel_info()
    assert None not in _entry.openmp_team_functions()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("threads", [2, 3])
@pytest.mark.parametrize("run, module", [(_run_rprop, native_rprop), (_run_adam, native_adam)])
def test_a_large_call_runs_on_a_team_of_torchs_size(
    monkeypatch, torch_threads, threads, run, module, dtype
):
    """The parts run are as many as torch's threads (Adam's loop takes MKL's roots
    on every member), and the numbers are those of one thread."""
    function = "_adam_function" if module is native_adam else "_function"
    monkeypatch.setattr(module, "MIN_NUMEL_PER_THREAD", 1000)
    sizes = [5, 2500, 0, 1203]
    torch_threads(1)
    alone = run(sizes, dtype)
    torch_threads(threads)
    recorder = _record(monkeypatch, module, function, dtype)
    together = run(sizes, dtype)
    assert recorder.parts == [threads] * 3
    for a, b in zip(alone, together, strict=True):
        for x, y in zip(a, b, strict=True):
            assert torch.equal(x, y)


def test_a_call_below_the_threshold_stays_on_the_calling_thread(monkeypatch, torch_threads):
    """A tiny call must never wait on a pool: 1000 x 10 elements is one part."""
    torch_threads(2)
    recorder = _record(monkeypatch, native_rprop)
    _run_rprop([10] * 1000)
    assert recorder.parts == [1] * 3
    assert _entry.NUMEL_PER_THREAD >= 1 << 20


def test_without_a_runtime_every_call_is_one_part_with_the_same_numbers(monkeypatch, torch_threads):
    monkeypatch.setattr(native_rprop, "MIN_NUMEL_PER_THREAD", 1000)
    torch_threads(2)
    sizes = [3000, 17]
    with_team = _run_rprop(sizes)
    lib = native.library()
    lib.pyroopt_use_openmp(None, None, None)
    try:
        recorder = _record(monkeypatch, native_rprop)
        alone = _run_rprop(sizes)
    finally:
        lib.pyroopt_use_openmp(*_entry.openmp_team_functions())
    assert recorder.parts == [1] * 3
    for a, b in zip(with_team, alone, strict=True):
        for x, y in zip(a, b, strict=True):
            assert torch.equal(x, y)


def test_one_missing_function_turns_threads_off(monkeypatch, torch_threads):
    monkeypatch.setattr(native_rprop, "MIN_NUMEL_PER_THREAD", 1000)
    torch_threads(2)
    lib = native.library()
    parallel, _, size = _entry.openmp_team_functions()
    lib.pyroopt_use_openmp(ctypes.c_void_p(parallel), None, ctypes.c_void_p(size))
    try:
        recorder = _record(monkeypatch, native_rprop)
        _run_rprop([4000])
    finally:
        lib.pyroopt_use_openmp(*_entry.openmp_team_functions())
    assert recorder.parts == [1] * 3
