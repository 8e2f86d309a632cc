"""Update rules against torch.optim bit for bit, on every engine path: flat or per tensor,
native loop or chain of torch ops, float32 and float64."""

from __future__ import annotations

import itertools

import pytest
import torch
from pyro.optim.adagrad_rmsprop import AdagradRMSProp as PyroAdagradRMSProp
from pyro.optim.clipped_adam import ClippedAdam as PyroClippedAdam
from torch.testing import assert_close

from pyroopt import optimizers, rule_bucket
from pyroopt.engine import full_group
from pyroopt.registry import RULES
from pyroopt.rule_bucket import RuleBucket


@pytest.fixture(params=["native", "chain"])
def implementation(request, monkeypatch):
    """Run each rule's native loop where it has one, or force its chain of torch ops."""
    if request.param == "chain":
        monkeypatch.setattr(RuleBucket, "_native", lambda self, batch: False)
    return request.param


@pytest.fixture(params=[torch.float32, torch.float64], ids=["f32", "f64"])
def dtype(request):
    return request.param


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
CONFIGS += [
    (torch.optim.Rprop, {"lr": 0.01}),
    (
        torch.optim.Rprop,
        {"lr": 0.05, "etas": (0.3, 1.5), "step_sizes": (1e-4, 0.1), "maximize": True},
    ),
    *_combos(
        optimizers.ClippedAdam,
        {
            "lr": [0.05],
            "clip_norm": [10.0, 0.3],
            "lrd": [1.0, 0.97],
            "weight_decay": [0.0, 0.1],
            "centered_variance": [False, True],
        },
    ),
    # alpha = 1 and t = 0 leave the RMS average constant: no fused form, the chain runs
    (torch.optim.RMSprop, {"lr": 0.01, "alpha": 1.0, "eps": 0.5}),
    (optimizers.AdagradRMSProp, {"eta": 0.5}),
    (optimizers.AdagradRMSProp, {"eta": 1.0, "t": 0.5, "delta": 0.1}),
    (optimizers.AdagradRMSProp, {"eta": 0.5, "t": 0.0}),
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
]
#: what pyroopt's own optimizers must match
REFERENCE = {optimizers.ClippedAdam: PyroClippedAdam, optimizers.AdagradRMSProp: PyroAdagradRMSProp}
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


def run_pair(cls, args, *, mixed, dtype=torch.float64, steps=24):
    """Step a RuleBucket and torch's optimizer side by side; yield both param lists and
    the gradients given to ours."""
    torch.manual_seed(0)
    inits = {n: torch.randn(s, dtype=dtype) for n, s in SHAPES.items()}
    ours = {n: v.clone().requires_grad_() for n, v in inits.items()}
    theirs = {n: v.clone().requires_grad_() for n, v in inits.items()}
    group = full_group(cls, args, ours["a"])
    bucket = RuleBucket(cls, group, RULES[cls])
    reference_cls = REFERENCE.get(cls, cls)
    if reference_cls is cls:
        args = {**args, "foreach": False}
    reference = reference_cls([theirs["a"]], **args)

    def join(name):
        bucket.add(ours[name])
        if name != "a":
            reference.param_groups[0]["params"].append(theirs[name])
        if reference_cls is PyroAdagradRMSProp:  # it creates state in __init__ only
            reference.state[theirs[name]] = {"step": 0, "sum": torch.zeros_like(theirs[name])}
        if reference_cls is torch.optim.Adagrad and name != "a":  # likewise
            value = args.get("initial_accumulator_value", 0.0)
            reference.state[theirs[name]] = {
                "step": torch.tensor(0.0),
                "sum": torch.full_like(theirs[name], value),
            }

    for name in SHAPES:
        if name != "late":
            join(name)
    for step in range(steps):
        if mixed and step == 6:
            join("late")
        given = {}
        for i, name in enumerate(SHAPES):
            for params in (ours, theirs):
                p = params[name]
                none = mixed and ((name == "b" and step in (3, 4)) or (name == "a" and step == 9))
                p.grad = None if none else grad_of(p, step, i)
            given[name] = None if ours[name].grad is None else ours[name].grad.clone()
        passed = [p for p in bucket.params if not (mixed and step == 12 and p is ours["a"])]
        if mixed and step == 12:
            theirs["a"].grad = None
        bucket.step(bucket.order(passed))
        reference.step()
        yield step, ours, theirs, given


@pytest.mark.parametrize("cls,args", CONFIGS, ids=IDS)
@pytest.mark.parametrize("layout", ["flat", "per-tensor", "pieces"])
@pytest.mark.parametrize("mixed", [False, True], ids=["uniform", "mixed-steps"])
def test_rule_matches_torch(monkeypatch, cls, args, layout, implementation, dtype, mixed):
    monkeypatch.setattr(rule_bucket, "FLAT_MAX_AVG_NUMEL", 1 << 30 if layout == "flat" else 0)
    if layout == "pieces":  # cut (2, 4) parameters into slices, batch the small ones
        monkeypatch.setattr(rule_bucket, "CHAIN_PIECE_NUMEL", 3)
    for step, ours, theirs, given in run_pair(cls, args, mixed=mixed, dtype=dtype):
        for name in SHAPES:
            assert torch.equal(ours[name], theirs[name]), (
                f"{name}@{step}: {ours[name]} {theirs[name]}"
            )
            # Gradients are left alone, except by ClippedAdam, which clamps them in
            # place as pyro's does.
            if cls is not optimizers.ClippedAdam and given[name] is not None:
                assert torch.equal(ours[name].grad, given[name]), f"{name}@{step}: grad changed"


@pytest.mark.parametrize("layout", ["flat", "per-tensor"])
def test_rprop_with_infinite_and_nan_gradients_moves_parameters_as_torch(
    monkeypatch, layout, implementation
):
    """Rprop reads only signs: torch survives an infinite gradient. So does the rule."""
    monkeypatch.setattr(rule_bucket, "FLAT_MAX_AVG_NUMEL", 1 << 30 if layout == "flat" else 0)
    fused = implementation == "native"
    inf, nan = float("inf"), float("nan")
    grads = [
        torch.tensor([1.0, -1.0, 2.0, 1.0, 0.5]),
        torch.tensor([inf, inf, -inf, nan, 1.0]),  # flips sign at 1 and 2
        torch.tensor([1.0, -2.0, inf, 3.0, -1.0]),
        torch.tensor([-1.0, 1.0, 1.0, 1.0, nan]),
    ]
    ours, theirs = torch.zeros(5, requires_grad=True), torch.zeros(5, requires_grad=True)
    group = full_group(torch.optim.Rprop, {"lr": 0.1}, ours)
    bucket = RuleBucket(torch.optim.Rprop, group, RULES[torch.optim.Rprop])
    bucket.add(ours)
    reference = torch.optim.Rprop([theirs], lr=0.1, foreach=False)
    for g in grads:
        ours.grad, theirs.grad = g.clone(), g.clone()
        bucket.step([ours])
        reference.step()
        assert_close(ours, theirs, rtol=0, atol=0, equal_nan=True)
        state = bucket.state_dict(ours)["state"][0]
        assert_close(state["step_size"], reference.state[theirs]["step_size"], rtol=0, atol=0)
        if fused:  # the chain stores NaN for an infinite gradient that flipped, torch 0
            assert_close(
                state["prev"], reference.state[theirs]["prev"], rtol=0, atol=0, equal_nan=True
            )
