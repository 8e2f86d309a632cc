"""pyroopt's numbers are pyro.optim's bit for bit in every floating dtype the CPU steps:
float16 and bfloat16 (which take the chains of torch ops in pyroopt.kernels), float32
and float64 (the native loops), for every rule pyroopt steps with its own kernels and for
per-parameter clipping; and on complex parameters, for the rules that step them.

Each test builds the same parameters twice with ``pyro.param``, steps one set with
pyro.optim's optimizer and one with pyroopt's, and compares raw bit patterns (so a
NaN, or the sign of a zero, counts too)."""

from __future__ import annotations

import pyro
import pyro.optim
import pytest
import torch
from pyro.optim.adagrad_rmsprop import AdagradRMSProp as PyroAdagradRMSProp

import pyroopt
from pyroopt.kernels._coef import per_param
from pyroopt.kernels.adagrad_rmsprop import AdagradRMSPropRule
from pyroopt.kernels.base import Batch

DTYPES = [torch.float16, torch.bfloat16, torch.float32, torch.float64]
DTYPE_IDS = ["f16", "bf16", "f32", "f64"]
#: a scalar, sizes about vector widths (torch's kernels end a tensor with a scalar
#: tail), a matrix, and one that torch's kernels split between two threads
SHAPES = [(), (1,), (3,), (7,), (8,), (9,), (17,), (4, 5), (33,), (1000,), (40001,)]
STEPS = 12
#: bit patterns of the same width as each dtype
BITS = {
    torch.float16: torch.int16,
    torch.bfloat16: torch.int16,
    torch.float32: torch.int32,
    torch.float64: torch.int64,
}


#: every option of every rule, several at a time
CONFIGS = [
    ("SGD", {"lr": 0.05, "momentum": 0.9}),
    ("SGD", {"lr": 0.05, "momentum": 0.9, "dampening": 0.3, "weight_decay": 0.01}),
    ("SGD", {"lr": 0.05, "momentum": 0.9, "nesterov": True, "maximize": True}),
    ("SGD", {"lr": 0.05, "weight_decay": 0.01, "maximize": True}),
    ("Adam", {"lr": 0.03}),
    ("Adam", {"lr": 0.03, "amsgrad": True, "maximize": True}),
    ("Adam", {"lr": 0.03, "weight_decay": 0.1, "maximize": True}),
    ("Adam", {"lr": 0.03, "weight_decay": 0.1, "decoupled_weight_decay": True}),
    ("AdamW", {"lr": 0.03, "weight_decay": 0.1}),
    ("AdamW", {"lr": 0.03, "weight_decay": 0.1, "amsgrad": True, "maximize": True}),
    ("RMSprop", {"lr": 0.01}),
    ("RMSprop", {"lr": 0.01, "centered": True, "weight_decay": 0.1}),
    ("RMSprop", {"lr": 0.01, "momentum": 0.5, "maximize": True}),
    ("RMSprop", {"lr": 0.01, "centered": True, "momentum": 0.5, "alpha": 0.3, "maximize": True}),
    ("Rprop", {"lr": 0.01}),
    ("Rprop", {"lr": 0.03, "etas": (0.3, 1.7), "step_sizes": (1e-4, 0.1), "maximize": True}),
    ("Adagrad", {"lr": 0.05}),
    ("Adagrad", {"lr": 0.05, "lr_decay": 0.01, "weight_decay": 0.1}),
    ("Adagrad", {"lr": 0.05, "initial_accumulator_value": 0.2, "maximize": True}),
    ("ClippedAdam", {"lr": 0.03}),
    ("ClippedAdam", {"lr": 0.03, "clip_norm": 0.3, "lrd": 0.97}),
    ("ClippedAdam", {"lr": 0.03, "weight_decay": 0.1, "centered_variance": True}),
    ("AdagradRMSProp", {"eta": 0.3, "t": 0.1}),
    ("AdagradRMSProp", {"eta": 1.0, "t": 0.7, "delta": 0.1}),
]
IDS = [f"{name}-" + "-".join(f"{k}={v}" for k, v in args.items()) for name, args in CONFIGS]


def _grad(shape, step, k, dtype):
    gen = torch.Generator().manual_seed(1000 * step + k)
    g = torch.randn(shape, generator=gen, dtype=torch.float64)
    flat = g.view(-1)
    flat[::5] = 0.0  # exact zeros
    flat[2::11] *= 30.0  # beyond ClippedAdam's clip_norm
    return g.to(dtype)


