"""State that stays true: restores into a stepped optimizer, churn, dtypes, autograd,
threads, overlapping views, sparse gradients — each against pyro.optim where pyro.optim
gives the right answer, bit for bit, in float32."""

from __future__ import annotations

import os
import subprocess
import sys
import threading

import pyro
import pyro.optim
import pytest
import torch
from programs import Program, fresh_store, run

import pyroopt
from pyroopt.checkpoint import load_training, save_training


@pytest.fixture(autouse=True)
def _float32():
    torch.set_default_dtype(torch.float32)


def _store_state():
    return {n: v.detach().clone() for n, v in pyro.get_param_store().named_parameters()}


def _assert_same(expected, actual):
    assert expected.keys() == actual.keys()
    for name in expected:
        assert torch.equal(expected[name], actual[name]), name


def _steps(optim):
    """Each parameter's step count in ``optim.get_state()``."""
    out = {}
    for name, entry in optim.get_state().items():
        if name is None or name.startswith("__"):
            continue
        state = entry["state"].get(0, {})
        out[name] = int(float(state["step"])) if "step" in state else 0
    return out


# -- 1. restoring into an optimizer that has already stepped --------------------------


def _rollback(module, tmp_path, order, factory="Adam"):
    """20 steps, save, 5 more, restore the checkpoint (in ``order``), 10 more."""
    fresh_store()
    optim = getattr(module, factory)({"lr": 0.05})
    program = Program()
    run(None, 20, program, optim=optim)  # type: ignore[arg-type]
    pyro.get_param_store().save(tmp_path / f"{module.__name__}.store")
    optim.save(tmp_path / f"{module.__name__}.optim")
    run(None, 5, program, start=20, optim=optim)  # type: ignore[arg-type]
    for what in order:
        if what == "store":
            pyro.get_param_store().load(tmp_path / f"{module.__name__}.store")
        else:
            optim.load(tmp_path / f"{module.__name__}.optim")
    run(None, 10, program, start=20, optim=optim)  # type: ignore[arg-type]
    return _store_state(), _steps(optim)


@pytest.mark.parametrize("order", [("store", "optim"), ("optim", "store")])
@pytest.mark.parametrize("factory", ["Adam", "SGD", "ClippedAdam"])
def test_rollback_into_a_stepped_optimizer_continues_as_pyro_optim(tmp_path, order, factory):
    expected, expected_steps = _rollback(pyro.optim, tmp_path, order, factory)
    actual, actual_steps = _rollback(pyroopt, tmp_path, order, factory)
    _assert_same(expected, actual)
    assert actual_steps == expected_steps
    if factory != "SGD":  # SGD keeps no step count
        assert actual_steps["layer.weight"] == 30


def _warm_up_then_load(module, tmp_path):
    """A new process: one warm-up step creates and steps the parameters, then the
    checkpoint of an earlier run is loaded and training goes on."""
    fresh_store()
    optim = module.Adam({"lr": 0.05})
    run(None, 21, Program(), optim=optim)  # type: ignore[arg-type]
    pyro.get_param_store().save(tmp_path / "store")
    optim.save(tmp_path / "optim")
    fresh_store()
    optim = module.Adam({"lr": 0.05})
    run(None, 1, Program(), optim=optim)  # type: ignore[arg-type]  # the warm-up
    pyro.get_param_store().load(tmp_path / "store")
    optim.load(tmp_path / "optim")
    run(None, 10, Program(), start=21, optim=optim)  # type: ignore[arg-type]
    return _store_state(), _steps(optim)


def test_warm_up_step_then_load_continues_as_pyro_optim(tmp_path):
    expected, _ = _warm_up_then_load(pyro.optim, tmp_path)
    actual, steps = _warm_up_then_load(pyroopt, tmp_path)
    _assert_same(expected, actual)
    assert steps["a"] == 30  # not 10: the loaded state was not thrown away


def test_load_training_into_a_stepped_optimizer_continues_where_it_was_saved(tmp_path):
    fresh_store()
    optim = pyroopt.Adam({"lr": 0.05})
    run(None, 20, Program(), optim=optim)  # type: ignore[arg-type]
    save_training(tmp_path / "train", optim, rng=False)
    straight = run(None, 10, Program(), start=20, optim=optim)[-1]  # type: ignore[arg-type]
    load_training(tmp_path / "train", optim)  # back to step 20
    resumed = run(None, 10, Program(), start=20, optim=optim)[-1]  # type: ignore[arg-type]
    _assert_same(straight, resumed)
    assert _steps(optim)["a"] == 29  # 'a' has no gradient at step 2


