"""The native loops of SGD, RMSprop, Adagrad and AdagradRMSProp against torch.optim's
single-tensor loops and pyro's AdagradRMSProp, bit for bit (torch.equal), through each
rule's ``native_update``: every option, float32 and float64, many tensors per call at
different step counts, 1 to 3 threads; and what the loops decline."""

from __future__ import annotations

import itertools

import pytest
import torch
from pyro.optim.adagrad_rmsprop import AdagradRMSProp as PyroAdagradRMSProp

from pyroopt import native
from pyroopt.engine import full_group
from pyroopt.kernels.base import Batch
from pyroopt.native import _entry
from pyroopt.native import adagrad as native_adagrad
from pyroopt.native import adagrad_rmsprop as native_adagrad_rmsprop
from pyroopt.native import rmsprop as native_rmsprop
from pyroopt.native import sgd as native_sgd
from pyroopt.registry import RULES

MODULES = (native_sgd, native_rmsprop, native_adagrad, native_adagrad_rmsprop)
#: every option runs on these; 65537 and 2**20 + 3 elements run on a few options
SIZES = (1, 3, 15, 17, 1037)


def _combos(cls, grid):
    keys = list(grid)
    return [(cls, dict(zip(keys, v, strict=True))) for v in itertools.product(*grid.values())]


CONFIGS = [
    *_combos(
        torch.optim.SGD,
        {
            "lr": [0.05],
            "momentum": [0.0, 0.9],
            "dampening": [0.0, 0.3],
            "nesterov": [False, True],
            "weight_decay": [0.0, 0.01],
            "maximize": [False, True],
        },
    ),
    *_combos(
        torch.optim.RMSprop,
        {
            "lr": [0.01],
            "alpha": [0.99, 0.3],  # 1 - alpha on both sides of lerp's 0.5
            "momentum": [0.0, 0.5],
            "centered": [False, True],
            "weight_decay": [0.0, 0.1],
            "maximize": [False, True],
        },
    ),
    (torch.optim.RMSprop, {"lr": 0.01, "eps": 0.5, "centered": True, "momentum": 0.2}),
    *_combos(
        torch.optim.Adagrad,
        {
            "lr": [0.05],
            "lr_decay": [0.0, 0.01],
            "weight_decay": [0.0, 0.1],
            "initial_accumulator_value": [0.0, 0.2],
            "maximize": [False, True],
        },
    ),
    (torch.optim.Adagrad, {"lr": 0.1, "eps": 0.3}),
    *_combos(PyroAdagradRMSProp, {"eta": [0.5, 1.0], "t": [0.1, 0.5, 0.0], "delta": [1e-16, 0.1]}),
]
CONFIGS = [
    (cls, args)
    for cls, args in CONFIGS
    if not (args.get("nesterov") and (args["momentum"] == 0 or args["dampening"] != 0))
]
IDS = [
    f"{cls.__name__}-" + "-".join(f"{k}={v}" for k, v in args.items() if k != "lr")
    for cls, args in CONFIGS
]


@pytest.fixture
def threads(request, monkeypatch):
    """Run with ``request.param`` threads, a thread for every 1000 elements."""
    for module in MODULES:
        monkeypatch.setattr(module, "MIN_NUMEL_PER_THREAD", 1000)
    before = torch.get_num_threads()
    torch.set_num_threads(request.param)
    yield request.param
    torch.set_num_threads(before)


def _grad(n, step, k, dtype):
    gen = torch.Generator().manual_seed(1000 * step + k)
    g = torch.randn(n, generator=gen, dtype=dtype)
    g[::5] = 0.0  # exact zeros
    g[2::11] *= 100.0
    return g


def _has_grad(k, step):
    """Tensor k joins at step 2k and skips every 7th step after: counts differ."""
    return step >= 2 * k and (step + k) % 7 != 3


def _run(cls, args, sizes, dtype, steps):
    rule = RULES[cls]
    torch.manual_seed(0)
    inits = [torch.randn(n, dtype=dtype) for n in sizes]
    theirs = [p.clone().requires_grad_() for p in inits]
    if cls is PyroAdagradRMSProp:
        reference = PyroAdagradRMSProp(theirs, **args)
    else:
        reference = cls(theirs, **args, foreach=False)
    ours = [p.clone() for p in inits]
    group = full_group(cls, args, ours[0])
    keys = rule.state_keys(group)
    state = {key: [torch.zeros_like(p) for p in ours] for key in keys}
    counts = [0] * len(ours)
    for step in range(steps):
        live = [k for k in range(len(ours)) if _has_grad(k, step)]
        grads = {k: _grad(sizes[k], step, k, dtype) for k in live}
        for k, p in enumerate(theirs):
            p.grad = grads[k].clone() if k in grads else None
        reference.step()
        for k in live:
            counts[k] += 1
        given = [grads[k].clone() for k in live]
        batch = Batch(
            [ours[k] for k in live],
            given,
            {key: [state[key][k] for k in live] for key in keys},
            [counts[k] for k in live],
        )
        assert rule.native_update(batch, group)
        for k in live:
            assert torch.equal(ours[k], theirs[k].detach()), f"tensor {k} @ step {step}"
        assert all(torch.equal(g, grads[k]) for g, k in zip(given, live, strict=True))
    for k, p in enumerate(theirs):
        for key in keys:
            if key in reference.state[p]:
                assert torch.equal(state[key][k], reference.state[p][key]), (k, key)


def test_the_library_is_built_here():
    assert native.library() is not None, native.unavailable_reason()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("cls,args", CONFIGS, ids=IDS)
