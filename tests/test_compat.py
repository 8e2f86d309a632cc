"""Each private torch name behind pyroopt._compat, and its fallback with the name removed."""

from __future__ import annotations

import importlib

import pytest
import torch

from pyroopt import _compat


@pytest.mark.parametrize("default", [torch.float32, torch.float64])
@pytest.mark.parametrize("private", [True, False], ids=["private", "fallback"])
def test_get_scalar_dtype(monkeypatch, default, private):
    if not private:
        monkeypatch.delattr(importlib.import_module("torch.optim.optimizer"), "_get_scalar_dtype")
    old = torch.get_default_dtype()
    torch.set_default_dtype(default)
    try:
        assert _compat.get_scalar_dtype() == default
    finally:
        torch.set_default_dtype(old)


def test_storage_use_count(monkeypatch):
    count = _compat.storage_use_count()
    assert count is not None
    t = torch.zeros(3)
    assert count(t.untyped_storage()._cdata) >= 1
    monkeypatch.delattr(torch._C, "_storage_Use_Count")
    assert _compat.storage_use_count() is None


def test_seating_works_without_use_count(monkeypatch):
    monkeypatch.delattr(torch._C, "_storage_Use_Count")
    import pyroopt.seating

    # the module's own objects, put back after: a reload defines new classes, and the
    # engine's buckets (and pickle) must keep meeting the ones they were made with
    saved = dict(vars(pyroopt.seating))
    seating = importlib.reload(pyroopt.seating)
    try:
        assert seating._use_count is None
        assert seating._raw_count(torch.zeros(2)) == 0
    finally:
        monkeypatch.undo()
        vars(pyroopt.seating).clear()
        vars(pyroopt.seating).update(saved)


def _bump(real, t):
    """Bump one tensor's version with the real private function ``real``, in the form
    this torch takes (a list in recent torch, one tensor in 2.4)."""
    try:
        real([t])
    except (TypeError, RuntimeError):
        real(t)


@pytest.mark.parametrize("mode", ["list", "one-tensor", "one-tensor-2.4", "fallback"])
def test_increment_version(monkeypatch, mode):
    real = torch._C._increment_version
    if mode == "fallback":
        monkeypatch.delattr(torch._C, "_increment_version")
    elif mode.startswith("one-tensor"):  # older torch: one tensor per call
        refusal = RuntimeError if mode.endswith("2.4") else TypeError

        def one(t):
            if isinstance(t, list):  # torch 2.4: "increment_version expect a Tensor as input"
                raise refusal("increment_version expect a Tensor as input")
            _bump(real, t)

        monkeypatch.setattr(torch._C, "_increment_version", one)
    ts = [torch.tensor([-0.0, float("nan"), 2.5]), torch.ones(2)]
    before = [t._version for t in ts]
    _compat.increment_version(ts)
    assert [t._version for t in ts] == [v + 1 for v in before]
    assert torch.equal(ts[1], torch.ones(2))
    assert torch.signbit(ts[0][0]) and torch.isnan(ts[0][1]) and ts[0][2] == 2.5


@pytest.mark.parametrize("torch_has", ["safe_globals", "add_safe_globals only (torch 2.4)"])
def test_a_training_checkpoint_loads_with_either_allowlist(monkeypatch, tmp_path, torch_has):
    """load_training lets torch.load build pyro's constraint classes (AutoNormal's scales
    are constrained) with the scoped allowlist of torch 2.5+ or the global one of 2.4."""
    import pyro
    import pyro.distributions as dist
    from pyro.infer import SVI, Trace_ELBO
    from pyro.infer.autoguide import AutoNormal

    import pyroopt
    from pyroopt.checkpoint import load_training, save_training

    if torch_has != "safe_globals":
        monkeypatch.delattr(torch.serialization, "safe_globals", raising=False)
        added = []
        real = torch.serialization.add_safe_globals
        monkeypatch.setattr(
            torch.serialization, "add_safe_globals", lambda cs: (added.extend(cs), real(cs))
        )

    def model():
        pyro.sample("z", dist.Normal(0.0, 1.0))

    pyro.clear_param_store()
    optim = pyroopt.Adam({"lr": 0.1})
    svi = SVI(model, AutoNormal(model), optim, Trace_ELBO())
    svi.step()
    path = tmp_path / "training.pt"
    save_training(path, optim)
    saved = {k: v.detach().clone() for k, v in pyro.get_param_store().items()}
    pyro.clear_param_store()
    load_training(path, pyroopt.Adam({"lr": 0.1}))
    assert {k: torch.equal(v, saved[k]) for k, v in pyro.get_param_store().items()} == {
        k: True for k in saved
    }
    if torch_has != "safe_globals":
        assert type(torch.distributions.constraints.positive) in added
    pyro.clear_param_store()