# -- 3. churn ----------------------------------------------------------------------------


def _churn(module, steps=40):
    """One parameter deleted and re-created every step beside a steady one."""
    fresh_store()
    optim = module.Adam({"lr": 0.05})
    store = pyro.get_param_store()
    for step in range(steps):
        if "churn" in store:
            del store["churn"]
        params = [
            pyro.param("steady", torch.ones(3)).unconstrained(),
            pyro.param("churn", torch.full((2,), float(step))).unconstrained(),
        ]
        for p in params:
            p.grad = torch.sin(p.detach() + step)
        optim(set(params))
    return optim


def test_replaced_parameters_leave_the_optimizer_and_numbers_stay_pyros():
    _churn(pyro.optim)
    expected = _store_state()
    optim = _churn(pyroopt)
    _assert_same(expected, _store_state())
    assert len(optim.optim_objs) == 2  # not one per step
    assert sum(len(b.params) for b in optim._placement.buckets) == 2


def test_parameters_of_a_cleared_store_are_retired():
    fresh_store()
    optim = pyroopt.Adam({"lr": 0.05})
    for epoch in range(5):
        pyro.clear_param_store()
        p = pyro.param(f"epoch{epoch}", torch.ones(3)).unconstrained()
        p.grad = torch.ones(3)
        optim([p])
    assert [pyro.get_param_store().param_name(p) for p in optim.optim_objs] == ["epoch4"]
    assert list(optim.get_state()) == ["epoch4"]


def test_saved_param_store_after_churn_is_the_size_of_pyros(tmp_path):
    sizes = {}
    for module in (pyro.optim, pyroopt):
        fresh_store()
        optim = module.Adam({"lr": 0.05})
        for epoch in range(30):
            pyro.clear_param_store()
            params = [
                pyro.param(f"w{i}", torch.full((10,), float(epoch))).unconstrained()
                for i in range(5)
            ]
            for p in params:
                p.grad = torch.ones(10)
            optim(set(params))
        path = tmp_path / module.__name__
        pyro.get_param_store().save(path)
        sizes[module.__name__] = path.stat().st_size
    assert sizes["pyroopt"] <= sizes["pyro.optim"] * 1.05, sizes


# -- 4. dtype and device changes ---------------------------------------------------------


@pytest.mark.parametrize("factory", ["SGD", "Adam"])
def test_a_parameter_converted_to_float64_moves_bucket_and_keeps_its_dtype(factory):
    fresh_store()
    net = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.Linear(2, 1))
    args = {"lr": 0.1, "momentum": 0.9} if factory == "SGD" else {"lr": 0.1}
    optim = getattr(pyroopt, factory)(args)
    params = list(net.parameters())
    for _ in range(2):
        for p in params:
            p.grad = torch.ones_like(p)
        optim(params)
    net[1].to(torch.float64)
    for _ in range(2):
        for p in params:
            p.grad = torch.ones_like(p)
        optim(params)
    assert [p.dtype for p in net.parameters()] == [torch.float32] * 2 + [torch.float64] * 2
    for p in net[1].parameters():
        state = optim.optim_objs[p].state_dict()["state"][0]
        key = "momentum_buffer" if factory == "SGD" else "exp_avg"
        assert state[key].dtype == torch.float64
    if factory == "Adam":
        assert int(float(optim.optim_objs[params[2]].state_dict()["state"][0]["step"])) == 4


# -- 5. autograd version counters --------------------------------------------------------


@pytest.mark.parametrize("factory", ["Adam", "SGD", "Adagrad", "RMSprop", "AdagradRMSProp"])
@pytest.mark.parametrize("numel", [3, 1000, 200_000])
def test_backward_through_a_graph_that_saved_a_stepped_parameter_raises(factory, numel):
    fresh_store()
    p = pyro.param("p", torch.ones(numel)).unconstrained()
    args = {"eta": 0.1} if factory == "AdagradRMSProp" else {"lr": 0.1}
    optim = getattr(pyroopt, factory)(args)
    loss = (p * p).sum()  # saves p for backward
    p.grad = torch.ones(numel)
    optim([p])
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        loss.backward()


