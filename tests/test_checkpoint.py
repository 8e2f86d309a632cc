"""State round trips: pyroopt <-> pyro.optim files, resume equals straight through."""

from __future__ import annotations

import os

import pyro
import pyro.optim
import pytest
import registry
import torch
from programs import Program, fresh_store, run
from test_optim import assert_same_trajectory

import pyroopt
from pyroopt import atomic_file

#: each optimizer of the registry that steps every parameter of the default program,
#: with the most options on that it allows (the most kinds of state)
CASES = [
    pytest.param(info, info.richest(), id=info.name)
    for info in registry.INFOS
    if not info.sparse and all(info.steps_shape(torch.Size(s)) for s in Program().shapes.values())
]
DIRECTIONS = [
    pytest.param(save_with, load_with, id=f"{save_with}->{load_with}")
    for save_with, load_with in [("pyroopt", "pyroopt"), ("pyro", "pyroopt"), ("pyroopt", "pyro")]
]


def build(info, side, args):
    """``info``'s optimizer from pyroopt or from pyro.optim."""
    return info.factory(args) if side == "pyroopt" else info.reference(args)


def resumed(save_with, load_with, info, args, path, split=8, total=15):
    """``split`` steps with ``save_with``'s optimizer, save, load into ``load_with``'s,
    finish."""
    fresh_store()
    first = build(info, save_with, args)
    head = run(lambda: first, split)
    first.save(path)
    second = build(info, load_with, args)
    second.load(path)
    return head + run(lambda: second, total - split, start=split, optim=second)


@pytest.mark.parametrize("info,args", CASES)
@pytest.mark.parametrize("save_with,load_with", DIRECTIONS)
def test_resume_equals_straight_through(tmp_path, info, args, save_with, load_with):
    fresh_store()
    straight = run(lambda: info.reference(args), 15)
    actual = resumed(save_with, load_with, info, args, tmp_path / "optim.pt")
    assert_same_trajectory(straight, actual)


def test_state_matches_pyro_optim_format():
    states = []
    for module in (pyro.optim, pyroopt):
        fresh_store()
        optim = module.Adam({"lr": 0.05})
        run(lambda o=optim: o, 6)
        states.append(optim.get_state())
    expected, actual = states
    assert expected.keys() == actual.keys()
    for name in expected:
        e, a = expected[name], actual[name]
        assert e["param_groups"] == a["param_groups"], name
        assert e["state"].keys() == a["state"].keys(), name
        for key, value in e["state"].get(0, {}).items():
            torch.testing.assert_close(a["state"][0][key], value, rtol=1e-12, atol=1e-14)


def test_state_waits_for_parameters_not_yet_seen(tmp_path):
    fresh_store()
    optim = pyroopt.Adam({"lr": 0.05})
    run(lambda: optim, 8)
    saved = optim.get_state()
    fresh = pyroopt.Adam({"lr": 0.05})
    fresh.set_state(saved)
    assert fresh.get_state().keys() == saved.keys()  # waiting state is not lost
    assert not fresh.optim_objs
    run(lambda: fresh, 1, start=8, optim=fresh)
    assert fresh.get_state()["a"]["state"][0]["step"].item() == 8  # 'a' lacked a grad once


def test_set_state_applies_to_parameters_already_seen():
    fresh_store()
    optim = pyroopt.SGD({"lr": 0.1, "momentum": 0.9})
    run(lambda: optim, 3)
    state = optim.get_state()
    state["a"]["param_groups"][0]["lr"] = 0.5
    optim.set_state({"a": state["a"]})
    assert optim.learning_rates()["a"] == 0.5
    assert optim.learning_rates()["layer.weight"] == 0.1
    torch.testing.assert_close(
        optim.get_state()["a"]["state"][0]["momentum_buffer"],
        state["a"]["state"][0]["momentum_buffer"],
        rtol=0,
        atol=0,
    )


def test_save_is_atomic_and_leaves_no_temporary_files(tmp_path):
    fresh_store()
    optim = pyroopt.Adam({"lr": 0.05})
    run(lambda: optim, 2)
    path = tmp_path / "optim.pt"
    path.write_bytes(b"old")
    optim.save(path)
    assert os.listdir(tmp_path) == ["optim.pt"]
    saved = torch.load(path, weights_only=True)
    assert saved.pop("__pyroopt__") == {
        "format": 1,
        "pyroopt": pyroopt.__version__,
        "kind": "optimizer",
    }
    assert saved.keys() == optim.get_state().keys()


def test_failed_save_keeps_the_old_file(tmp_path):
    path = tmp_path / "optim.pt"
    path.write_bytes(b"old")

    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        atomic_file.save_atomic({"x": Unpicklable()}, path)
    assert path.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["optim.pt"]


def test_garbage_file_gives_clear_error(tmp_path):
    path = tmp_path / "optim.pt"
    path.write_bytes(b"\x00not a checkpoint at all")
    with pytest.raises(ValueError, match=r"optim\.pt is not a readable optimizer checkpoint"):
        pyroopt.Adam({"lr": 0.1}).load(path)


def test_code_in_checkpoint_is_not_run(tmp_path):
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    path = tmp_path / "evil.pt"
    torch.save({"a": Payload()}, path)
    with pytest.raises(ValueError, match="not a readable optimizer checkpoint"):
        pyroopt.Adam({"lr": 0.1}).load(path)
    assert not marker.exists()


def test_non_state_file_gives_clear_error(tmp_path):
    path = tmp_path / "tensor.pt"
    torch.save(torch.zeros(3), path)
    with pytest.raises(ValueError, match="does not hold optimizer state"):
        pyroopt.Adam({"lr": 0.1}).load(path)
    torch.save({"a": {"nope": 1}}, path)
    with pytest.raises(ValueError, match="one-parameter optimizer state dict"):
        pyroopt.Adam({"lr": 0.1}).load(path)


def test_state_of_wrong_algorithm_is_refused_and_nothing_changes():
    fresh_store()
    sgd = pyroopt.SGD({"lr": 0.1, "momentum": 0.9})
    run(lambda: sgd, 2)
    adam = pyroopt.Adam({"lr": 0.1})
    run(lambda: adam, 2)
    before = adam.get_state()
    with pytest.raises(ValueError, match=r"'a' has hyperparameters \['dampening', 'momentum'"):
        adam.set_state({"a": sgd.get_state()["a"]})
    foreign_state = adam.get_state()["a"]
    foreign_state["state"][0] = sgd.get_state()["a"]["state"][0]
    with pytest.raises(ValueError, match=r"lacks \['exp_avg', 'exp_avg_sq'\]"):
        adam.set_state({"a": foreign_state})
    after = adam.get_state()
    for name in before:
        for key, value in before[name]["state"].get(0, {}).items():
            torch.testing.assert_close(after[name]["state"][0][key], value, rtol=0, atol=0)
    assert pyro.param("a") is not None
