"""Random sequences of calls, with faults injected: after every failed call all state is
bit-identical to before it, and the run ends where pyro.optim ends, bit for bit.

Each seed plays one sequence on two copies of the same parameters: pyroopt steps one,
pyro.optim the other. Parameters appear, stop being passed and come back, and between
steps pyroopt alone gets calls that must fail: a gradient of the wrong size, a parameter
of another shape, an exception or a Ctrl-C at the entry of the update. pyro.optim never
sees those calls, so equal final numbers mean they left no trace.
"""

from __future__ import annotations

import copy
import random

import pyro.optim
import pytest
import torch

import pyroopt
from pyroopt.kernels.base import UpdateRule
from pyroopt.registry import RULES

FACTORIES = {
    "Adam": {"lr": 0.05},
    "SGD": {"lr": 0.05, "momentum": 0.9},
    "RMSprop": {"lr": 0.01, "centered": True},
}


class _Injected(Exception):
    pass


class _Interrupt(KeyboardInterrupt):
    pass


def _state(optim, params):
    """Every parameter's value and optimizer state, as copies (a parameter the failed
    call introduced holds none, as in pyro.optim, which also meets it before failing)."""
    states = {
        i: optim.optim_objs[p].state_dict() for i, p in enumerate(params) if p in optim.optim_objs
    }
    return [p.detach().clone() for p in params], copy.deepcopy(
        {i: s for i, s in states.items() if s["state"]}
    )


def _same(a, b):
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and torch.equal(a, b)
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return a == b


def _failing_call(kind, optim, passed, stepped, rng, monkeypatch):
    """Make ``optim(passed)`` fail in the way ``kind`` says; returns the exception type.

    ``stepped``: the passed parameters that have optimizer state (only those refuse a
    new shape; pyro.optim steps a reshaped parameter that has none)."""
    if kind == "bad gradient":
        victim = passed[rng.randrange(len(passed))]
        victim.grad.data = torch.zeros(victim.numel() + rng.randint(1, 3))
        return (ValueError, RuntimeError)
    if kind == "reshaped":
        victim = stepped[rng.randrange(len(stepped))]
        victim.data = torch.zeros(victim.numel() + 2)
        return RuntimeError
    error = _Interrupt if kind == "interrupt" else _Injected

    def fail(self, *args, **kwargs):
        raise error

    for cls in {type(rule) for rule in RULES.values()} | {UpdateRule}:
        for where in ("update", "native_update"):
            if where in vars(cls):
                monkeypatch.setattr(cls, where, fail)
    return error


@pytest.mark.parametrize("factory", FACTORIES)
@pytest.mark.parametrize("seed", range(4))
def test_a_random_sequence_with_faults_ends_where_pyro_optim_ends(factory, seed, monkeypatch):
    torch.set_default_dtype(torch.float32)
    rng = random.Random(seed)
    gen = torch.Generator().manual_seed(seed)
    ours_optim = getattr(pyroopt, factory)(dict(FACTORIES[factory]))
    theirs_optim = getattr(pyro.optim, factory)(dict(FACTORIES[factory]))
    ours, theirs = [], []
    seen: set[int] = set()  # indices stepped at least once
    failed = 0
    for _ in range(40):
        if not ours or rng.random() < 0.25:  # a new parameter
            value = torch.randn(rng.choice([(1,), (5,), (3, 4), (17,)]), generator=gen)
            ours.append(value.clone().requires_grad_())
            theirs.append(value.clone().requires_grad_())
        picked = sorted(rng.sample(range(len(ours)), rng.randint(1, len(ours))))
        grads = [torch.randn(ours[i].shape, generator=gen) for i in picked]
        passed = [ours[i] for i in picked]
        for p, g in zip(passed, grads, strict=True):
            p.grad = g.clone()
        if rng.random() < 0.4:
            stepped = [ours[i] for i in picked if i in seen]
            kinds = ["bad gradient", "exception", "interrupt"] + (["reshaped"] if stepped else [])
            kind = rng.choice(kinds)
            saved = [(p.data, p.grad.data) for p in passed]
            before = _state(ours_optim, ours)
            with monkeypatch.context() as patch:
                expected = _failing_call(kind, ours_optim, passed, stepped, rng, patch)
                with pytest.raises(expected):
                    ours_optim(passed)
            for p, (data, grad) in zip(passed, saved, strict=True):
                p.data, p.grad.data = data, grad
            assert _same(_state(ours_optim, ours), before), f"{kind} left a trace"
            failed += 1
        ours_optim(passed)
        seen.update(picked)
        for i, g in zip(picked, grads, strict=True):
            theirs[i].grad = g.clone()
        theirs_optim([theirs[i] for i in picked])
    assert failed > 5
    for a, b in zip(ours, theirs, strict=True):
        assert torch.equal(a, b)
