"""Checkpoints, all or nothing and checked first (issue 29, items 5, 9, 10 and 11).

5. ``load_training`` restores the param store, the optimizer and the random generators
   together or not at all, and names the file.
9. ``set_state``/``load`` refuse hyperparameters and state entries of the wrong kind or
   out of range before anything changes, and still take all that pyro.optim and torch
   write.
10. ``save`` works for every target name that fits the file system, refuses a target
    ``open(path, "wb")`` refuses, and replaces (not rewrites) a hard-linked file.
11. ``load``'s ``map_location`` is checked before the file is read.
"""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time

import numpy as np
import pyro
import pyro.optim
import pytest
import torch
from programs import Program, assert_same_optimizer_state, fresh_store, run
from test_lr_scheduler import CASES as SCHEDULE_CASES
from test_lr_scheduler import run_schedule

import pyroopt
from pyroopt import atomic_file, checkpoint, state_checks

PROGRAM_SHAPES = {"a": (3,), "w": (2, 3), "late": (4,)}


@pytest.fixture
def float32():
    torch.set_default_dtype(torch.float32)  # conftest's fixture puts float64 back


def _params():
    return {name: p.detach().clone() for name, p in pyro.get_param_store().items()}


def _assert_params_equal(actual, expected):
    assert actual.keys() == expected.keys()
    for name in expected:
        assert torch.equal(actual[name], expected[name]), name


def _three_steps_and_pyro_straight_through(steps):
    """The program; pyro.optim's Adam run straight through ``steps`` steps (its last
    record); and a pyroopt Adam after 3 steps of the same program."""
    program = Program(shapes=PROGRAM_SHAPES)
    fresh_store()
    straight = run(lambda: pyro.optim.Adam({"lr": 0.05}), steps, program)[-1]
    fresh_store()
    optim = pyroopt.Adam({"lr": 0.05})
    run(lambda: optim, 3, program, optim=optim)
    return program, straight, optim


def _generators():
    """The states of torch's, Python's and NumPy's global generators."""
    return torch.get_rng_state(), random.getstate(), np.random.get_state(legacy=True)


def _assert_generators(expected):
    torch_state, python_state, numpy_state = expected
    assert torch.equal(torch.get_rng_state(), torch_state)
    assert random.getstate() == python_state
    now = np.random.get_state(legacy=True)
    assert now[0] == numpy_state[0] and np.array_equal(now[1], numpy_state[1])
    assert now[2:] == numpy_state[2:]


# -- 5. load_training: all or nothing, errors name the file ----------------------------


def _damage_torch_size(rng):
    rng["torch"] = torch.zeros(5, dtype=torch.uint8)


def _damage_torch_dtype(rng):
    rng["torch"] = rng["torch"].to(torch.float32)


def _damage_python(rng):
    version, internal, gauss = rng["python"]
    rng["python"] = (version, internal[:10], gauss)


def _damage_numpy_length(rng):
    name, keys, pos, has_gauss, cached = rng["numpy"]
    rng["numpy"] = (name, keys[:10], pos, has_gauss, cached)


def _damage_numpy_range(rng):
    name, keys, pos, has_gauss, cached = rng["numpy"]
    rng["numpy"] = (name, keys - 2**40, pos, has_gauss, cached)  # would wrap silently


@pytest.mark.parametrize(
    "damage",
    [
        _damage_torch_size,
        _damage_torch_dtype,
        _damage_python,
        _damage_numpy_length,
        _damage_numpy_range,
    ],
    ids=["torch-size", "torch-dtype", "python", "numpy-length", "numpy-range"],
)
def test_load_training_with_a_refused_rng_state_changes_nothing(tmp_path, float32, damage):
    program, straight, optim = _three_steps_and_pyro_straight_through(7)
    path = tmp_path / "train.pt"
    checkpoint.save_training(path, optim)
    run(lambda: optim, 1, program, start=3, optim=optim)
    saved = torch.load(path, weights_only=False)
    damage(saved["rng"])
    torch.save(saved, path)

    random.random(), np.random.rand(), torch.rand(1)  # away from the file's states
    optim_before, params_before, generators = optim.get_state(), _params(), _generators()
    with pytest.raises(ValueError, match=rf"^{path}: its 'rng' entry") as info:
        checkpoint.load_training(path, optim)
    assert "refuses" in str(info.value) or "not the random generators" in str(info.value)
    assert_same_optimizer_state(optim.get_state(), optim_before)
    _assert_params_equal(_params(), params_before)
    _assert_generators(generators)
    # and training goes on as pyro.optim's straight through the 7 steps
    after = run(lambda: optim, 3, program, start=4, optim=optim)[-1]
    _assert_params_equal(after, straight)


