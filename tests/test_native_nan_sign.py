"""The native loops carry NaN as torch does, bit for bit: sign and payload.

A NaN in a gradient, a parameter or a state tensor goes through every loop (SGD, Adam,
AdamW, RMSprop, Adagrad, Rprop, ClippedAdam, AdagradRMSProp), with and without
``maximize``, in float32 and float64, and every parameter and state tensor must hold
the bits torch's single-tensor loop (pyro's class, for pyro's optimizers) gives it.
``torch.equal`` treats NaN != NaN, so raw bit patterns are compared.

Each element meets NaN from one source only: where two NaNs of different bits meet in
one operation, x86 keeps the first operand's, and which one is first is the compiler's
choice, in torch's kernels as in pyroopt's. Adam's ``amsgrad`` is left out: torch's
``maximum`` gives NaN the bits 0xffffffff in its vector body and 0x7fc00000 in its scalar
tail, so torch's own bits depend on where an element sits in its tensor.
"""

from __future__ import annotations

import pytest
import torch
from pyro.optim.adagrad_rmsprop import AdagradRMSProp as PyroAdagradRMSProp
from pyro.optim.clipped_adam import ClippedAdam as PyroClippedAdam

from pyroopt import native
from pyroopt.engine import full_group
from pyroopt.kernels.base import Batch
from pyroopt.registry import RULES

SIZES = (1, 3, 15, 17, 33, 100, 1037)
STEPS = 5
BITS = {torch.float32: torch.int32, torch.float64: torch.int64}
#: quiet NaNs: torch's and Python's, x86's default (negative), and two with payloads
NAN_BITS = {
    torch.float32: [0x7FC00000, 0xFFC00000, 0x7FC0BEEF, 0xFFE00001],
    torch.float64: [
        0x7FF8000000000000,
        0xFFF8000000000000,
        0x7FF800000000BEEF,
        0xFFFC000000000001,
    ],
}


def _configs(cls, args_list, maximize=True):
    for args in args_list:
        for m in (False, True) if maximize else (False,):
            yield cls, {**args, "maximize": m} if maximize else args


CONFIGS = [
    *_configs(
        torch.optim.SGD,
        [
            {"lr": 0.05},
            {"lr": 0.05, "weight_decay": 0.01},
            {"lr": 0.05, "momentum": 0.9, "dampening": 0.3, "weight_decay": 0.01},
            {"lr": 0.05, "momentum": 0.9, "nesterov": True},
        ],
    ),
    *_configs(torch.optim.Adam, [{"lr": 0.03}, {"lr": 0.03, "weight_decay": 0.1}]),
    *_configs(torch.optim.AdamW, [{"lr": 0.03, "weight_decay": 0.1}]),
    *_configs(
        torch.optim.RMSprop,
        [
            {"lr": 0.01},
            {"lr": 0.01, "weight_decay": 0.1, "momentum": 0.5},
            {"lr": 0.01, "centered": True, "momentum": 0.5, "alpha": 0.3},
        ],
    ),
    *_configs(
        torch.optim.Adagrad,
        [{"lr": 0.05}, {"lr": 0.05, "weight_decay": 0.1, "initial_accumulator_value": 0.2}],
    ),
    *_configs(torch.optim.Rprop, [{"lr": 0.01}]),
    *_configs(
        PyroClippedAdam,
        [
            {"lr": 0.03, "clip_norm": 0.5, "weight_decay": 0.1},
            {"lr": 0.03, "centered_variance": True},
        ],
        maximize=False,
    ),
    *_configs(PyroAdagradRMSProp, [{"eta": 0.3, "t": 0.4}], maximize=False),
]
IDS = [f"{cls.__name__}-" + "-".join(f"{k}={v}" for k, v in a.items()) for cls, a in CONFIGS]


def _nan(bits, dtype):
    width = torch.iinfo(BITS[dtype]).bits
    signed = bits - (1 << width) if bits >= 1 << (width - 1) else bits
    return torch.tensor(signed, dtype=BITS[dtype]).view(dtype)


def _plant_nans(t, start, every):
    """NaNs of every kind at ``start``, ``start + every``, ...; in place."""
    flat = t.view(-1)
    kinds = NAN_BITS[t.dtype]
    for j, i in enumerate(range(start % max(flat.numel(), 1), flat.numel(), every)):
        flat[i] = _nan(kinds[j % len(kinds)], t.dtype)


def _grad(n, step, k, dtype, source):
    gen = torch.Generator().manual_seed(100 * step + k)
    g = torch.randn(n, generator=gen, dtype=dtype)
    g[::5] = 0.0
    if source == "grad" and step in (1, 3):
        _plant_nans(g, 3 + step + k, 7)
    if source == "inf" and step in (1, 3):
        g[step + k :: 9] = float("inf")
        g[step + k + 4 :: 9] = float("-inf")
    return g


def _bits(t):
    return t.detach().contiguous().view(BITS[t.dtype])


def _differ(ours, theirs):
    return (_bits(ours) != _bits(theirs)).nonzero().view(-1).tolist()


def _reference(cls, params, args):
    if cls in (PyroAdagradRMSProp, PyroClippedAdam):
        return cls(params, **args)
    return cls(params, **args, foreach=False)


@pytest.mark.parametrize("source", ["grad", "param", "state", "inf"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("cls,args", CONFIGS, ids=IDS)
def test_nan_keeps_torchs_sign_and_payload(cls, args, dtype, source):
    assert native.library() is not None, native.unavailable_reason()
    rule = RULES[cls]
    torch.manual_seed(0)
    inits = [torch.randn(n, dtype=dtype) for n in SIZES]
    if source == "param":
        for k, p in enumerate(inits):
            _plant_nans(p, 5 + k, 11)
    theirs = [p.clone().requires_grad_() for p in inits]
    reference = _reference(cls, theirs, args)
    ours = [p.clone() for p in inits]
    group = full_group(cls, args, ours[0])
    keys = rule.state_keys(group)
    state = {
        key: [rule.initial_state(p, group).get(key, torch.zeros_like(p)) for p in ours]
        for key in keys
    }
    for step in range(STEPS):
        grads = [_grad(n, step, k, dtype, source) for k, n in enumerate(SIZES)]
        if source == "state" and step == 2:  # every state tensor has been made by now
            for j, key in enumerate(keys):
                for k, (p, s) in enumerate(zip(theirs, state[key], strict=True)):
                    _plant_nans(reference.state[p][key], 2 + 4 * j + k, 13)
                    _plant_nans(s, 2 + 4 * j + k, 13)
        for p, g in zip(theirs, grads, strict=True):
            p.grad = g.clone()
        reference.step()
        batch = Batch(ours, [g.clone() for g in grads], state, [step + 1])
        assert rule.native_update(batch, group)
        for k, (a, b) in enumerate(zip(ours, theirs, strict=True)):
            assert not _differ(a, b), f"param {k} at step {step}: elements {_differ(a, b)[:8]}"
            for key in keys:
                mine, torchs = state[key][k], reference.state[b][key]
                assert not _differ(mine, torchs), (
                    f"{key} {k} at step {step}: {_differ(mine, torchs)[:8]}"
                )