def test_a_parameter_joining_a_torch_optimizer_that_makes_its_state_when_built(monkeypatch):
    """torch 2.4's Adagrad makes its state in ``__init__`` and its step fails on a
    parameter without it: every parameter that joins pyroopt's one torch optimizer
    after the first gets the state its own optimizer would have made (checked against
    one torch Adagrad per parameter, which is what pyro.optim runs), and so does a
    parameter that arrives late, in a bucket of its own."""
    import pyroopt

    cls = torch.optim.Adagrad
    real_init, real_step = cls.__init__, cls.step

    def eager_init(self, params, **kwargs):
        real_init(self, params, **kwargs)
        for group in self.param_groups:
            for p in group["params"]:
                self.state[p] = {
                    "step": torch.tensor(0.0),
                    "sum": torch.full_like(p, group["initial_accumulator_value"]),
                }

    def strict_step(self, closure=None):
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None and "sum" not in self.state[p]:
                    raise KeyError("sum")
        return real_step(self, closure)

    monkeypatch.setattr(cls, "__init__", eager_init)
    monkeypatch.setattr(cls, "step", strict_step)
    args = {"lr": 0.1, "initial_accumulator_value": 0.5, "foreach": False}
    ours = [torch.tensor([1.0, -2.0]), torch.tensor([3.0, 0.5, -1.0]), torch.tensor([0.25])]
    theirs = [p.clone().requires_grad_() for p in ours]
    ours = [p.requires_grad_() for p in ours]
    references = [cls([p], **args) for p in theirs]
    optim = pyroopt.PyroOptim(cls, args)
    for step in range(4):
        live = 2 if step < 2 else 3  # the third parameter arrives late
        for p, q in zip(ours[:live], theirs[:live], strict=True):
            p.grad = torch.full_like(p, step + 1.0)
            q.grad = torch.full_like(q, step + 1.0)
        optim(ours[:live])
        for reference in references[:live]:
            reference.step()
    for p, q in zip(ours, theirs, strict=True):
        assert torch.equal(p, q)


def _moved_by_param_name(store, named):
    return [name for name, t in named.items() if store.param_name(t) != name]


def test_moved_in_store_is_what_param_name_says_after_every_kind_of_change():
    import pyro

    pyro.clear_param_store()
    store = pyro.get_param_store()
    named = {f"p{i}": pyro.param(f"p{i}", torch.zeros(2)).unconstrained() for i in range(6)}
    assert _compat.moved_in_store(store, named) == []
    del store["p1"]  # gone
    store["p2"] = torch.ones(2)  # a new tensor; the old one still maps to p2 in pyro
    pyro.param("p3", torch.zeros(2))  # unchanged
    saved = store.get_state()
    expected = _moved_by_param_name(store, named)
    assert _compat.moved_in_store(store, named) == expected == ["p1"]
    store.clear()
    assert _compat.moved_in_store(store, named) == _moved_by_param_name(store, named)
    assert len(_compat.moved_in_store(store, named)) == 6
    store.set_state(saved)  # the same tensors back under their names (p2: the new one)
    assert _compat.moved_in_store(store, named) == _moved_by_param_name(store, named)
    assert _compat.moved_in_store(store, named) == ["p1", "p2"]
    pyro.clear_param_store()


def test_moved_in_store_without_the_private_dict_asks_param_name():
    class Store:
        def __init__(self, names):
            self.names = names  # id -> name

        def param_name(self, t):
            return self.names.get(id(t))

    a, b = torch.zeros(1), torch.zeros(1)
    store = Store({id(a): "a", id(b): "other"})
    assert _compat.moved_in_store(store, {"a": a, "b": b}) == ["b"]