def _has_grad(k, step, schedule):
    """Under ``"ragged"``, parameter k joins at step k // 3 and the odd ones skip step 6:
    step counts differ, and some calls pass only some parameters (per-tensor paths).
    Under ``"uniform"`` every parameter steps every time (one flat buffer)."""
    if schedule == "uniform":
        return True
    return step >= k // 3 and not (step == 6 and k % 2)


def _bits(t):
    t = t.detach()
    if t.is_complex():
        t = torch.view_as_real(t)
    return t.contiguous().view(BITS[t.dtype])


def train(module, name, args, dtype, schedule="ragged", shapes=SHAPES, clip_args=None):
    """Step ``pyro.param``s of ``shapes`` with ``module``'s optimizer ``name``; return the
    final parameters and each parameter's optimizer state, by name."""
    pyro.clear_param_store()
    torch.manual_seed(0)
    inits = {
        f"p{k:02d}": torch.randn(s, dtype=torch.float64).to(dtype) for k, s in enumerate(shapes)
    }
    params = [pyro.param(n, v).unconstrained() for n, v in inits.items()]
    factory = getattr(module, name)
    optim = factory(args) if clip_args is None else factory(args, clip_args)
    for step in range(STEPS):
        for k, p in enumerate(params):
            p.grad = _grad(p.shape, step, k, dtype) if _has_grad(k, step, schedule) else None
        optim(params)
    state = optim.get_state()
    return {n: p.detach().clone() for n, p in zip(inits, params, strict=True)}, state


def assert_same_bits(actual, expected, where=""):
    """Every tensor in ``expected`` (nested dicts and lists) has ``actual``'s bits."""
    if isinstance(expected, torch.Tensor):
        assert isinstance(actual, torch.Tensor), where
        assert actual.dtype == expected.dtype and actual.shape == expected.shape, where
        if expected.is_floating_point() or expected.is_complex():
            differ = (_bits(actual) != _bits(expected)).sum().item()
            assert differ == 0, f"{where}: {differ} of {expected.numel()} elements differ"
        else:
            assert torch.equal(actual, expected), where
    elif isinstance(expected, dict):
        for key in expected:
            assert key in actual, f"{where}: {key!r} missing"
            assert_same_bits(actual[key], expected[key], f"{where}[{key!r}]")
    elif isinstance(expected, (list, tuple)):
        assert len(actual) == len(expected), where
        for i, (a, e) in enumerate(zip(actual, expected, strict=True)):
            assert_same_bits(a, e, f"{where}[{i}]")
    else:
        assert actual == expected, f"{where}: {actual!r} != {expected!r}"


@pytest.mark.parametrize("schedule", ["uniform", "ragged"])
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("name,args", CONFIGS, ids=IDS)
def test_rule_is_pyro_optims_bit_for_bit_in_every_dtype(name, args, dtype, schedule):
    expected, expected_state = train(pyro.optim, name, args, dtype, schedule)
    actual, actual_state = train(pyroopt, name, args, dtype, schedule)
    assert_same_bits(actual, expected, "params")
    assert_same_bits(
        {n: s["state"] for n, s in actual_state.items()},
        {n: s["state"] for n, s in expected_state.items()},
        "state",
    )


CLIPS = [
    {"clip_norm": 0.3},
    {"clip_norm": 1.7},
    {"clip_value": 0.3},
    {"clip_norm": 2.1, "clip_value": 0.7},
]


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize(
    "clip_args", CLIPS, ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items())
)
@pytest.mark.parametrize("name,args", [("SGD", {"lr": 0.05}), ("Adam", {"lr": 0.03})])
def test_clipping_is_pyro_optims_bit_for_bit_in_every_dtype(name, args, clip_args, dtype):
    expected, _ = train(pyro.optim, name, args, dtype, "uniform", clip_args=clip_args)
    actual, _ = train(pyroopt, name, args, dtype, "uniform", clip_args=clip_args)
    assert_same_bits(actual, expected, "params")


