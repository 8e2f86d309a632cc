"""Whole SVI runs: swapping pyro.optim for pyroopt changes nothing in the numbers."""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import pyro.optim
import pytest
import torch
from pyro.infer import SVI, Trace_ELBO
from pyro.infer.autoguide import AutoNormal
from torch.testing import assert_close

import pyroopt


def regression_data(n=50, d=4):
    torch.manual_seed(1)
    x = torch.randn(n, d)
    y = x @ torch.linspace(-1, 1, d) + 0.5 + 0.1 * torch.randn(n)
    return x, y


def bayesian_regression(x, y=None):
    d = x.shape[-1]
    weight = pyro.sample("weight", dist.Normal(0.0, 1.0).expand([d]).to_event(1))
    bias = pyro.sample("bias", dist.Normal(0.0, 10.0))
    sigma = pyro.sample("sigma", dist.LogNormal(0.0, 1.0))
    with pyro.plate("data", x.shape[0]):
        pyro.sample("obs", dist.Normal(x @ weight + bias, sigma), obs=y)


def svi_losses(optim, steps=40):
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    x, y = regression_data()
    guide = AutoNormal(bayesian_regression)
    svi = SVI(bayesian_regression, guide, optim, Trace_ELBO())
    losses = [svi.step(x, y) for _ in range(steps)]
    params = {k: v.detach().clone() for k, v in pyro.get_param_store().items()}
    return torch.tensor(losses), params


@pytest.mark.parametrize(
    "name,args",
    [
        ("Adam", {"lr": 0.05}),
        ("SGD", {"lr": 0.001, "momentum": 0.9}),
        ("RMSprop", {"lr": 0.01}),
        ("ClippedAdam", {"lr": 0.05, "clip_norm": 5.0}),
    ],
)
def test_svi_losses_match_pyro_optim_step_for_step(name, args):
    expected_losses, expected_params = svi_losses(getattr(pyro.optim, name)(args))
    actual_losses, actual_params = svi_losses(getattr(pyroopt, name)(args))
    assert_close(actual_losses, expected_losses, rtol=1e-10, atol=1e-10)
    assert expected_params.keys() == actual_params.keys()
    for key in expected_params:
        assert_close(actual_params[key], expected_params[key], rtol=1e-10, atol=1e-12)


def test_svi_training_converges():
    losses, params = svi_losses(pyroopt.Adam({"lr": 0.05}), steps=300)
    assert losses[-20:].mean() < losses[:20].mean() - 50
    assert_close(params["AutoNormal.locs.weight"], torch.linspace(-1, 1, 4), rtol=0, atol=0.15)
