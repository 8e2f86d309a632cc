"""Update rules against torch.optim, on every engine path: flat or per tensor, fused or not."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch.testing import assert_close

from pyroopt import engine
from pyroopt.engine import RuleBucket, full_group
from pyroopt.kernels import RULES

TOL = {"rtol": 1e-10, "atol": 1e-12}


def _combos(cls, grid):
    keys = list(grid)
    return [
        (cls, dict(zip(keys, values, strict=True))) for values in itertools.product(*grid.values())
    ]


CONFIGS = [
    *_combos(
        torch.optim.Adam,
        {
            "lr": [0.05],
            "amsgrad": [False, True],
            "weight_decay": [0.0, 0.1],
            "maximize": [False, True],
            "decoupled_weight_decay": [False, True],
        },
    ),
    *_combos(
        torch.optim.AdamW, {"lr": [0.05], "amsgrad": [False, True], "weight_decay": [0.0, 0.1]}
    ),
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
            "momentum": [0.0, 0.5],
            "centered": [False, True],
            "weight_decay": [0.0, 0.1],
            "maximize": [False, True],
        },
    ),
]
# nesterov needs momentum > 0 and no dampening in torch
CONFIGS = [
    (cls, args)
    for cls, args in CONFIGS
    if not (args.get("nesterov") and (args["momentum"] == 0 or args["dampening"] != 0))
]
IDS = [
    f"{cls.__name__}-" + "-".join(f"{k}={v}" for k, v in args.items() if k != "lr")
    for cls, args in CONFIGS
]

SHAPES = {"a": (3,), "b": (2, 4), "empty": (0,), "late": (5,)}


def grad_of(p, step, i):
    return torch.sin(3 * p.detach() + step) + 0.1 * p.detach() + 0.05 * i


def run_pair(cls, args, *, mixed, steps=24):
    """Step a RuleBucket and torch's optimizer side by side; yield both param lists."""
    torch.manual_seed(0)
    inits = {n: torch.randn(s) for n, s in SHAPES.items()}
    ours = {n: v.clone().requires_grad_() for n, v in inits.items()}
    theirs = {n: v.clone().requires_grad_() for n, v in inits.items()}
    group = full_group(cls, args, ours["a"])
    bucket = RuleBucket(cls, group, RULES[cls])
    reference = cls([theirs["a"]], **args, foreach=False)
    for name in SHAPES:
        if name != "late":
            bucket.add(ours[name])
            if name != "a":
                reference.param_groups[0]["params"].append(theirs[name])
    for step in range(steps):
        if mixed and step == 6:
            bucket.add(ours["late"])
            reference.param_groups[0]["params"].append(theirs["late"])
        for i, name in enumerate(SHAPES):
            for params in (ours, theirs):
                p = params[name]
                none = mixed and ((name == "b" and step in (3, 4)) or (name == "a" and step == 9))
                p.grad = None if none else grad_of(p, step, i)
        passed = [p for p in bucket.params if not (mixed and step == 12 and p is ours["a"])]
        if mixed and step == 12:
            theirs["a"].grad = None
        bucket.step(bucket.order(passed))
        reference.step()
        yield step, ours, theirs


@pytest.mark.parametrize("cls,args", CONFIGS, ids=IDS)
@pytest.mark.parametrize("layout", ["flat", "per-tensor", "pieces"])
@pytest.mark.parametrize("fused", [True, False], ids=["fused", "foreach"])
@pytest.mark.parametrize("mixed", [False, True], ids=["uniform", "mixed-steps"])
def test_rule_matches_torch(monkeypatch, cls, args, layout, fused, mixed):
    monkeypatch.setattr(engine, "FLAT_MAX_AVG_NUMEL", 1 << 30 if layout == "flat" else 0)
    if layout == "pieces":  # cut (2, 4) parameters into slices, batch the small ones
        monkeypatch.setattr(engine, "CHAIN_PIECE_NUMEL", 3)
    if not fused:
        monkeypatch.setattr(engine, "_get_fused_kernels_supported_devices", lambda: [])
    for step, ours, theirs in run_pair(cls, args, mixed=mixed):
        for name in SHAPES:
            assert_close(
                ours[name], theirs[name], **TOL, msg=lambda m, n=name, s=step: f"{n}@{s}: {m}"
            )
