"""Checkpoints that survive crashes and bad files, and steps that survive NaN."""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import textwrap
import time
import warnings

import hypothesis.strategies as st
import pyro
import pyro.optim
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from programs import Program, fresh_store, run
from test_optim import assert_same_trajectory
from torch.testing import assert_close

import pyroopt
from pyroopt import checkpoint

SAVER = textwrap.dedent(
    """
    import sys
    import torch
    from pyroopt.checkpoint import save_state

    path = sys.argv[1]
    k = 0
    while True:
        k += 1
        state = {f"p{i}": {"state": {0: {"momentum_buffer": torch.full((400_000,), float(k))}},
                           "param_groups": [{"lr": 0.1, "params": [0]}]} for i in range(4)}
        save_state(state, path)
        print(k, flush=True)
    """
)


@pytest.mark.slow
def test_killed_saves_leave_a_whole_checkpoint(tmp_path):
    script = tmp_path / "saver.py"
    script.write_text(SAVER)
    path = tmp_path / "optim.pt"
    rng = random.Random(0)
    seen = set()
    for _ in range(20):
        with subprocess.Popen(
            [sys.executable, str(script), str(path)], stdout=subprocess.PIPE, text=True
        ) as proc:
            assert proc.stdout is not None
            proc.stdout.readline()  # at least one save finished
            # land the kill anywhere in the next saves, often in the middle of a write
            time.sleep(rng.uniform(0.0, 0.25))
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        state = checkpoint.load_state(path)
        fills = {float(v["state"][0]["momentum_buffer"].unique().item()) for v in state.values()}
        assert len(state) == 4 and len(fills) == 1  # one whole save, not a mix
        seen |= fills
    assert len(seen) > 1  # the kills landed at different points


def test_malicious_training_checkpoint_is_refused(tmp_path):
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    path = tmp_path / "evil.pt"
    torch.save({"param_store": Payload(), "optimizer": {}}, path)
    with pytest.raises(ValueError, match="not a readable training checkpoint"):
        checkpoint.load_training(path, pyroopt.Adam({"lr": 0.1}))
    assert not marker.exists()


def test_unsafe_load_is_an_explicit_opt_in(tmp_path):
    path = tmp_path / "old.pt"
    fresh_store()
    optim = pyroopt.Adam({"lr": 0.1})
    run(lambda: optim, 2)
    state = optim.get_state()
    state["a"]["note"] = object.__new__(Program)  # an arbitrary object in the file
    torch.save(state, path)
    with pytest.raises(ValueError, match="unless weights_only=False"):
        pyroopt.Adam({"lr": 0.1}).load(path)
    trusting = pyroopt.Adam({"lr": 0.1})
    trusting.load(path, weights_only=False)
    assert "a" in trusting.get_state()


def test_truncated_and_newer_files_give_clear_errors(tmp_path):
    fresh_store()
    optim = pyroopt.Adam({"lr": 0.1})
    run(lambda: optim, 2)
    path = tmp_path / "optim.pt"
    optim.save(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"optim\.pt is not a readable optimizer checkpoint"):
        pyroopt.Adam({"lr": 0.1}).load(path)
    state = optim.get_state()
    torch.save({**state, "__pyroopt__": {"format": 99, "pyroopt": "9.0.0"}}, path)
    with pytest.raises(ValueError, match=r"pyroopt 9\.0\.0 in checkpoint format 99.*up to 1"):
        pyroopt.Adam({"lr": 0.1}).load(path)


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.binary(max_size=2000))
def test_garbage_bytes_give_the_clear_error(tmp_path, data):
    path = tmp_path / "garbage.pt"
    path.write_bytes(data)
    with pytest.raises(ValueError, match=r"garbage\.pt (is not a readable|does not hold)"):
        pyroopt.Adam({"lr": 0.1}).load(path)


OPTIMIZERS = st.sampled_from(
    [
        ("Adam", {"amsgrad": True}),
        ("SGD", {"momentum": 0.9}),
        ("RMSprop", {"centered": True}),
        ("Rprop", {}),
        ("Adagrad", {}),
        ("NAdam", {}),
        ("ClippedAdam", {"clip_norm": 0.5}),
        ("AdagradRMSProp", {}),
    ]
)
SHAPES = st.lists(st.lists(st.integers(0, 4), max_size=3).map(tuple), min_size=1, max_size=4)


@settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    optimizer=OPTIMIZERS,
    shapes=SHAPES,
    dtype=st.sampled_from([torch.float32, torch.float64]),
    lr=st.floats(1e-4, 1.0),
    steps=st.integers(1, 3),
)
def test_state_survives_save_and_load(tmp_path, optimizer, shapes, dtype, lr, steps):
    name, extra = optimizer
    args = {"eta": lr, **extra} if name == "AdagradRMSProp" else {"lr": lr, **extra}
    program = Program(
        shapes={f"p{i}": s for i, s in enumerate(shapes)},
        appears_at={},
        not_passed_at={},
        no_grad_at={},
    )
    fresh_store()
    for i, shape in enumerate(shapes):
        pyro.param(
            f"p{i}", torch.linspace(-1, 1, int(torch.Size(shape).numel())).reshape(shape).to(dtype)
        )
    optim = getattr(pyroopt, name)(args)
    run(lambda: optim, steps, program)
    before = optim.get_state()
    path = tmp_path / "optim.pt"
    optim.save(path)
    fresh = getattr(pyroopt, name)(args)
    fresh.load(path)
    fresh.set_state(checkpoint.load_state(path))  # twice: still the same
    params = [pyro.get_param_store().get_param(n).unconstrained() for n in before]
    for p in params:
        p.grad = None
    fresh(params)  # the parameters appear: their state moves from waiting into buckets
    assert len(fresh.optim_objs) == len(before)
    after = fresh.get_state()
    assert after.keys() == before.keys()
    for pname in before:
        assert after[pname]["param_groups"] == before[pname]["param_groups"]
        for key, value in before[pname]["state"].get(0, {}).items():
            got = after[pname]["state"][0][key]
            if isinstance(value, torch.Tensor):
                if got.dtype != value.dtype:
                    # torch's load_state_dict casts floating state (NAdam's mu_product)
                    # to the parameter's dtype; pyro.optim does the same.
                    assert key != "step" and got.dtype == dtype, key
                    value = value.to(dtype)
                assert torch.equal(got, value), key
            else:
                assert got == value, key


