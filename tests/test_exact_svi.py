"""Real Pyro programs in float32: pyroopt's numbers are pyro.optim's, bit for bit, and the
same from run to run whatever the hash seed, parameter creation order or thread count."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pyro
import pyro.distributions as dist
import pyro.optim
import pytest
import torch
from pyro.infer import SVI, Trace_ELBO
from pyro.infer.autoguide import AutoNormal
from pyro.nn import PyroModule, PyroSample

import pyroopt

OPTIMIZERS = [
    ("Adam", {"lr": 0.02}),
    ("ClippedAdam", {"lr": 0.02, "clip_norm": 5.0, "lrd": 0.999}),
    ("AdagradRMSProp", {"eta": 0.1}),
]


def _regression_data():
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(100, 3, generator=generator)
    y = x @ torch.tensor([1.0, -2.0, 0.5]) + 0.3 * torch.randn(100, generator=generator)
    return x, y


def _autonormal():
    x, y = _regression_data()

    def model(x, y=None):
        w = pyro.sample("w", dist.Normal(torch.zeros(3), 1.0).to_event(1))
        b = pyro.sample("b", dist.Normal(0.0, 1.0))
        sigma = pyro.sample("sigma", dist.LogNormal(0.0, 1.0))
        with pyro.plate("data", x.shape[0]):
            pyro.sample("obs", dist.Normal(x @ w + b, sigma), obs=y)

    return model, AutoNormal(model), (x, y)


class _MLP(PyroModule):
    def __init__(self) -> None:
        super().__init__()
        self.hidden = PyroModule[torch.nn.Linear](3, 8)
        self.out = PyroModule[torch.nn.Linear](8, 1)
        self.out.weight = PyroSample(dist.Normal(0.0, 1.0).expand([1, 8]).to_event(2))

    def forward(self, x, y=None):
        mean = self.out(torch.tanh(self.hidden(x))).squeeze(-1)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("obs", dist.Normal(mean, 0.5), obs=y)


def _mlp():
    x, y = _regression_data()
    model = _MLP()
    return model, AutoNormal(model), (x, y)


def _train(module, factory, args, program, steps):
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    model, guide, data = program()
    svi = SVI(model, guide, getattr(module, factory)(args), Trace_ELBO())
    losses = torch.tensor([svi.step(*data) for _ in range(steps)])
    params = {n: v.detach().clone() for n, v in pyro.get_param_store().named_parameters()}
    return losses, params


@pytest.mark.slow
@pytest.mark.parametrize("program", [_autonormal, _mlp], ids=["autonormal", "pyromodule-mlp"])
@pytest.mark.parametrize("factory,args", OPTIMIZERS, ids=[f for f, _ in OPTIMIZERS])
def test_svi_in_float32_is_pyro_optims_bit_for_bit(factory, args, program):
    torch.set_default_dtype(torch.float32)
    expected_losses, expected = _train(pyro.optim, factory, args, program, 300)
    losses, actual = _train(pyroopt, factory, args, program, 300)
    assert torch.equal(losses, expected_losses)
    assert expected.keys() == actual.keys()
    for name in expected:
        assert torch.equal(actual[name], expected[name]), name


_DETERMINISM_JOB = textwrap.dedent(
    """
    import sys
    import pyro, pyro.distributions as dist, torch
    from pyro.infer import SVI, Trace_ELBO
    import pyroopt

    reverse, threads, out = sys.argv[1] == "reverse", int(sys.argv[2]), sys.argv[3]
    torch.set_num_threads(threads)
    pyro.set_rng_seed(0)
    names = [f"site{i:02d}" for i in range(24)]
    sizes = {n: 1 + (7 * i) % 40 for i, n in enumerate(names)}
    data = torch.linspace(-2.0, 2.0, 50)

    def model():
        total = 0.0
        for n in names:
            prior = dist.Normal(0.0, 1.0).expand([sizes[n]]).to_event(1)
            total = total + pyro.sample(n, prior).sum()
        pyro.sample("obs", dist.Normal(total, 1.0).expand([50]).to_event(1), obs=data)

    def guide():
        for n in reversed(names) if reverse else names:  # creation order differs
            pyro.param(n + "_loc", torch.linspace(-0.5, 0.5, sizes[n]))
            pyro.param(n + "_scale", torch.ones(sizes[n]), constraint=dist.constraints.positive)
        for n in names:  # sampling order (the random draws) does not
            loc, scale = pyro.param(n + "_loc"), pyro.param(n + "_scale")
            pyro.sample(n, dist.Normal(loc, scale).to_event(1))

    optim = pyroopt.Adam({"lr": 0.01}, {"clip_global_norm": 10.0})
    svi = SVI(model, guide, optim, Trace_ELBO())
    losses = [svi.step() for _ in range(60)]
    params = {n: v.detach().clone() for n, v in pyro.get_param_store().named_parameters()}
    torch.save({"losses": losses, "params": params}, out)
    """
)


def test_two_processes_give_the_same_bits_whatever_the_hash_seed_order_and_threads(tmp_path):
    """Different PYTHONHASHSEED, parameter creation order and thread count: SVI hands
    the optimizer a ``set``, so any dependence on addresses or order would show here."""
    script = tmp_path / "job.py"
    script.write_text(_DETERMINISM_JOB)
    results = []
    for i, (seed, order, threads) in enumerate([("1", "forward", 1), ("2", "reverse", 2)]):
        out = tmp_path / f"run{i}.pt"
        env = {**os.environ, "PYTHONHASHSEED": seed}
        subprocess.run(
            [sys.executable, str(script), order, str(threads), str(out)], check=True, env=env
        )
        results.append(torch.load(out))
    first, second = results
    assert first["losses"] == second["losses"]
    assert first["params"].keys() == second["params"].keys()
    for name in first["params"]:
        assert torch.equal(first["params"][name], second["params"][name]), name
