"""Every call is all or nothing: a failed, interrupted or malformed step changes nothing,
no parameter's input reaches another, and ties stay ties (pyro.optim side by side)."""

from __future__ import annotations

import copy
import pickle

import pyro
import pyro.optim
import pytest
import torch

import pyroopt

RULES = {
    "SGD": {"lr": 0.1, "momentum": 0.9},
    "Adam": {"lr": 0.1},
    "RMSprop": {"lr": 0.1, "momentum": 0.5},
}


def _params(dtype=torch.float32, n=3, size=4):
    return [
        pyro.param(f"p{i}", torch.arange(float(size), dtype=dtype) + i).unconstrained()
        for i in range(n)
    ]


def _grads(params, step):
    for i, p in enumerate(params):
        p.grad = torch.sin(torch.arange(float(p.numel()), dtype=p.dtype) + step + i)


def _snapshot(optim, params):
    return (
        [p.detach().clone() for p in params],
        copy.deepcopy(optim.get_state()),
    )


def _assert_same(a, b):
    values_a, state_a = a
    values_b, state_b = b
    for x, y in zip(values_a, values_b, strict=True):
        assert torch.equal(x, y)
    assert state_a.keys() == state_b.keys()
    for name in state_a:
        _assert_nested_equal(state_a[name], state_b[name])


def _assert_nested_equal(a, b):
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and torch.equal(a, b)
    elif isinstance(a, dict):
        assert a.keys() == b.keys()
        for k in a:
            _assert_nested_equal(a[k], b[k])
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            _assert_nested_equal(x, y)
    else:
        assert a == b


def _three_steps(module, rule):
    """Three steady steps of ``module``'s ``rule`` over three fresh parameters."""
    params = _params()
    optim = getattr(module, rule)(dict(RULES[rule]))
    for step in range(3):
        _grads(params, step)
        optim(params)
    return optim, params


@pytest.mark.parametrize("rule", RULES)
def test_a_parameter_that_changed_shape_fails_every_call_and_touches_no_other(rule):
    optim, params = _three_steps(pyroopt, rule)
    with torch.no_grad():
        params[1].data = torch.zeros(7)
    _grads(params, 3)
    before = _snapshot(optim, [params[0], params[2]])
    for _ in range(2):  # the same bad input raises again
        with pytest.raises((RuntimeError, ValueError), match="p1"):
            optim(params)
        _assert_same(_snapshot(optim, [params[0], params[2]]), before)
    # pyro.optim refuses the same call too (torch's step meets a state of another shape)
    pyro.clear_param_store()
    reference, theirs = _three_steps(pyro.optim, rule)
    with torch.no_grad():
        theirs[1].data = torch.zeros(7)
    _grads(theirs, 3)
    with pytest.raises(RuntimeError):
        reference(theirs)


@pytest.mark.parametrize("rule", RULES)
def test_a_gradient_of_the_wrong_size_is_refused_and_reaches_no_other_parameter(rule):
    optim, params = _three_steps(pyroopt, rule)
    _grads(params, 3)
    params[2].grad.zero_()
    params[1].grad.data = torch.arange(1.0, 8.0)
    before = _snapshot(optim, params)
    for _ in range(2):
        with pytest.raises((RuntimeError, ValueError), match="p1"):
            optim(params)
        _assert_same(_snapshot(optim, params), before)


def _tied_run(module):
    pyro.clear_param_store()
    params = [pyro.param(f"p{i}", torch.zeros(4)).unconstrained() for i in range(3)]
    optim = module.SGD({"lr": 1.0})
    for p in params:
        p.grad = torch.ones(4)
    optim(params)
    with torch.no_grad():
        params[1].data = params[0].data  # tied after the first step
    for step in range(2):
        for i, p in enumerate(params):
            p.grad = torch.full((4,), float(2 + 3 * i + step))
        optim(params)
    return [p.detach().clone() for p in params]


def test_ties_made_after_the_first_step_stay_ties_as_in_pyro_optim():
    theirs = _tied_run(pyro.optim)
    ours = _tied_run(pyroopt)
    assert torch.equal(theirs[0], theirs[1])
    for a, b in zip(ours, theirs, strict=True):
        assert torch.equal(a, b)


class _Interrupt(KeyboardInterrupt):
    pass