def test_shape_mismatch_names_parameter_and_shapes_and_changes_nothing(tmp_path):
    fresh_store()
    optim = pyroopt.Adam({"lr": 0.1})
    run(lambda: optim, 3)
    path = tmp_path / "optim.pt"
    optim.save(path)
    fresh_store()
    pyro.param("a", torch.zeros(4))  # the model changed: 'a' was (3,)
    resumed = pyroopt.Adam({"lr": 0.1})
    resumed.load(path)
    params = Program().params_at(0)
    before = [p.detach().clone() for p in params]
    with pytest.raises(
        ValueError,
        match=r"state of 'a': saved 'exp_avg' has shape \(3,\), but the parameter has shape \(4,\)",
    ):
        resumed(params)
    for p, b in zip(params, before, strict=True):
        assert_close(p.detach(), b, rtol=0, atol=0)


def test_failed_set_state_rolls_back_every_entry():
    fresh_store()
    optim = pyroopt.SGD({"lr": 0.1, "momentum": 0.9})
    run(lambda: optim, 3)
    before = optim.get_state()
    bad = optim.get_state()
    bad["a"]["param_groups"][0]["lr"] = 0.5  # fine on its own
    bad["layer.weight"]["state"][0]["momentum_buffer"] = torch.zeros(7)  # wrong shape
    with pytest.raises(ValueError, match=r"'layer.weight'.*shape \(7,\)"):
        optim.set_state(bad)
    after = optim.get_state()
    for name in before:
        assert after[name]["param_groups"] == before[name]["param_groups"]
        assert_close(
            after[name]["state"][0]["momentum_buffer"],
            before[name]["state"][0]["momentum_buffer"],
            rtol=0,
            atol=0,
        )


def _nan_program():
    return Program(no_grad_at={}, not_passed_at={}, appears_at={})


def test_nonfinite_gradient_skips_the_whole_step():
    fresh_store()
    optim = pyroopt.ClippedAdam({"lr": 0.1, "lrd": 0.9}, {"skip_nonfinite": True})
    program = _nan_program()
    run(lambda: optim, 2, program)
    state_before = optim.get_state()
    params = program.params_at(2)
    values_before = [p.detach().clone() for p in params]
    params[1].grad[0] = float("nan")
    with pytest.warns(RuntimeWarning, match="skipped an optimizer step"):
        optim(params)
    params[0].grad[-1] = float("inf")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # warned once only
        optim(params)
    assert optim.skipped_steps == 2
    for p, b in zip(params, values_before, strict=True):
        assert torch.equal(p.detach(), b)
    state_after = optim.get_state()
    for name in state_before:
        assert state_after[name]["param_groups"] == state_before[name]["param_groups"]
        for key, value in state_before[name]["state"][0].items():
            got = state_after[name]["state"][0][key]
            assert torch.equal(got, value) if isinstance(value, torch.Tensor) else got == value


def test_nonfinite_gradient_without_the_option_behaves_like_pyro_optim():
    trajectories = []
    for module in (pyro.optim, pyroopt):
        fresh_store()
        optim = module.Adam({"lr": 0.1})
        program = _nan_program()
        history = []
        for step in range(4):
            params = program.params_at(step)
            if step == 1:
                params[0].grad[0] = float("nan")
            optim(params)
            history.append({n: v.detach().clone() for n, v in pyro.get_param_store().items()})
        trajectories.append(history)
    expected, actual = trajectories
    for e, a in zip(expected, actual, strict=True):
        for name in e:
            assert_close(a[name], e[name], rtol=1e-10, atol=1e-12, equal_nan=True)
    assert torch.isnan(actual[-1]["a"]).any()


def test_training_checkpoint_resumes_exactly(tmp_path):
    fresh_store()
    straight = run(lambda: pyroopt.Adam({"lr": 0.05}), 12)
    fresh_store()
    optim = pyroopt.Adam({"lr": 0.05})
    head = run(lambda: optim, 6)
    path = tmp_path / "training.pt"
    checkpoint.save_training(path, optim)
    pyro.clear_param_store()
    resumed = pyroopt.Adam({"lr": 0.05})
    checkpoint.load_training(path, resumed)
    tail = run(lambda: resumed, 6, start=6, optim=resumed)
    assert_same_trajectory(straight, head + tail)


def test_training_checkpoint_keeps_constraints(tmp_path):
    fresh_store()
    pyro.param(
        "scale", torch.tensor([0.5, 2.0]), constraint=pyro.distributions.constraints.positive
    )
    pyro.param("prob", torch.tensor(0.3), constraint=pyro.distributions.constraints.unit_interval)
    optim = pyroopt.Adam({"lr": 0.05})
    path = tmp_path / "training.pt"
    checkpoint.save_training(path, optim)
    pyro.clear_param_store()
    checkpoint.load_training(path, optim)
    assert_close(pyro.param("scale").detach(), torch.tensor([0.5, 2.0]))
    assert pyro.get_param_store()._constraints["prob"] is not None
    assert_close(pyro.param("prob").detach(), torch.tensor(0.3))