def test_load_training_restores_every_generator(tmp_path):
    fresh_store()
    optim = pyroopt.Adam({"lr": 0.05})
    run(lambda: optim, 2, Program(shapes=PROGRAM_SHAPES), optim=optim)
    path = tmp_path / "train.pt"
    checkpoint.save_training(path, optim)
    draws = random.random(), np.random.rand(), torch.rand(2)
    checkpoint.load_training(path, optim)
    again = random.random(), np.random.rand(), torch.rand(2)
    assert draws[:2] == again[:2] and torch.equal(draws[2], again[2])


def test_load_training_names_the_file_of_an_error_from_the_param_store(tmp_path, monkeypatch):
    fresh_store()
    optim = pyroopt.Adam({"lr": 0.05})
    run(lambda: optim, 2, Program(shapes=PROGRAM_SHAPES), optim=optim)
    path = tmp_path / "train.pt"
    checkpoint.save_training(path, optim)
    torch.rand(1)
    store = pyro.get_param_store()
    optim_before, params_before, generators = optim.get_state(), _params(), _generators()
    real_set_state = type(store).set_state
    calls = []

    def set_state_failing_once(self, state):
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("store refused")
        real_set_state(self, state)

    monkeypatch.setattr(type(store), "set_state", set_state_failing_once)
    with pytest.raises(RuntimeError, match=rf"^{path}: store refused"):
        checkpoint.load_training(path, optim)
    monkeypatch.undo()
    assert_same_optimizer_state(optim.get_state(), optim_before)
    _assert_params_equal(_params(), params_before)
    _assert_generators(generators)


# -- 9. set_state checks hyperparameters and state entries first ----------------------


def _stepped_adam_state():
    fresh_store()
    optim = pyroopt.Adam({"lr": 0.05})
    run(lambda: optim, 3, Program(shapes=PROGRAM_SHAPES), optim=optim)
    return optim


BAD_GROUP_VALUES = [
    ("lr", "abc", TypeError),
    ("lr", None, TypeError),
    ("lr", True, TypeError),
    ("lr", float("nan"), ValueError),
    ("lr", -0.1, ValueError),
    ("lr", torch.tensor([0.1, 0.2]), TypeError),
    ("betas", (0.9, 1.0), ValueError),
    ("betas", (0.9, "x"), TypeError),
    ("betas", 0.9, TypeError),
    ("eps", -1e-8, ValueError),
    ("weight_decay", "0", TypeError),
    ("amsgrad", "yes", TypeError),
    ("foreach", 1, TypeError),
]
BAD_STATE_VALUES = [
    ("step", -7, ValueError),
    ("step", 2.5, ValueError),
    ("step", "3", TypeError),
    ("step", True, TypeError),
    ("step", torch.tensor(-1.0), ValueError),
    ("step", torch.tensor(float("nan")), ValueError),
    ("exp_avg", [0.0, 0.0, 0.0], TypeError),
    ("exp_avg_sq", None, TypeError),
]


def _ids(cases):
    return [f"{key}={value!r}".replace(" ", "") for key, value, _ in cases]


@pytest.mark.parametrize("key,value,error", BAD_GROUP_VALUES, ids=_ids(BAD_GROUP_VALUES))
def test_set_state_refuses_a_bad_hyperparameter_and_changes_nothing(float32, key, value, error):
    optim = _stepped_adam_state()
    state = optim.get_state()
    state["a"]["param_groups"][0][key] = value
    before, params = optim.get_state(), _params()
    with pytest.raises(error) as info:
        optim.set_state(state)
    message = str(info.value)
    for part in ("'a'", repr(key), repr(value), "allowed: "):
        assert part in message, (part, message)
    assert_same_optimizer_state(optim.get_state(), before)
    _assert_params_equal(_params(), params)