def test_clipping_by_norm_in_mixed_dtypes_is_pyro_optims():
    """Norms of gradients of several dtypes are each clipped in their own dtype."""
    results = []
    for module in (pyro.optim, pyroopt):
        pyro.clear_param_store()
        torch.manual_seed(0)
        dtypes = [torch.float16, torch.float32, torch.bfloat16, torch.float64]
        params = [
            pyro.param(f"p{k}", torch.randn(9, dtype=torch.float64).to(dt)).unconstrained()
            for k, dt in enumerate(dtypes)
        ]
        optim = module.SGD({"lr": 0.1}, {"clip_norm": 0.3})
        for step in range(5):
            for k, p in enumerate(params):
                p.grad = _grad(p.shape, step, k, p.dtype)
            optim(params)
        results.append([p.detach().clone() for p in params])
    assert_same_bits(results[1], results[0], "params")


COMPLEX_CONFIGS = [
    ("AdagradRMSProp", {"eta": 0.3, "t": 0.1}),
    ("AdagradRMSProp", {"eta": 1.0, "t": 0.7, "delta": 0.1}),
    ("Adam", {"lr": 0.03, "amsgrad": True}),
    ("SGD", {"lr": 0.05, "momentum": 0.9}),
    ("RMSprop", {"lr": 0.01, "centered": True}),
    ("Adagrad", {"lr": 0.05}),
]


def _complex_grad(shape, step, k, dtype):
    real = torch.float32 if dtype == torch.complex64 else torch.float64
    g = torch.complex(_grad(shape, step, k, real), _grad(shape, step + 77, k, real))
    g.view(-1)[1::7] = -1.0  # imaginary part +0: g * g has imaginary part -0
    return g


@pytest.mark.parametrize("dtype", [torch.complex64, torch.complex128], ids=["c64", "c128"])
@pytest.mark.parametrize(
    "name,args", COMPLEX_CONFIGS, ids=[f"{n}-{i}" for i, (n, _) in enumerate(COMPLEX_CONFIGS)]
)
def test_complex_parameters_are_pyro_optims_bit_for_bit(name, args, dtype):
    results = []
    for module in (pyro.optim, pyroopt):
        pyro.clear_param_store()
        torch.manual_seed(0)
        params = [
            pyro.param(f"z{k}", torch.randn(s, dtype=dtype)).unconstrained()
            for k, s in enumerate([(3,), (17,), (4, 5)])
        ]
        optim = getattr(module, name)(args)
        for step in range(STEPS):
            for k, p in enumerate(params):
                p.grad = _complex_grad(p.shape, step, k, dtype)
            optim(params)
        results.append(([p.detach().clone() for p in params], optim.get_state()))
    (actual, actual_state), (expected, expected_state) = results[1], results[0]
    assert_same_bits(actual, expected, "params")
    assert_same_bits(
        {n: s["state"] for n, s in actual_state.items()},
        {n: s["state"] for n, s in expected_state.items()},
        "state",
    )


@pytest.mark.parametrize("dtype", [torch.complex64, torch.complex128], ids=["c64", "c128"])
@pytest.mark.parametrize("args", [{"eta": 0.3, "t": 0.1}, {"eta": 1.0, "t": 0.7, "delta": 0.1}])
def test_adagrad_rmsprop_rule_steps_complex_tensors_as_pyro(args, dtype):
    """pyro's AdagradRMSProp squares a complex gradient in complex arithmetic; so does
    the rule, given the complex tensors themselves (``complex_as_real`` is False)."""
    rule = AdagradRMSPropRule()
    assert not rule.complex_as_real
    torch.manual_seed(0)
    inits = [torch.randn(s, dtype=dtype) for s in [(3,), (17,), (4, 5)]]
    theirs = [p.clone().requires_grad_() for p in inits]
    reference = PyroAdagradRMSProp(theirs, **args)
    ours = [p.clone() for p in inits]
    group = {"eta": 1.0, "delta": 1e-16, "t": 0.1, **args}
    sums = [torch.zeros_like(p) for p in ours]
    for step in range(STEPS):
        grads = [_complex_grad(p.shape, step, k, dtype) for k, p in enumerate(ours)]
        for p, g in zip(theirs, grads, strict=True):
            p.grad = g.clone()
        reference.step()
        rule.update(Batch(ours, grads, {"sum": sums}, [step + 1]), group, per_param)
        assert_same_bits(ours, [p.detach() for p in theirs], f"params at step {step}")
        assert_same_bits(sums, [reference.state[p]["sum"] for p in theirs], f"sums at {step}")
