"""pyroopt.optimizers against pyro-ppl's classes of the same names, on the same inputs."""

from __future__ import annotations

import pyro.optim
import pytest
import torch
from pyro.optim.adagrad_rmsprop import AdagradRMSProp as PyroAdagradRMSProp
from pyro.optim.clipped_adam import ClippedAdam as PyroClippedAdam
from pyro.optim.dct_adam import DCTAdam as PyroDCTAdam
from torch.testing import assert_close

import pyroopt
from pyroopt import optimizers

TOL = {"rtol": 1e-10, "atol": 1e-12}


def make_params(shapes, dct_dims=None, subsamples=None, dtype=torch.float64):
    torch.manual_seed(0)
    params = []
    for i, shape in enumerate(shapes):
        p = torch.randn(shape, dtype=dtype).requires_grad_()
        if dct_dims and dct_dims[i] is not None:
            p._pyro_dct_dim = dct_dims[i]
        if subsamples and subsamples[i] is not None:
            p._pyro_subsample = subsamples[i]
        params.append(p)
    return params


def clone_params(params):
    out = []
    for p in params:
        q = p.detach().clone().requires_grad_()
        for attr in ("_pyro_dct_dim", "_pyro_subsample"):
            if hasattr(p, attr):
                setattr(q, attr, getattr(p, attr))
        out.append(q)
    return out


def run_both(ours_cls, theirs_cls, args, params, steps=20, grad_scale=1.0):
    ours, theirs = params, clone_params(params)
    a, b = ours_cls(ours, **args), theirs_cls(theirs, **args)
    for step in range(steps):
        for ps in (ours, theirs):
            for i, p in enumerate(ps):
                p.grad = grad_scale * (torch.sin(3 * p.detach() + step) + 0.05 * i)
        a.step()
        b.step()
        for p, q in zip(ours, theirs, strict=True):
            assert_close(p, q, **TOL, msg=lambda m, s=step: f"step {s}: {m}")
    return a, b


@pytest.mark.parametrize("clip_norm", [10.0, 0.2], ids=["clip-inactive", "clip-active"])
@pytest.mark.parametrize("lrd", [1.0, 0.9])
@pytest.mark.parametrize("centered_variance", [False, True])
def test_clipped_adam_matches_pyro(clip_norm, lrd, centered_variance):
    args = dict(lr=0.05, clip_norm=clip_norm, lrd=lrd, centered_variance=centered_variance)
    a, b = run_both(
        optimizers.ClippedAdam,
        PyroClippedAdam,
        args,
        make_params([(3,), (2, 4), (0,)]),
        grad_scale=3,
    )
    assert a.param_groups[0]["lr"] == pytest.approx(b.param_groups[0]["lr"], rel=1e-15)
    assert a.state_dict()["state"][0]["step"] == b.state_dict()["state"][0]["step"] == 20


def test_adagrad_rmsprop_matches_pyro():
    a, b = run_both(
        optimizers.AdagradRMSProp,
        PyroAdagradRMSProp,
        dict(eta=0.5, delta=0.01, t=0.3),
        make_params([(3,), (2, 4), (0,)]),
    )
    assert a.state_dict()["state"].keys() == b.state_dict()["state"].keys()


@pytest.mark.parametrize("duration", [5, 7], ids=["fast-length", "padded"])
def test_dct_adam_on_a_time_dimension_matches_pyro(duration):
    params = make_params([(duration, 3), (4,), (2, duration)], dct_dims=[-2, None, -1])
    run_both(optimizers.DCTAdam, PyroDCTAdam, dict(lr=0.05, clip_norm=0.5, lrd=0.95), params)


def test_dct_adam_subsample_aware_matches_pyro():
    subsample = {-2: torch.tensor([0, 2, 3])}
    params = make_params([(5, 3), (4,)], subsamples=[subsample, None])
    run_both(optimizers.DCTAdam, PyroDCTAdam, dict(lr=0.05, subsample_aware=True, lrd=0.99), params)
    untouched = params[0][[1, 4]]
    assert_close(untouched, make_params([(5, 3)])[0][[1, 4]], rtol=0, atol=0)


def test_dct_adam_refuses_subsample_with_time_dimension():
    (p,) = make_params([(5, 3)], dct_dims=[-1], subsamples=[{-2: torch.tensor([0, 2])}])
    p.grad = torch.ones_like(p)
    optimizer = optimizers.DCTAdam([p], subsample_aware=True)
    with pytest.raises(ValueError, match="both _pyro_subsample and _pyro_dct_dim"):
        optimizer.step()


def test_complex_parameters_step_as_pairs_of_reals():
    torch.manual_seed(0)
    z = torch.randn(4, dtype=torch.complex128, requires_grad=True)
    pair = torch.view_as_real(z.detach()).clone().requires_grad_()
    a = optimizers.ClippedAdam([z], lr=0.1, clip_norm=0.5)
    b = PyroClippedAdam([pair], lr=0.1, clip_norm=0.5)
    for step in range(10):
        z.grad = torch.sin(z.detach() + step)
        pair.grad = torch.view_as_real(z.grad).clone()
        a.step()
        b.step()
    assert_close(torch.view_as_real(z.detach()), pair.detach(), **TOL)


