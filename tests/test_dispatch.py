"""One dispatch point: what steps each parameter, reported with the reason, and
implementations forced for comparison giving the same bits."""

from __future__ import annotations

import pyro
import pyro.optim
import pytest
import torch

import pyroopt
from pyroopt import dispatch
from pyroopt.native import selfcheck


def _train(optim, dtype, steps=4, names=("a", "b", "c")):
    """A few steps of three parameters of ``dtype``; the last joins at step 2."""
    pyro.clear_param_store()
    gen = torch.Generator().manual_seed(0)
    for step in range(steps):
        params = []
        for k, name in enumerate(names):
            if k == 2 and step < 2:
                continue
            p = pyro.param(name, torch.linspace(-1, 1, 5 + k, dtype=dtype)).unconstrained()
            p.grad = torch.randn(p.shape, generator=gen, dtype=torch.float64).to(dtype)
            params.append(p)
        optim(params)
    return {n: pyro.param(n).detach().clone() for n in names}


def _rule_kind(constructor, dtype):
    """``"native"`` where the rule's loop runs here, else ``"chain"``."""
    loop = dispatch.native_loop(constructor)
    return "native" if selfcheck.reason_off(loop, dtype) is None else "chain"


def test_each_parameter_reports_what_steps_it_and_why():
    optim = pyroopt.Adam({"lr": 0.1})
    _train(optim, torch.float32)
    said = optim.implementations()
    assert sorted(said) == ["a", "b", "c"]
    kind = _rule_kind(torch.optim.Adam, torch.float32)
    assert all(s.startswith(f"{kind}: ") for s in said.values()), said


@pytest.mark.parametrize(
    "make,dtype,kind,reason",
    [
        (lambda: pyroopt.Adam({"lr": 0.1}), torch.float16, "torch", "rounds by position"),
        (
            lambda: pyroopt.Adam({"lr": 0.1, "foreach": True}),
            torch.float32,
            "torch",
            "foreach=True",
        ),
        (
            lambda: pyroopt.Adam({"lr": 0.1, "foreach": False}),
            torch.float32,
            "torch",
            "foreach=False",
        ),
        (lambda: pyroopt.NAdam({"lr": 0.1}), torch.float32, "torch", "no rule for NAdam"),
        (
            lambda: pyroopt.PyroOptim(type("UserAdam", (torch.optim.Adam,), {}), {"lr": 0.1}),
            torch.float32,
            "per-param",
            "UserAdam",
        ),
    ],
)
def test_reasons_name_what_decided(make, dtype, kind, reason):
    optim = make()
    _train(optim, dtype)
    for said in optim.implementations().values():
        assert said.startswith(f"{kind}: ") and reason in said, said


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("kind", dispatch.KINDS)
def test_every_implementation_gives_pyro_optims_bits(kind, dtype):
    expected = _train(pyro.optim.Adam({"lr": 0.1, "weight_decay": 0.01}), dtype)
    with dispatch.forced(kind):
        optim = pyroopt.Adam({"lr": 0.1, "weight_decay": 0.01})
        got = _train(optim, dtype)
    for name, value in expected.items():
        assert torch.equal(got[name], value), (kind, name)
    ran = _rule_kind(torch.optim.Adam, dtype) if kind == "native" else kind
    for said in optim.implementations().values():
        assert said.startswith(f"{ran}: "), said


def test_a_self_check_mismatch_turns_the_loop_off_with_its_reason(monkeypatch):
    """A loop the self-check found different is not chosen: the chain runs, the reason
    says why, and the numbers are still torch's."""
    loop = dispatch.native_loop(torch.optim.Adam)
    reason = f"{loop}_f32 differs from torch.optim.Adam(lr=0.1) at element 3: 1.0 != 1.0000001"
    real = selfcheck.implementation

    def mismatched(name, dtype):
        if name == loop:
            return f"torch-op chain: self-check mismatch: {reason}"
        return real(name, dtype)

    monkeypatch.setattr(selfcheck, "implementation", mismatched)
    expected = _train(pyro.optim.Adam({"lr": 0.1}), torch.float32)
    optim = pyroopt.Adam({"lr": 0.1})
    got = _train(optim, torch.float32)
    for name, value in expected.items():
        assert torch.equal(got[name], value), name
    for said in optim.implementations().values():
        assert said == f"chain: self-check mismatch: {reason}"


def test_forcing_is_checked_and_scoped():
    refused = r"kind must be one of \['native', 'chain'.*'fast'"
    with pytest.raises(ValueError, match=refused), dispatch.forced("fast"):
        pass
    p = torch.zeros(3)
    with dispatch.forced("torch"):
        assert dispatch.choose(torch.optim.SGD, {"lr": 0.1}, p).kind == "torch"
    assert dispatch.choose(torch.optim.SGD, {"lr": 0.1}, p).kind in ("native", "chain")


@pytest.mark.filterwarnings("ignore:Sparse invariant checks:UserWarning")
def test_sparse_gradients_go_to_torch_with_the_reason():
    optim = pyroopt.Adagrad({"lr": 0.1})
    pyro.clear_param_store()
    p = pyro.param("e", torch.ones(4, 2)).unconstrained()
    p.grad = torch.sparse_coo_tensor([[1, 3]], torch.ones(2, 2), (4, 2))
    optim([p])
    assert optim.implementations() == {"e": "torch: sparse gradients (torch's own implementation)"}