# -- 6. threads --------------------------------------------------------------------------


def test_calls_from_two_threads_equal_the_same_calls_one_after_another():
    def params(prefix):
        return [pyro.param(f"{prefix}{i}", torch.ones(50) * i).unconstrained() for i in range(20)]

    def work(optim, ps, steps=30):
        for step in range(steps):
            for p in ps:
                p.grad = torch.cos(p.detach() + step)
            optim(ps)

    fresh_store()
    optim = pyroopt.Adam({"lr": 0.01})
    left, right = params("l"), params("r")
    work(optim, left)
    work(optim, right)
    expected = _store_state()
    for _attempt in range(5):
        fresh_store()
        optim = pyroopt.Adam({"lr": 0.01})
        left, right = params("l"), params("r")
        errors = []

        def guarded(ps, errors=errors, optim=optim):
            try:
                work(optim, ps)
            except Exception as e:  # reported below
                errors.append(e)

        threads = [threading.Thread(target=guarded, args=(ps,)) for ps in (left, right)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors, errors
        _assert_same(expected, _store_state())


# -- 7. overlapping views ----------------------------------------------------------------


@pytest.mark.parametrize("factory", ["SGD", "Adam"])
def test_overlapping_views_are_both_updated_as_pyro_optim_does(factory):
    results = []
    for module in (pyro.optim, pyroopt):
        base = torch.zeros(6)
        a, b = base[:4].detach().requires_grad_(), base[2:].detach().requires_grad_()
        optim = getattr(module, factory)({"lr": 0.1})
        for step in range(3):
            a.grad, b.grad = torch.ones(4) * (step + 1), torch.ones(4) * 2
            optim([a, b])
        results.append(base.clone())
    assert torch.equal(results[0], results[1]), results


# -- 9. sparse gradients -----------------------------------------------------------------


@pytest.mark.filterwarnings("ignore:Sparse invariant checks:UserWarning")
@pytest.mark.parametrize("factory,args", [("SGD", {"lr": 0.1}), ("Adagrad", {"lr": 0.1})])
def test_sparse_gradients_step_as_torch_does(factory, args):
    out = []
    for module in (pyro.optim, pyroopt):
        fresh_store()
        program = Program(sparse=True)
        run(lambda m=module: getattr(m, factory)(args), 12, program)
        out.append(_store_state())
    _assert_same(*out)


@pytest.mark.filterwarnings("ignore:Sparse invariant checks:UserWarning")
def test_skip_nonfinite_with_sparse_gradients():
    fresh_store()
    p = pyro.param("emb", torch.zeros(4, 2)).unconstrained()
    optim = pyroopt.SparseAdam({"lr": 0.1}, skip_nonfinite=True)
    p.grad = torch.sparse_coo_tensor([[1]], [[float("nan"), 1.0]], (4, 2))
    with pytest.warns(RuntimeWarning, match="skipped"):
        optim([p])
    assert optim.skipped_steps == 1 and torch.equal(p.detach(), torch.zeros(4, 2))
    p.grad = torch.sparse_coo_tensor([[1]], [[1.0, 1.0]], (4, 2))
    optim([p])
    assert optim.skipped_steps == 1 and not torch.equal(p.detach(), torch.zeros(4, 2))


# -- 10. optim_objs[p].step() with lrd ---------------------------------------------------


def test_stepping_one_parameter_decays_only_its_own_lr():
    fresh_store()
    params = [pyro.param(n, torch.ones(2)).unconstrained() for n in ("a", "b")]
    optim = pyroopt.ClippedAdam({"lr": 0.1, "lrd": 0.5})
    for p in params:
        p.grad = torch.ones(2)
    optim(params)
    optim.optim_objs[params[0]].step()
    assert optim.learning_rates() == {"a": 0.025, "b": 0.05}


# -- 11. factory keywords ----------------------------------------------------------------


def test_factories_take_skip_nonfinite_and_track_grad_norms():
    optim = pyroopt.Adam({"lr": 0.1}, skip_nonfinite=True, track_grad_norms=True)
    assert optim.skip_nonfinite and optim.track_grad_norms
    scheduler = pyroopt.StepLR(
        {"optimizer": torch.optim.SGD, "optim_args": {"lr": 0.1}, "step_size": 2},
        skip_nonfinite=True,
    )
    assert scheduler.skip_nonfinite


# -- memory under epoch churn with a live user view --------------------------------------

_CHURN_JOB = """
import gc, sys
import pyro, pyro.optim, torch
import pyroopt

module = pyroopt if sys.argv[1] == "pyroopt" else pyro.optim
optim = module.Adam({"lr": 0.01})
torch.manual_seed(0)


def rss_mb():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 2**20


marks = []
for epoch in range(60):
    pyro.clear_param_store()
    params = [pyro.param(f"w{i}", torch.randn(50_000)).unconstrained() for i in range(10)]
    view = params[0].detach()  # a live view of this epoch's parameter, held by the user
    for step in range(5):
        for p in params:
            p.grad = torch.ones_like(p)
        optim(set(params))
    gc.collect()
    marks.append(rss_mb())
print(marks[-1] - marks[4])
"""


@pytest.mark.slow
@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="needs Linux's /proc")
def test_memory_under_epoch_churn_with_a_live_view_stays_bounded():
    """One epoch holds 10 parameters of 50k floats (2 MB, 6 MB with Adam's state):
    memory after 60 epochs must not grow with the epochs (pyro.optim keeps every old
    optimizer, and grows by about as much as it ever held)."""
    growth = {}
    for module in ("pyro.optim", "pyroopt"):
        done = subprocess.run(
            [sys.executable, "-c", _CHURN_JOB, module], capture_output=True, text=True, check=True
        )
        growth[module] = float(done.stdout.strip())
    assert growth["pyroopt"] <= 1.5 * max(growth["pyro.optim"], 0.0) + 1.0, growth
    assert growth["pyroopt"] < 30.0, growth  # MB: a few epochs' worth, not 55 epochs'