def test_complex_parameters_match_pyro_optim_adam():
    results = []
    for module in (pyro.optim, pyroopt):
        pyro.clear_param_store()
        z = pyro.param("z", torch.tensor([1 + 2j, -1j], dtype=torch.complex128)).unconstrained()
        optim = module.Adam({"lr": 0.1})
        for step in range(10):
            z.grad = torch.cos(z.detach() + step)
            optim([z])
        results.append(z.detach().clone())
    assert_close(results[1], results[0], **TOL)


@pytest.mark.parametrize(
    "make,match",
    [
        (lambda p: optimizers.ClippedAdam(p, lr=-0.1), r"invalid lr: -0\.1"),
        (
            lambda p: optimizers.ClippedAdam(p, betas=(1.0, 0.5)),
            r"invalid betas: \(1\.0, 0\.5\).*\[0, 1\)",
        ),
        (lambda p: optimizers.ClippedAdam(p, eps=-1e-8), r"invalid eps: -1e-08"),
        (lambda p: optimizers.ClippedAdam(p, clip_norm=-1), r"invalid clip_norm: -1"),
        (lambda p: optimizers.AdagradRMSProp(p, t=2.0), r"invalid t: 2\.0.*\[0, 1\]"),
        (lambda p: optimizers.DCTAdam(p, betas=(0.9,)), r"invalid betas: \(0\.9,\)"),
        (lambda p: torch.optim.Rprop(p, etas=(1.5, 0.5)), r"Invalid eta values: 1\.5, 0\.5"),
    ],
)
def test_invalid_hyperparameters_name_the_value(make, match):
    with pytest.raises(ValueError, match=match):
        make([torch.zeros(2, requires_grad=True)])


def test_invalid_hyperparameters_through_factories():
    pyro.clear_param_store()
    p = pyro.param("p", torch.zeros(2)).unconstrained()
    p.grad = torch.ones(2)
    for optim, match in [
        (pyroopt.ClippedAdam({"lr": -1.0}), r"invalid lr: -1\.0"),
        (pyroopt.Rprop({"etas": (1.5, 0.5)}), r"Invalid eta values"),
        (pyroopt.Adam({"betas": (0.9, 1.5)}), r"Invalid beta parameter at index 1: 1\.5"),
    ]:
        with pytest.raises(ValueError, match=match):
            optim([p])
    assert_close(p.detach(), torch.zeros(2), rtol=0, atol=0)


@pytest.mark.parametrize("factory", ["Adam", "RMSprop", "ClippedAdam"])
def test_sparse_gradients_get_a_clear_error(factory):
    pyro.clear_param_store()
    p = pyro.param("emb", torch.zeros(3, 2)).unconstrained()
    p.grad = torch.ones(3, 2).to_sparse()
    with pytest.raises(ValueError, match="does not support sparse gradients"):
        getattr(pyroopt, factory)({"lr": 0.1})([p])
    with pytest.raises(ValueError, match="does not support sparse gradients"):
        optimizers.ClippedAdam([p]).step()
    # a RuntimeError too, as pyro.optim raises (torch's message, or aten's
    # NotImplementedError from pyro's ClippedAdam)
    with pytest.raises(RuntimeError, match="does not support sparse gradients"):
        getattr(pyroopt, factory)({"lr": 0.1})([p])
    with pytest.raises(RuntimeError):
        getattr(pyro.optim, factory)({"lr": 0.1})([p])


@pytest.mark.parametrize("factory", ["Adam", "RMSprop", "ClippedAdam", "AdagradRMSProp"])
def test_a_refused_sparse_gradient_changes_nothing(factory):
    """One sparse gradient among dense ones (a flat bucket) is refused before any
    parameter or step count moves: the next dense step equals a first step."""
    pyro.clear_param_store()
    args = {"eta": 0.1} if factory == "AdagradRMSProp" else {"lr": 0.1}
    params = [pyro.param(n, torch.zeros(3, 2)).unconstrained() for n in ("a", "b")]
    optim = getattr(pyroopt, factory)(args)
    params[0].grad, params[1].grad = torch.ones(3, 2), torch.ones(3, 2).to_sparse()
    with pytest.raises(ValueError, match="does not support sparse gradients"):
        optim(params)
    assert all(torch.equal(p.detach(), torch.zeros(3, 2)) for p in params)
    params[1].grad = torch.ones(3, 2)
    optim(params)
    fresh = [torch.zeros(3, 2, requires_grad=True) for _ in range(2)]
    for p in fresh:
        p.grad = torch.ones(3, 2)
    getattr(pyroopt, factory)(args)(fresh)
    for ours, reference in zip(params, fresh, strict=True):
        assert_close(ours, reference, rtol=0, atol=0)