@pytest.mark.parametrize("key,value,error", BAD_STATE_VALUES, ids=_ids(BAD_STATE_VALUES))
def test_set_state_refuses_a_bad_state_entry_and_changes_nothing(float32, key, value, error):
    optim = _stepped_adam_state()
    state = optim.get_state()
    state["a"]["state"][0][key] = value
    before = optim.get_state()
    with pytest.raises(error) as info:
        optim.set_state(state)
    message = str(info.value)
    for part in ("'a'", repr(key), repr(value), "allowed: "):
        assert part in message, (part, message)
    assert_same_optimizer_state(optim.get_state(), before)


def test_a_state_under_another_index_is_refused():
    optim = _stepped_adam_state()
    state = optim.get_state()
    state["a"]["state"] = {1: state["a"]["state"][0]}  # would be dropped without a word
    with pytest.raises(ValueError, match=r"'a'.*\{0: \{key: value\}\}, found \{1: dict\}"):
        optim.set_state(state)


def test_a_refused_state_in_a_file_names_the_file_and_training_goes_on_as_pyro(tmp_path, float32):
    program, straight, optim = _three_steps_and_pyro_straight_through(6)
    state = optim.get_state()
    state["w"]["param_groups"][0]["lr"] = "abc"
    path = tmp_path / "bad.pt"
    checkpoint.save_state(state, path)
    with pytest.raises(TypeError, match=rf"^{path}: .*'w'.*'lr' = 'abc'; allowed: a real"):
        optim.load(path)
    _assert_params_equal(run(lambda: optim, 3, program, start=3, optim=optim)[-1], straight)


def test_a_schedule_s_optimizer_state_is_checked_too():
    fresh_store()
    sched = pyroopt.StepLR(
        {"optimizer": torch.optim.Adam, "optim_args": {"lr": 0.05}, "step_size": 2}
    )
    run(lambda: sched, 2, Program(shapes=PROGRAM_SHAPES), optim=sched)
    state = sched.get_state()
    state["a"]["optimizer"]["state"][0]["step"] = -7
    before = sched.get_state()
    with pytest.raises(ValueError, match=r"'a'.*'step' = -7; allowed: a whole number >= 0"):
        sched.set_state(state)
    assert torch.equal(
        sched.get_state()["a"]["optimizer"]["state"][0]["step"],
        before["a"]["optimizer"]["state"][0]["step"],
    )


ACCEPTED_CASES = [
    ("Adam", {"lr": 0.05, "amsgrad": True, "weight_decay": 0.1}),
    ("Adam", {"lr": 0.05, "fused": True}),
    ("AdamW", {"lr": 0.05}),
    ("SGD", {"lr": 0.05}),
    ("SGD", {"lr": 0.05, "momentum": 0.9, "dampening": 0.1, "nesterov": False}),
    ("RMSprop", {"lr": 0.01, "momentum": 0.5, "centered": True}),
    ("Rprop", {"lr": 0.01}),
    ("Adagrad", {"lr": 0.1, "lr_decay": 0.01}),
    ("Adadelta", {"lr": 1.0}),
    ("Adamax", {"lr": 0.05}),
    ("ASGD", {"lr": 0.05}),
    ("NAdam", {"lr": 0.05}),
    ("RAdam", {"lr": 0.05}),
    ("Adafactor", {"lr": 0.05}),
    ("ClippedAdam", {"lr": 0.05, "clip_norm": 0.5, "lrd": 0.99}),
    ("AdagradRMSProp", {"eta": 0.5}),
    ("DCTAdam", {"lr": 0.05, "subsample_aware": True}),
]


@pytest.mark.parametrize("module", [pyro.optim, pyroopt], ids=["pyro", "pyroopt"])
@pytest.mark.parametrize("name,args", ACCEPTED_CASES, ids=[n for n, _ in ACCEPTED_CASES])
def test_every_state_pyro_optim_and_pyroopt_write_is_accepted(module, name, args):
    fresh_store()
    optim = getattr(module, name)(args)
    run(lambda: optim, 4, Program(shapes=PROGRAM_SHAPES), optim=optim)
    for param_name, state in optim.get_state().items():
        state_checks.check_param_state(param_name, state)