# -- 8. load errors name the file --------------------------------------------------------


@pytest.mark.parametrize("seen", [True, False], ids=["stepped", "not-yet-seen"])
@pytest.mark.parametrize("problem", ["other optimizer", "changed shape"])
def test_load_errors_name_the_file(tmp_path, seen, problem):
    fresh_store()
    p = pyro.param("w", torch.ones(3)).unconstrained()
    p.grad = torch.ones(3)
    saver = pyroopt.SGD({"lr": 0.1, "momentum": 0.9}) if problem == "other optimizer" else None
    saver = saver or pyroopt.Adam({"lr": 0.1})
    saver([p])
    path = tmp_path / "optim.pt"
    saver.save(path)
    fresh_store()
    p = pyro.param("w", torch.ones(3 if problem == "other optimizer" else 4)).unconstrained()
    p.grad = torch.ones_like(p)
    optim = pyroopt.Adam({"lr": 0.1})
    if seen:
        optim([p])
        with pytest.raises(ValueError, match=str(path)):
            optim.load(path)
    else:
        optim.load(path)
        with pytest.raises(ValueError, match=str(path)):
            optim([p])


def test_old_and_new_tensor_of_one_name_in_one_call_both_step_as_pyro_optim():
    out = []
    for module in (pyro.optim, pyroopt):
        fresh_store()
        optim = module.Adam({"lr": 0.1})
        old = pyro.param("w", torch.ones(2)).unconstrained()
        old.grad = torch.ones(2)
        optim([old])
        del pyro.get_param_store()["w"]
        new = pyro.param("w", torch.zeros(2)).unconstrained()
        for _ in range(3):
            old.grad, new.grad = torch.ones(2), -torch.ones(2)
            optim([old, new])
        out.append((old.detach().clone(), new.detach().clone()))
    assert all(torch.equal(a, b) for a, b in zip(*out, strict=True))


def test_loading_an_empty_state_resets_moments_as_well_as_the_count():
    fresh_store()
    p = pyro.param("w", torch.ones(3)).unconstrained()
    optim = pyroopt.Adam({"lr": 0.1})
    p.grad = torch.ones(3)
    optim([p])
    view = optim.optim_objs[p]
    fresh = {"state": {}, "param_groups": view.state_dict()["param_groups"]}
    view.load_state_dict(fresh)
    p.grad = torch.ones(3)
    before = p.detach().clone()
    optim([p])
    reference = before.clone().requires_grad_()
    reference.grad = torch.ones(3)
    torch.optim.Adam([reference], lr=0.1, foreach=False).step()
    assert torch.equal(p.detach(), reference.detach())
