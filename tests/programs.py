"""Deterministic optimization programs that run the same on pyro.optim and pyroopt.

A program creates parameters in Pyro's param store as it goes, sets gradients that
depend on the current parameter values (so any wrong update changes everything after
it), and calls the optimizer with a chosen subset of parameters each step.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import pyro
import torch
from torch import Tensor


@dataclass
class Program:
    """Which parameters exist, when they appear, and when they sit out."""

    shapes: dict[str, tuple[int, ...]] = field(
        default_factory=lambda: {
            "a": (3,),
            "layer.weight": (2, 3),
            "late": (4,),
            "skipped": (),
            "empty": (0,),
        }
    )
    appears_at: dict[str, int] = field(default_factory=lambda: {"late": 5})
    not_passed_at: dict[str, set[int]] = field(default_factory=lambda: {"skipped": {3, 4}})
    no_grad_at: dict[str, set[int]] = field(default_factory=lambda: {"skipped": {7}, "a": {2}})
    grad_scale: float = 1.0
    sparse: bool = False

    def params_at(self, step: int) -> list[Tensor]:
        """The unconstrained parameters passed to the optimizer at ``step``, grads set."""
        passed = []
        for i, (name, shape) in enumerate(self.shapes.items()):
            if step < self.appears_at.get(name, 0):
                continue
            if name not in pyro.get_param_store():
                init = torch.linspace(-1.0, 1.0, int(torch.Size(shape).numel())) + 0.1 * i
                pyro.param(name, init.reshape(shape).clone())  # a tensor of its own: seatable
            p = pyro.get_param_store().get_param(name).unconstrained()
            if step in self.no_grad_at.get(name, set()):
                p.grad = None
            else:
                with torch.no_grad():
                    g = self.grad_scale * (torch.sin(3 * p + step) + 0.1 * p + 0.05 * i)
                p.grad = g.to_sparse() if self.sparse else g
            if step not in self.not_passed_at.get(name, set()):
                passed.append(p)
        return passed


def run(
    make_optim: Callable[[], object],
    steps: int,
    program: Program | None = None,
    start: int = 0,
    optim: object | None = None,
) -> list[dict[str, Tensor]]:
    """Run ``steps`` steps; return a snapshot of every parameter after each one."""
    program = program or Program()
    optim = optim if optim is not None else make_optim()
    trajectory = []
    for step in range(start, start + steps):
        params = program.params_at(step)
        optim(set(params))  # a set, as SVI passes it: order must not matter
        trajectory.append({name: v.detach().clone() for name, v in pyro.get_param_store().items()})
    return trajectory


def fresh_store() -> None:
    pyro.clear_param_store()
    pyro.set_rng_seed(0)


def assert_same_optimizer_state(actual: dict, expected: dict) -> None:
    """Optimizer states (``{name: per-parameter state}``, as ``get_state`` gives them)
    equal in every group key and, bit for bit, every tensor."""
    assert actual.keys() == expected.keys()
    for name in expected:
        assert actual[name]["param_groups"] == expected[name]["param_groups"], name
        a, e = actual[name]["state"].get(0, {}), expected[name]["state"].get(0, {})
        assert a.keys() == e.keys(), name
        for key in e:
            assert torch.equal(torch.as_tensor(a[key]), torch.as_tensor(e[key])), (name, key)
