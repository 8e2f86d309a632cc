"""No cliff on the paths real training takes: a resumed optimizer and parameters that
appear late step on the flat path, with as many buckets as there are distinct
hyperparameters, and stay pyro.optim's numbers bit for bit (float32)."""

from __future__ import annotations

import copy

import pyro
import pyro.optim
import pytest
import torch

import pyroopt
import pyroopt.torch


def _grads(params, step):
    for i, p in enumerate(params):
        p.grad = torch.sin(torch.arange(float(p.numel())) * 0.37 + step + 0.1 * i).view_as(p)


def _store_params(names):
    store = pyro.get_param_store()
    return [store[name].unconstrained() for name in names]


def _resume_run(module, tmp_path, steps_before=3, steps_after=3):
    """Train, save the param store and the optimizer, clear both, load, train on."""
    torch.set_default_dtype(torch.float32)
    pyro.clear_param_store()
    names = [f"site_{i:02d}" for i in range(30)]
    params = [
        pyro.param(n, torch.full((3 + i % 5,), 0.1 * i)).unconstrained()
        for i, n in enumerate(names)
    ]
    optim = module.Adam({"lr": 0.05})
    for step in range(steps_before):
        _grads(params, step)
        optim(params)
    pyro.get_param_store().save(tmp_path / f"{module.__name__}.params")
    optim.save(tmp_path / f"{module.__name__}.optim")
    pyro.clear_param_store()
    resumed = module.Adam({"lr": 0.05})
    pyro.get_param_store().load(tmp_path / f"{module.__name__}.params")
    resumed.load(tmp_path / f"{module.__name__}.optim")
    params = _store_params(names)
    for step in range(steps_before, steps_before + steps_after):
        _grads(params, step)
        resumed(params)
    return resumed, [p.detach().clone() for p in params]


def test_a_resumed_optimizer_steps_on_the_flat_path_with_pyro_optims_numbers(tmp_path):
    _, theirs = _resume_run(pyro.optim, tmp_path)
    resumed, ours = _resume_run(pyroopt, tmp_path)
    for a, b in zip(ours, theirs, strict=True):
        assert torch.equal(a, b)
    # what runs: one bucket, every parameter seated in its flat buffer
    (bucket,) = resumed._placement.buckets
    params = _store_params(sorted(pyro.get_param_store().keys()))
    assert bucket._values is not None and bucket._values.seated == params


def _late_run(module, n=60, rule="Adam", args=None):
    """One new parameter per step, every parameter seen so far stepped each time."""
    torch.set_default_dtype(torch.float32)
    pyro.clear_param_store()
    optim = getattr(module, rule)(dict(args or {"lr": 0.05}))
    params = []
    for step in range(n):
        params.append(pyro.param(f"late_{step:03d}", torch.full((7,), 0.01 * step)).unconstrained())
        _grads(params, step)
        optim(params)
    for step in range(n, n + 3):
        _grads(params, step)
        optim(params)
    return optim, [p.detach().clone() for p in params]


@pytest.mark.parametrize(
    ("rule", "args"),
    [("Adam", {"lr": 0.05}), ("SGD", {"lr": 0.05, "momentum": 0.9}), ("RMSprop", {"lr": 0.01})],
)
def test_late_parameters_join_one_bucket_and_keep_pyro_optims_numbers(rule, args):
    _, theirs = _late_run(pyro.optim, rule=rule, args=args)
    optim, ours = _late_run(pyroopt, rule=rule, args=args)
    for a, b in zip(ours, theirs, strict=True):
        assert torch.equal(a, b)
    assert len(optim._placement.buckets) == 1
    (bucket,) = optim._placement.buckets
    assert bucket._values is not None and len(bucket._values.seated) == len(ours)


def test_late_parameters_under_a_decaying_lr_get_a_bucket_per_phase():
    """ClippedAdam's ``lrd`` moves each parameter's lr from its own first step, so
    parameters that appeared on different steps cannot share one (pyro.optim's numbers
    demand it); those that appear together do."""
    args = {"lr": 0.05, "lrd": 0.99}
    _, theirs = _late_run(pyro.optim, n=12, rule="ClippedAdam", args=args)
    optim, ours = _late_run(pyroopt, n=12, rule="ClippedAdam", args=args)
    for a, b in zip(ours, theirs, strict=True):
        assert torch.equal(a, b)
    assert len(optim._placement.buckets) == 12


def _counts_changed_in_place(module):
    """Parameters at three step counts stepped flat, then one parameter's state (and
    so its count) loaded from another's, then flat steps again."""
    torch.set_default_dtype(torch.float32)
    pyro.clear_param_store()
    optim = module.Adam({"lr": 0.05})
    names = [f"p{i}" for i in range(9)]
    params = []
    for step in range(6):
        if step % 2 == 0:  # three new parameters
            for i in range(len(params), len(params) + 3):
                params.append(pyro.param(names[i], torch.full((5,), 0.1 * i)).unconstrained())
        _grads(params, step)
        optim(params)
    views = optim.optim_objs
    # p0 at p8's count (a copy: torch's state_dict hands out its live tensors)
    views[params[0]].load_state_dict(copy.deepcopy(views[params[8]].state_dict()))
    for step in range(6, 9):
        _grads(params, step)
        optim(params)
    return optim, [p.detach().clone() for p in params]