@pytest.mark.parametrize("rule", ["Adam", "SGD"])
def test_an_interrupt_inside_a_step_leaves_the_bucket_wholly_unstepped(rule, monkeypatch):
    args = RULES[rule]
    params = _params(n=40, size=5)
    optim = getattr(pyroopt, rule)(dict(args))
    for step in range(3):
        _grads(params, step)
        optim(params)
    _grads(params, 3)
    before = _snapshot(optim, params)

    def interrupted(self, *a, **k):
        raise _Interrupt

    # at the entry of the update, whichever runs (the native loop or the torch-op chain)
    for cls in type(optim._placement.buckets[0].rule).__mro__:
        for where in ("update", "native_update"):
            if where in vars(cls):
                monkeypatch.setattr(cls, where, interrupted)
    with pytest.raises(_Interrupt):
        optim(params)
    _assert_same(_snapshot(optim, params), before)
    monkeypatch.undo()
    # and it then continues exactly as a run that never saw the interrupt
    optim(params)
    pyro.clear_param_store()
    reference_params = _params(n=40, size=5)
    reference = getattr(pyro.optim, rule)(dict(args))
    for step in range(4):
        _grads(reference_params, step)
        reference(reference_params)
    for a, b in zip(params, reference_params, strict=True):
        assert torch.equal(a, b)


def test_optim_objs_load_state_dict_applies_the_learning_rate_it_carries():
    results = []
    for module in (pyro.optim, pyroopt):
        pyro.clear_param_store()
        (p,) = _params(n=1)
        optim = module.Adam({"lr": 0.1})
        _grads([p], 0)
        optim([p])
        view = optim.optim_objs[p]
        state = view.state_dict()
        state["param_groups"][0]["lr"] = 0.5
        view.load_state_dict(state)
        assert optim.optim_objs[p].param_groups[0]["lr"] == 0.5
        _grads([p], 1)
        optim([p])
        results.append(p.detach().clone())
    assert torch.equal(*results)


def _copied(obj, how):
    return copy.deepcopy(obj) if how == "deepcopy" else pickle.loads(pickle.dumps(obj))


@pytest.mark.parametrize("how", ["deepcopy", "pickle"])
@pytest.mark.parametrize("factory", ["Adam", "ClippedAdam", "SGD"])
def test_a_copied_optimizer_is_independent_and_continues_bit_for_bit(factory, how):
    args = {"lr": 0.1} if factory != "SGD" else {"lr": 0.1, "momentum": 0.9}
    assert _copied(getattr(pyroopt, factory)(dict(args)), how).get_state() == {}
    # Pyro's param-store tensors hold a weakref, which pickle refuses (pyro.optim's
    # optimizers with them too): pickle is tested on plain leaf tensors
    params = (
        _params()
        if how == "deepcopy"
        else [torch.arange(4.0).add(i).requires_grad_() for i in range(3)]
    )
    optim = getattr(pyroopt, factory)(dict(args))
    for step in range(3):
        _grads(params, step)
        optim(params)
    # copied together with its parameters, as a model and its optimizer are
    twin_params, twin = _copied((params, optim), how)
    state = copy.deepcopy(optim.get_state())
    for step in range(3, 5):  # the original goes on; the copy is untouched
        _grads(params, step)
        optim(params)
    _assert_nested_equal(twin.get_state(), state)
    for step in range(3, 5):
        _grads(twin_params, step)
        twin(twin_params)
    for p, q in zip(params, twin_params, strict=True):
        assert torch.equal(p, q)
    _assert_nested_equal(twin.get_state(), optim.get_state())


def test_a_bad_gradient_in_one_bucket_leaves_every_bucket_and_gradient_as_it_was():
    """Every bucket checks its inputs before any is clipped or stepped."""
    params = _params(n=4)
    optim = pyroopt.Adam(
        lambda name: {"lr": 0.1 if name in ("p0", "p1") else 0.2}, {"clip_norm": 0.5}
    )
    for step in range(3):
        _grads(params, step)
        optim(params)
    assert len(optim._placement.buckets) == 2
    _grads(params, 3)
    params[3].grad.data = torch.ones(5)  # the second bucket's
    grads = [p.grad.clone() for p in params]
    before = _snapshot(optim, params)
    with pytest.raises(ValueError, match="p3"):
        optim(params)
    _assert_same(_snapshot(optim, params), before)
    for p, g in zip(params, grads, strict=True):
        assert torch.equal(p.grad, g)  # not clipped either
