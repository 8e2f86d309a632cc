"""Every case of the registry (tests/registry.py), stepped by every implementation
(:data:`pyroopt.dispatch.KINDS`, forced with :func:`pyroopt.dispatch.forced`), in
float32, float64 and the half types: each parameter and each state tensor has
pyro.optim's bits after every step, and ``implementations()`` names what stepped it.

The run is ragged as SVI runs are: some parameters join late (a new layout), one step
passes only some of them and another passes some without a gradient (the per-tensor
paths), and the others pass all (the flat paths, at one step count and at several).
Forced to a kind faster than a case allows (a native loop for a half type, say), a bucket
takes the usual implementation: that is checked on the first step, with the reason
``implementations()`` gives.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

import pyro
import pytest
import torch
from registry import BY_NAME, INFOS, NATIVE, OptimizerInfo

from pyroopt import dispatch
from pyroopt.native import selfcheck
from pyroopt.rule_bucket import RuleBucket

#: name -> (shape, first step it is passed): vector-width boundaries, a scalar, matrices,
#: an empty one; the last four join late
SHAPES = {
    "p0": ((), 0),
    "p1": ((1,), 0),
    "p2": ((7,), 0),
    "p3": ((4, 5), 0),
    "p4": ((9,), 0),
    "p5": ((17,), 0),
    "late.a": ((8,), 2),
    "late.b": ((3, 7), 2),
    "late.c": ((0,), 2),
    "late.d": ((33,), 2),
}
STEPS = 7


def sits_out(step: int, k: int) -> str | None:
    """How the ``k``-th parameter sits out ``step``, if it does: at step 3 the odd ones
    are not passed, at step 4 every third is passed without a gradient."""
    if step == 3 and k % 2:
        return "not passed"
    if step == 4 and k % 3 == 0:
        return "no gradient"
    return None


BITS = {
    torch.float16: torch.int16,
    torch.bfloat16: torch.int16,
    torch.float32: torch.int32,
    torch.float64: torch.int64,
}
DTYPE_IDS = {
    torch.float32: "f32",
    torch.float64: "f64",
    torch.float16: "f16",
    torch.bfloat16: "bf16",
}


@functools.cache
def _gradient(shape: torch.Size, step: int, k: int, dtype: torch.dtype) -> torch.Tensor:
    """Random values with exact zeros, negative zeros and some beyond ClippedAdam's clip
    (read only: pyro's ClippedAdam clamps the gradient it is given in place)."""
    gen = torch.Generator().manual_seed(1000 * step + k)
    g = torch.randn(shape, generator=gen, dtype=torch.float64)
    flat = g.view(-1)
    flat[::5] = 0.0
    flat[3::13] = -0.0
    flat[2::11] *= 30.0
    return g.to(dtype)


def _params(info: OptimizerInfo) -> dict[str, tuple[torch.Size, int]]:
    """The parameters of :data:`SHAPES` that ``info``'s class can step."""
    sized = {name: (torch.Size(shape), first) for name, (shape, first) in SHAPES.items()}
    return {
        name: (shape, first) for name, (shape, first) in sized.items() if info.steps_shape(shape)
    }


def _snapshot(state: dict[str, Any]) -> dict[str, Any]:
    """A copy of pyro.optim's ``get_state()`` (its tensors are the optimizers' own)."""
    return {
        name: {
            "state": {i: {k: _clone(v) for k, v in s.items()} for i, s in entry["state"].items()},
            "param_groups": [dict(g) for g in entry["param_groups"]],
        }
        for name, entry in state.items()
    }


def _clone(value: Any) -> Any:
    return value.detach().clone() if isinstance(value, torch.Tensor) else value


def train(
    make_optim,
    info: OptimizerInfo,
    dtype: torch.dtype,
    *,
    steps: int = STEPS,
    copy_state: bool = False,
):
    """Run ``steps`` steps of the ragged program; return the optimizer and, after each
    step, every parameter and the optimizer state (``get_state()``, copied if
    ``copy_state``)."""
    pyro.clear_param_store()
    gen = torch.Generator().manual_seed(0)
    params = _params(info)
    inits = {
        name: torch.randn(shape, generator=gen, dtype=torch.float64).to(dtype)
        for name, (shape, _) in params.items()
    }
    optim = make_optim()
    trajectory = []
    for step in range(steps):
        passed = set()  # a set, as SVI passes them
        for k, (name, (shape, first)) in enumerate(params.items()):
            how = sits_out(step, k)
            if step < first or how == "not passed":
                continue
            p = pyro.param(name, inits[name]).unconstrained()
            g = None if how == "no gradient" else _gradient(shape, step, k, dtype).clone()
            p.grad = g.to_sparse() if info.sparse and g is not None else g
            passed.add(p)
        optim(passed)
        values = {
            n: pyro.param(n).unconstrained().detach().clone()
            for n in params
            if n in pyro.get_param_store()
        }
        state = optim.get_state()
        trajectory.append((values, _snapshot(state) if copy_state else state))
    return optim, trajectory


_REFERENCE: dict[tuple[str, str, torch.dtype], list] = {}


def reference(info: OptimizerInfo, args: dict[str, Any], dtype: torch.dtype) -> list:
    """pyro.optim's trajectory for a case (run once, shared by the implementations)."""
    key = (info.name, info.case_id(args), dtype)
    if key not in _REFERENCE:
        _REFERENCE[key] = train(lambda: info.reference(args), info, dtype, copy_state=True)[1]
    return _REFERENCE[key]


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous().view(BITS[t.dtype]) if t.dtype in BITS else t


def assert_same(actual: Any, expected: Any, where: str) -> None:
    """``actual`` has ``expected``'s structure and values; tensors the same dtype, shape
    and bits (a NaN's payload and a zero's sign count)."""
    if isinstance(expected, torch.Tensor):
        assert isinstance(actual, torch.Tensor), f"{where}: {actual!r} is not a tensor"
        assert (actual.dtype, actual.shape) == (expected.dtype, expected.shape), where
        if expected.is_sparse:
            actual, expected = actual.to_dense(), expected.to_dense()
        differ = (_bits(actual) != _bits(expected)).view(-1).nonzero()
        if len(differ):
            i = differ[0].item()
            raise AssertionError(
                f"{where}: {len(differ)} of {expected.numel()} elements differ, first at "
                f"{i}: {actual.reshape(-1)[i].item()!r} != {expected.reshape(-1)[i].item()!r}"
            )
    elif isinstance(expected, Mapping):
        assert actual.keys() == expected.keys(), f"{where}: {list(actual)} != {list(expected)}"
        for key in expected:
            assert_same(actual[key], expected[key], f"{where}[{key!r}]")
    elif isinstance(expected, (list, tuple)):
        assert len(actual) == len(expected), where
        for i, (a, e) in enumerate(zip(actual, expected, strict=True)):
            assert_same(a, e, f"{where}[{i}]")
    else:
        assert actual == expected, f"{where}: {actual!r} != {expected!r}"


def expected_implementation(
    info: OptimizerInfo, args: dict[str, Any], dtype: torch.dtype, kind: str
) -> tuple[str, str]:
    """What steps a case forced to ``kind``, and a phrase its reason holds."""
    runs = info.runs(args, dtype)
    usual, why = info.usual(args, dtype)
    if usual == NATIVE:  # unless the library is missing or the self-check failed here
        verdict = selfcheck.implementation(dispatch.native_loop(info.constructor), dtype)
        if not verdict.startswith("native loop"):
            runs, usual, why = runs[1:], runs[1], verdict.removeprefix("torch-op chain: ")
    if kind not in runs:
        return usual, why
    if kind != usual:
        return kind, f"forced (usually {usual}: "
    return kind, ""


def _cases(stands_in: bool):
    """Every case, dtype and kind where the forced kind runs (``stands_in``), or every
    one where it cannot and the usual implementation runs instead."""
    cases = []
    for info in INFOS:
        for args in info.cases():
            for dtype in info.dtypes_of(args):
                for kind in dispatch.KINDS:
                    ran, _ = expected_implementation(info, args, dtype, kind)
                    if (ran == kind) != stands_in:
                        continue
                    name = f"{info.case_id(args)}-{DTYPE_IDS[dtype]}-{kind}"
                    cases.append(pytest.param(info, args, dtype, kind, id=name))
    return cases


def assert_reported(optim, info, args, dtype, kind) -> None:
    """``implementations()`` names what :func:`expected_implementation` says, for every
    parameter seen."""
    ran, why = expected_implementation(info, args, dtype, kind)
    said = optim.implementations()
    assert said.keys() <= _params(info).keys()
    for name, description in said.items():
        assert description.startswith(f"{ran}: ") and why in description, (name, description)
        if ran != kind or why == "":
            assert "forced" not in description, (name, description)


@pytest.mark.parametrize("info,args,dtype,kind", _cases(stands_in=True))
def test_every_implementation_gives_pyro_optims_bits(info, args, dtype, kind):
    expected = reference(info, args, dtype)
    with dispatch.forced(kind):
        optim, actual = train(lambda: info.factory(args), info, dtype)
    for step, ((values, state), (want_values, want_state)) in enumerate(
        zip(actual, expected, strict=True)
    ):
        assert_same(values, want_values, f"step {step}: parameters")
        assert_same(state, want_state, f"step {step}: state")
    assert_reported(optim, info, args, dtype, kind)
    assert optim.implementations().keys() == _params(info).keys()


@pytest.mark.parametrize("info,args,dtype,kind", _cases(stands_in=False))
def test_a_kind_that_cannot_stand_in_leaves_the_usual_one_and_says_why(info, args, dtype, kind):
    """Forced to a faster kind than can step the case, a bucket takes the usual one
    (whose run the test above compares): checked on the first step."""
    expected = reference(info, args, dtype)
    with dispatch.forced(kind):
        optim, actual = train(lambda: info.factory(args), info, dtype, steps=1)
    assert_same(actual[0], expected[0], "step 0")
    assert_reported(optim, info, args, dtype, kind)


@pytest.mark.parametrize("kind", ["native", "chain"])
def test_the_ragged_run_steps_flat_buffers_and_single_tensors(kind, monkeypatch):
    """The program reaches both of a rule bucket's paths: every parameter in one flat
    pass (at one step count and at several) and the parameters passed one by one."""
    paths = []
    for path in ("_step_flat", "_step_list"):
        real = getattr(RuleBucket, path)

        def recording(self, *args, _real=real, _path=path, **kwargs):
            paths.append(_path)
            return _real(self, *args, **kwargs)

        monkeypatch.setattr(RuleBucket, path, recording)
    info = BY_NAME["Adam"]
    with dispatch.forced(kind):
        train(lambda: info.factory(info.cases()[0]), info, torch.float32)
    assert paths == ["_step_flat"] * 3 + ["_step_list"] * 2 + ["_step_flat"] * 2