def test_matches_the_reference_bit_for_bit(cls, args, dtype):
    _run(cls, args, SIZES, dtype, steps=100)


THREADED = [
    CONFIGS[IDS.index(i)]
    for i in (
        "SGD-momentum=0.9-dampening=0.3-nesterov=False-weight_decay=0.01-maximize=True",
        "RMSprop-alpha=0.3-momentum=0.5-centered=True-weight_decay=0.1-maximize=True",
        "Adagrad-lr_decay=0.01-weight_decay=0.1-initial_accumulator_value=0.2-maximize=True",
        "AdagradRMSProp-eta=1.0-t=0.5-delta=0.1",
    )
]


@pytest.mark.parametrize("threads", [1, 2, 3], indirect=True)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("cls,args", THREADED, ids=lambda c: getattr(c, "__name__", ""))
def test_thread_count_changes_no_number(cls, args, dtype, threads):
    """Thread boundaries fall inside tensors and between them; the last tensor joins at
    step 8."""
    _run(cls, args, (1037, 3, 1500, 17, 65537), dtype, steps=12)


@pytest.mark.parametrize("threads", [1, 3], indirect=True)
@pytest.mark.parametrize("cls,args", THREADED, ids=lambda c: getattr(c, "__name__", ""))
def test_a_large_tensor(cls, args, threads):
    _run(cls, args, (2**20 + 3,), torch.float32, steps=4)


def test_torch_takes_roots_with_the_function_the_loops_call():
    """(Where torch has MKL, its sqrt is MKL's, within 1 ulp; libm's is correctly
    rounded. The loops must call the one torch calls.)"""
    for dtype in (torch.float32, torch.float64):
        x = torch.rand(4099, dtype=dtype) * 10
        if _entry.sqrt_function(dtype) is None:
            assert torch.equal(x.sqrt(), x.double().sqrt().to(dtype))


def _batch(cls, case):
    args = dict(CONFIGS[[c for c, _ in CONFIGS].index(cls)][1])
    dtype = torch.float32

    def tensors(dt=dtype, **kwargs):
        return [torch.ones(4, dtype=dt, **kwargs) for _ in range(2)]

    params, grads = tensors(), tensors()
    group = full_group(cls, args, params[0])
    keys = RULES[cls].state_keys(group)
    state = {k: tensors() for k in keys}
    if case == "half precision":
        params, grads = tensors(torch.float16), tensors(torch.float16)
        state = {k: tensors(torch.float16) for k in keys}
    elif case == "mixed dtypes":
        grads = tensors(torch.float64)
    elif case == "not contiguous":
        params = [torch.ones(4, 2, dtype=dtype)[:, 0] for _ in range(2)]
    elif case == "lazily negated":
        grads = [torch._neg_view(g) for g in tensors()]
    elif case == "sizes differ":
        grads = [torch.ones(5, dtype=dtype) for _ in range(2)]
    elif case == "meta device":
        params = tensors(device="meta")
    return Batch(params, grads, state, [3]), group


NATIVE_CLASSES = [torch.optim.SGD, torch.optim.RMSprop, torch.optim.Adagrad, PyroAdagradRMSProp]
CASES = ["half precision", "mixed dtypes", "not contiguous", "lazily negated", "sizes differ"]


@pytest.mark.parametrize("case", [*CASES, "meta device"])
@pytest.mark.parametrize("cls", NATIVE_CLASSES, ids=lambda c: c.__name__)
def test_declines_what_it_cannot_compute_and_changes_nothing(cls, case):
    batch, group = _batch(cls, case)
    tensors = [*batch.params, *batch.grads, *(t for ts in batch.state.values() for t in ts)]
    real = [t for t in tensors if t.device.type != "meta"]
    snapshot = [t.clone() for t in real]
    versions = [t._version for t in real]
    assert not RULES[cls].native_update(batch, group)
    assert all(torch.equal(t, s) for t, s in zip(real, snapshot, strict=True))
    assert [t._version for t in real] == versions


def _forget():
    native._load.cache_clear()
    for module in MODULES:
        module._function.cache_clear()


@pytest.mark.parametrize("cls", NATIVE_CLASSES, ids=lambda c: c.__name__)
def test_declines_without_the_library(cls, monkeypatch):
    monkeypatch.setenv("PYROOPT_NATIVE", "0")
    _forget()
    try:
        batch, group = _batch(cls, "none")
        assert not RULES[cls].native_update(batch, group)
        assert all(torch.equal(p, torch.ones(4)) for p in batch.params)
    finally:
        monkeypatch.delenv("PYROOPT_NATIVE")
        _forget()


@pytest.mark.parametrize("cls", NATIVE_CLASSES, ids=lambda c: c.__name__)
def test_backward_through_a_saved_parameter_after_a_native_step_raises(cls):
    param = torch.randn(5, requires_grad=True)
    loss = (param * param).sum()  # saves param for backward
    args = dict(CONFIGS[[c for c, _ in CONFIGS].index(cls)][1])
    group = full_group(cls, args, param)
    keys = RULES[cls].state_keys(group)
    state = {k: [torch.zeros(5)] for k in keys}
    with torch.no_grad():
        assert RULES[cls].native_update(Batch([param], [torch.ones(5)], state, [1]), group)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        loss.backward()


def test_adagrad_initial_state_is_torchs():
    param = torch.randn(3)
    group = full_group(torch.optim.Adagrad, {"initial_accumulator_value": 0.25}, param)
    reference = torch.optim.Adagrad([param.clone()], initial_accumulator_value=0.25)
    state = RULES[torch.optim.Adagrad].initial_state(param, group)
    assert torch.equal(state["sum"], next(iter(reference.state.values()))["sum"])