def test_a_count_set_in_place_makes_a_new_split_of_the_flat_step():
    """A flat step reuses its split of the buffers by step count while the counts only
    advance together; a count loaded into one parameter makes a new one."""
    _, theirs = _counts_changed_in_place(pyro.optim)
    optim, ours = _counts_changed_in_place(pyroopt)
    for a, b in zip(ours, theirs, strict=True):
        assert torch.equal(a, b)
    (bucket,) = optim._placement.buckets
    assert bucket._split_by_steps is not None and bucket._split_by_steps.steps is bucket.steps


def _torch_counts_loaded(cls):
    """pyroopt.torch loads a state dict into its buckets in place: parameters at three
    step counts (runs of four, which a flat step takes as three slices), one count
    changed by ``load_state_dict``, then steps of all."""
    params = [torch.nn.Parameter(torch.full((5,), 0.1 * i)) for i in range(12)]
    optimizer = cls(params, lr=0.05)
    for step in range(9):
        if step == 6:
            state = copy.deepcopy(optimizer.state_dict())
            state["state"][0] = copy.deepcopy(state["state"][11])
            optimizer.load_state_dict(state)
        for i, p in enumerate(params):  # four more parameters every two steps
            late = i >= 4 * (step // 2 + 1)
            p.grad = None if late else torch.sin(torch.arange(5.0) * 0.37 + step + 0.1 * i)
        optimizer.step()
    return [p.detach().clone() for p in params]


def test_a_count_loaded_in_place_into_a_bucket_makes_a_new_split():
    torch.set_default_dtype(torch.float32)
    theirs = _torch_counts_loaded(torch.optim.Adam)
    ours = _torch_counts_loaded(pyroopt.torch.Adam)
    for a, b in zip(ours, theirs, strict=True):
        assert torch.equal(a, b)


def _new_site_every_step(module, steps=40):
    """Five parameters stepped every time, beside a new site on every step that is not
    stepped again (a growing model's one-off sites)."""
    torch.set_default_dtype(torch.float32)
    pyro.clear_param_store()
    optim = module.Adam({"lr": 0.05})
    steady = [
        pyro.param(f"steady_{i}", torch.full((4,), 0.1 * i)).unconstrained() for i in range(5)
    ]
    for step in range(steps):
        new = pyro.param(f"new_{step:03d}", torch.full((3,), 0.01 * step)).unconstrained()
        _grads([*steady, new], step)
        optim([*steady, new])
    return optim, [p.detach().clone() for p in pyro.get_param_store().values()]


def test_a_new_site_every_step_does_not_grow_the_bucket_that_steps():
    """A parameter joins a bucket only in a call that steps all of its members: else
    each new site would lay out ever more members that never step with it."""
    _, theirs = _new_site_every_step(pyro.optim)
    optim, ours = _new_site_every_step(pyroopt)
    for a, b in zip(ours, theirs, strict=True):
        assert torch.equal(a, b)
    store = pyro.get_param_store()
    steady = optim._placement.table.get(store["steady_0"].unconstrained()).bucket
    assert len(steady.params) <= 6


def _counting_looks(optim, monkeypatch):
    """Count the optimizer's looks for stale parameters (each costs time in the size of
    its table)."""
    looks = []
    placement = optim._placement
    look = placement._retire_stale
    monkeypatch.setattr(placement, "_retire_stale", lambda keep: looks.append(1) or look(keep))
    return looks


def test_a_new_site_every_step_looks_for_stale_parameters_a_logarithmic_number_of_times(
    monkeypatch,
):
    """A look at every new parameter made each step cost time in the number of sites
    ever seen (3000 new sites: 0.86 -> 1.87 ms per step); the table doubles between
    looks, so 512 new sites take a handful."""
    pyro.clear_param_store()
    optim = pyroopt.Adam({"lr": 0.05})
    looks = _counting_looks(optim, monkeypatch)
    steady = pyro.param("steady", torch.ones(3)).unconstrained()
    for step in range(512):
        new = pyro.param(f"new_{step:03d}", torch.full((3,), 0.01 * step)).unconstrained()
        _grads([steady, new], step)
        optim([steady, new])
    assert len(optim._placement.table) == 513  # every site is live: none retired
    assert 1 <= len(looks) <= 8


def test_a_parameter_that_left_the_store_is_retired_at_once_or_within_a_doubling(monkeypatch):
    """Where the table would name more parameters than the store holds, one must have
    left: it is retired at once. Where other entries of the store hide that, it goes
    once the table has doubled, so the table stays within twice its last looked size."""
    pyro.clear_param_store()
    optim = pyroopt.Adam({"lr": 0.05})
    looks = _counting_looks(optim, monkeypatch)
    params = [pyro.param(f"w{i}", torch.ones(2)).unconstrained() for i in range(20)]
    _grads(params, 0)
    optim(params)
    store = pyro.get_param_store()
    del store["w0"]
    fresh = pyro.param("fresh", torch.ones(2)).unconstrained()
    _grads([fresh], 1)
    optim([fresh])  # 20 named + 1 joining > 20 in the store: w0 has left
    assert optim._placement.table.named("w0") is None
    assert "w0" not in optim.get_state()

    pyro.param("not_stepped", torch.ones(2))  # the store now holds one more than is seen
    del store["w1"]
    before = len(looks)
    for step in range(40):
        new = pyro.param(f"late_{step:02d}", torch.ones(2)).unconstrained()
        _grads([new], step)
        optim([new])
        table = optim._placement.table
        assert len(table) <= 2 * 21
        if table.named("w1") is None:
            break
    assert optim._placement.table.named("w1") is None  # retired at the doubling
    assert len(looks) - before == 1