@pytest.mark.parametrize("module", [pyro.optim, pyroopt], ids=["pyro", "pyroopt"])
@pytest.mark.parametrize(
    "name,cls,kwargs", SCHEDULE_CASES, ids=[f"{n}-{c.__name__}" for n, c, _ in SCHEDULE_CASES]
)
def test_every_schedule_state_is_accepted(module, name, cls, kwargs):
    fresh_store()
    sched, _ = run_schedule(module, name, cls, kwargs, epochs=4)
    for param_name, state in sched.get_state().items():
        state_checks.check_scheduler_state(param_name, state)


def test_states_of_other_forms_torch_loads_continue_as_pyro_optim(float32):
    """Float and int steps (older files) and a tensor lr load and step as in pyro.optim."""
    program = Program(shapes=PROGRAM_SHAPES)
    finals = []
    for module in (pyro.optim, pyroopt):
        fresh_store()
        optim = module.Adam({"lr": 0.05})
        run(lambda o=optim: o, 3, program, optim=optim)
        state = optim.get_state()
        state["a"]["state"][0]["step"] = float(state["a"]["state"][0]["step"])
        state["w"]["state"][0]["step"] = int(state["w"]["state"][0]["step"])
        state["w"]["param_groups"][0]["lr"] = torch.tensor(0.05)
        resumed = module.Adam({"lr": 0.05})
        resumed.set_state(state)
        finals.append(run(lambda o=resumed: o, 3, program, start=3, optim=resumed)[-1])
    _assert_params_equal(finals[1], finals[0])


# -- 10. save: long names, unwritable targets, hard links -------------------------------


@pytest.mark.parametrize(
    "basename",
    ["n" * 241, "n" * 242, "n" * 250, "n" * 255, "\u00e9" * 127],
    ids=["241", "242", "250", "255", "254-bytes-utf8"],
)
def test_save_onto_the_longest_names_works_as_pyro_optim_s(tmp_path, basename):
    states = []
    for module, folder in ((pyro.optim, tmp_path / "pyro"), (pyroopt, tmp_path / "pyroopt")):
        folder.mkdir()
        fresh_store()
        optim = module.Adam({"lr": 0.05})
        run(lambda o=optim: o, 3, Program(shapes=PROGRAM_SHAPES), optim=optim)
        optim.save(folder / basename)
        optim.save(folder / basename)  # over an existing file, too
        assert os.listdir(folder) == [basename]
        loaded = torch.load(folder / basename, weights_only=True)
        loaded.pop(checkpoint.METADATA_KEY, None)
        states.append(loaded)
    assert_same_optimizer_state(states[1], states[0])


_HANGING_SAVE = textwrap.dedent(
    """
    import os, sys, time, torch
    from pyroopt import atomic_file

    real_fsync = os.fsync
    def fsync_then_hang(fd):
        real_fsync(fd)
        print("written", flush=True)
        time.sleep(600)
    os.fsync = fsync_then_hang
    atomic_file.save_atomic({"x": torch.zeros(10)}, sys.argv[1])
    """
)


def _python_env():
    return {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}


def test_the_temp_file_of_a_killed_save_of_a_long_name_is_removed(tmp_path):
    path = tmp_path / ("k" * 250)
    path.write_bytes(b"old")
    proc = subprocess.Popen(
        [sys.executable, "-c", _HANGING_SAVE, str(path)],
        stdout=subprocess.PIPE,
        env=_python_env(),
        text=True,
    )
    assert proc.stdout is not None
    try:
        assert proc.stdout.readline().strip() == "written", "the saving subprocess failed"
    finally:
        proc.kill()
        proc.wait()
        proc.stdout.close()
    [stale] = [n for n in os.listdir(tmp_path) if n.endswith(".tmp")]
    assert len(os.fsencode(stale)) <= 255 and stale.startswith(".kkk")
    # a stale temp file of another long name with the same start is not this target's
    other = tmp_path / (stale[:-21] + "00000000.abcdefgh.tmp")
    other.write_bytes(b"keep")
    age = time.time() - atomic_file.STALE_TEMP_AGE_S - 1
    for name in (stale, other.name):
        os.utime(tmp_path / name, (age, age))
    atomic_file.save_atomic({"x": torch.ones(2)}, path)
    assert sorted(os.listdir(tmp_path)) == sorted([path.name, other.name])
    assert torch.equal(torch.load(path, weights_only=True)["x"], torch.ones(2))


_UNPRIVILEGED_SAVES = textwrap.dedent(
    """
    import os, sys
    import pyro.optim, pyroopt, torch

    folder = sys.argv[1]
    # a first save of each kind imports all it needs while the interpreter's own files
    # (which may be root's alone) are readable
    warm_up = os.path.join(folder, "warm_up.pt")
    pyro.optim.Adam({"lr": 0.1}).save(warm_up)
    pyroopt.Adam({"lr": 0.1}).save(warm_up)
    os.remove(warm_up)
    os.setgid(65534)
    os.setuid(65534)

    def attempt(label, save, path):
        try:
            save(path)
            print(label, "saved")
        except OSError as e:
            print(label, type(e).__name__, e.errno, str(path) in str(e))

    read_only = os.path.join(folder, "read_only.pt")
    with open(read_only, "wb") as f:
        f.write(b"old")
    os.chmod(read_only, 0o444)
    attempt("open", lambda p: open(p, "wb").close(), read_only)
    attempt("pyro", pyro.optim.Adam({"lr": 0.1}).save, read_only)
    attempt("pyroopt", pyroopt.Adam({"lr": 0.1}).save, read_only)
    with open(read_only, "rb") as f:
        print("contents", f.read())
    print("mode", oct(os.stat(read_only).st_mode & 0o777))

    locked = os.path.join(folder, "locked")
    os.mkdir(locked)
    writable = os.path.join(locked, "writable.pt")
    with open(writable, "wb") as f:
        f.write(b"old")
    os.chmod(locked, 0o555)
    attempt("folder-pyroopt", pyroopt.Adam({"lr": 0.1}).save, writable)
    attempt("new-file-pyroopt", pyroopt.Adam({"lr": 0.1}).save, os.path.join(locked, "new.pt"))
    with open(writable, "rb") as f:
        print("folder-contents", f.read())
    print("listing", sorted(os.listdir(locked)))
    os.chmod(locked, 0o755)
    """
)


def _run_unprivileged(script, folder):
    """Run ``script`` with ``folder`` as the user 65534 (the tests run as root, for whom
    every file is writable); an unprivileged test run runs it as itself."""
    if os.geteuid() == 0:
        os.chown(folder, 65534, 65534)
    else:
        script = script.replace("os.setgid(65534)", "").replace("os.setuid(65534)", "")
    result = subprocess.run(
        [sys.executable, "-c", script, folder],
        capture_output=True,
        text=True,
        env=_python_env(),
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    return dict(line.split(" ", 1) for line in result.stdout.splitlines())


def test_save_over_a_file_the_user_cannot_write_is_refused_as_open_refuses():
    folder = tempfile.mkdtemp()  # not under pytest's root-only folder
    try:
        os.chmod(folder, 0o755)
        out = _run_unprivileged(_UNPRIVILEGED_SAVES, folder)
    finally:
        shutil.rmtree(folder)
    assert out["open"].startswith("PermissionError 13")
    assert out["pyro"].startswith("PermissionError 13")
    assert out["pyroopt"] == "PermissionError 13 True"  # and it names the file
    assert out["contents"] == "b'old'" and out["mode"] == "0o444"
    # a folder it cannot write: an atomic save cannot place its temporary file there
    assert out["folder-pyroopt"] == "PermissionError 13 True"
    assert out["new-file-pyroopt"] == "PermissionError 13 True"
    assert out["folder-contents"] == "b'old'" and out["listing"] == "['writable.pt']"


def test_root_saves_over_a_read_only_file_as_open_does(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("only root may write a 0o444 file")
    path = tmp_path / "optim.pt"
    path.write_bytes(b"old")
    os.chmod(path, 0o444)
    atomic_file.save_atomic({"x": torch.ones(2)}, path)
    assert torch.equal(torch.load(path, weights_only=True)["x"], torch.ones(2))
    assert oct(os.stat(path).st_mode & 0o777) == "0o444"


def test_a_hard_link_to_the_old_file_keeps_the_old_contents(tmp_path):
    path, link = tmp_path / "optim.pt", tmp_path / "backup.pt"
    atomic_file.save_atomic({"x": torch.zeros(2)}, path)
    os.link(path, link)
    atomic_file.save_atomic({"x": torch.ones(2)}, path)
    assert torch.equal(torch.load(path, weights_only=True)["x"], torch.ones(2))
    assert torch.equal(torch.load(link, weights_only=True)["x"], torch.zeros(2))
    assert os.stat(path).st_nlink == 1 and os.stat(link).st_nlink == 1


# -- 11. map_location is checked before the file is read ---------------------------------


def _saved(tmp_path):
    fresh_store()
    optim = pyroopt.Adam({"lr": 0.05})
    run(lambda: optim, 3, Program(shapes=PROGRAM_SHAPES), optim=optim)
    path = tmp_path / "optim.pt"
    optim.save(path)
    return optim, path


@pytest.mark.parametrize(
    "map_location,error,says",
    [
        (123, TypeError, r"map_location=123 is not allowed; expected None, a device"),
        ([], TypeError, r"map_location=\[\] is not allowed"),
        (b"cpu", TypeError, r"map_location=b'cpu' is not allowed"),
        ({"cpu": 1}, TypeError, r"map_location's entry 'cpu': 1 is not allowed; a dict"),
        ("nonsense", ValueError, r"map_location 'nonsense' is not a device torch knows"),
        ("meta", ValueError, r"map_location 'meta' is the meta device, whose tensors hold no"),
        (torch.device("meta"), ValueError, r"map_location device\(type='meta'\) is the meta"),
        ("cuda:99", ValueError, r"map_location 'cuda:99' names .*cuda"),
        ({"cpu": "meta"}, ValueError, r"map_location\['cpu'\] 'meta' is the meta device"),
    ],
    ids=[
        "int",
        "list",
        "bytes",
        "dict-int",
        "unknown",
        "meta",
        "meta-device",
        "cuda-99",
        "dict-meta",
    ],
)
def test_a_bad_map_location_is_named_and_nothing_changes(tmp_path, map_location, error, says):
    optim, path = _saved(tmp_path)
    before = optim.get_state()
    for load in (optim.load, lambda p, m: checkpoint.load_training(p, optim, m)):
        with pytest.raises(error, match=rf"^cannot load {path}: {says}") as info:
            load(path, map_location)
        assert "corrupt" not in str(info.value)
    assert_same_optimizer_state(optim.get_state(), before)


def test_an_error_of_a_map_location_callable_is_its_own_and_names_the_file(tmp_path):
    optim, path = _saved(tmp_path)

    def refuse(storage, location):
        raise RuntimeError("no room")

    with pytest.raises(RuntimeError, match=rf"^cannot load {path}: map_location raised .*no room"):
        optim.load(path, map_location=refuse)


@pytest.mark.parametrize(
    "map_location",
    [
        None,
        "cpu",
        torch.device("cpu"),
        {"cpu": "cpu"},
        {"cpu": torch.device("cpu")},
        lambda storage, location: storage,
    ],
    ids=["none", "str", "device", "dict", "dict-device", "callable"],
)
def test_every_form_of_map_location_loads_as_pyro_optim(tmp_path, float32, map_location):
    program = Program(shapes=PROGRAM_SHAPES)
    finals = []
    for module in (pyro.optim, pyroopt):
        fresh_store()
        optim = module.Adam({"lr": 0.05})
        run(lambda o=optim: o, 3, program, optim=optim)
        path = tmp_path / f"{module.__name__}.pt"
        optim.save(path)
        resumed = module.Adam({"lr": 0.05})
        torch_form = map_location
        if module is pyro.optim and isinstance(map_location, dict):
            torch_form = {k: str(v) for k, v in map_location.items()}  # torch's dict form
        resumed.load(path, map_location=torch_form)
        finals.append(run(lambda o=resumed: o, 3, program, start=3, optim=resumed)[-1])
    _assert_params_equal(finals[1], finals[0])
