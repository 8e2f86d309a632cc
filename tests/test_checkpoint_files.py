"""Checkpoint files on disk: links, modes, killed saves, full disks, errors naming files."""

from __future__ import annotations

import errno
import os
import signal
import stat
import subprocess
import sys
import textwrap
import time

import pyro
import pytest
import torch
from programs import assert_same_optimizer_state, fresh_store, run

import pyroopt
from pyroopt import atomic_file, checkpoint

STALE_AGE = atomic_file.STALE_TEMP_AGE_S + 1


def _saved_x(path):
    return torch.load(path, weights_only=True)["x"]


# -- save: links and modes ----------------------------------------------------------
def test_save_onto_a_symlink_replaces_its_target_and_keeps_the_link(tmp_path):
    real = tmp_path / "real" / "optim.pt"
    real.parent.mkdir()
    real.write_bytes(b"old")
    link = tmp_path / "optim.pt"
    link.symlink_to(real)
    atomic_file.save_atomic({"x": torch.ones(2)}, link)
    assert link.is_symlink() and os.readlink(link) == str(real)
    assert torch.equal(_saved_x(real), torch.ones(2))
    assert sorted(os.listdir(tmp_path)) == ["optim.pt", "real"]
    assert os.listdir(real.parent) == ["optim.pt"]


def test_save_through_a_dangling_symlink_creates_its_target(tmp_path):
    real = tmp_path / "new.pt"
    link = tmp_path / "link.pt"
    link.symlink_to(real)
    pyroopt.Adam({"lr": 0.1}).save(link)
    assert link.is_symlink() and real.is_file()


def test_new_file_gets_open_s_mode_under_the_umask(tmp_path):
    old = os.umask(0o027)
    try:
        atomic_file.save_atomic({"x": torch.ones(2)}, tmp_path / "a.pt")
        with open(tmp_path / "b.pt", "wb"):
            pass
    finally:
        os.umask(old)
    assert os.stat(tmp_path / "a.pt").st_mode & 0o7777 == 0o640
    assert os.stat(tmp_path / "a.pt").st_mode == os.stat(tmp_path / "b.pt").st_mode


def test_existing_file_keeps_its_mode_as_with_torch_save(tmp_path):
    for module_save, name in [(torch.save, "torch.pt"), (atomic_file.save_atomic, "ours.pt")]:
        path = tmp_path / name
        path.write_bytes(b"old")
        os.chmod(path, 0o604)
        module_save({"x": torch.ones(2)}, path)
        assert os.stat(path).st_mode & 0o7777 == 0o604, name


def _device(tmp_path, name, minor):
    """A character device node in ``tmp_path`` (never the system's: a regressed save
    would replace it), or skip where nodes cannot be made or opened."""
    path = tmp_path / name
    try:
        os.mknod(path, stat.S_IFCHR | 0o666, os.makedev(1, minor))
        with open(path, "wb"):
            pass
    except OSError as e:
        pytest.skip(f"cannot make or open a device node here: {e}")
    return path


def test_device_targets_are_written_in_place_not_replaced(tmp_path):
    null = _device(tmp_path, "null", 3)
    atomic_file.save_atomic({"x": torch.ones(2)}, null)
    assert stat.S_ISCHR(os.stat(null).st_mode)
    assert os.listdir(tmp_path) == ["null"]


# -- save: temporary files left by a killed save --------------------------------------
_SLOW_SAVE = textwrap.dedent(
    """
    import os, sys, time, torch
    from pyroopt import atomic_file

    real_fsync = os.fsync
    def fsync_then_hang(fd):
        real_fsync(fd)
        print("written", flush=True)
        time.sleep(600)
    os.fsync = fsync_then_hang
    atomic_file.save_atomic({"x": torch.zeros(1000)}, sys.argv[1])
    """
)


def _start_hanging_save(path):
    """A subprocess that has written its temp file of ``path`` and hangs before the rename."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.Popen(
        [sys.executable, "-c", _SLOW_SAVE, str(path)], stdout=subprocess.PIPE, env=env, text=True
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "written", "the saving subprocess failed"
    return proc


def _backdate(path, seconds):
    t = time.time() - seconds
    os.utime(path, (t, t))


def _temps(folder):
    return sorted(n for n in os.listdir(folder) if n.endswith(".tmp"))


def test_next_save_removes_the_temp_file_of_a_killed_save(tmp_path):
    path = tmp_path / "optim.pt"
    path.write_bytes(b"old")
    proc = _start_hanging_save(path)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    proc.stdout.close()
    [stale] = _temps(tmp_path)
    assert stale.startswith(".optim.pt.")
    assert path.read_bytes() == b"old"  # the killed save left the old file
    # files that only look alike, or belong to another target, are not ours to remove
    unrelated = [".optim.pt.notes.tmp", ".optim.pt.abcdefgh.tmp.bak", ".other.pt.abcdefgh.tmp"]
    for name in unrelated:
        (tmp_path / name).write_bytes(b"keep")
    for name in [stale, *unrelated]:
        _backdate(tmp_path / name, STALE_AGE)
    atomic_file.save_atomic({"x": torch.ones(2)}, path)
    assert sorted(os.listdir(tmp_path)) == sorted(["optim.pt", *unrelated])
    assert torch.equal(_saved_x(path), torch.ones(2))


def test_a_fresh_temp_file_is_left_alone(tmp_path):
    # a save that has just created its temp file and not yet locked it looks the same
    path = tmp_path / "optim.pt"
    fresh = tmp_path / ".optim.pt.abcd1234.tmp"
    fresh.write_bytes(b"")
    atomic_file.save_atomic({"x": torch.ones(2)}, path)
    assert fresh.exists()
    _backdate(fresh, STALE_AGE)
    atomic_file.save_atomic({"x": torch.ones(2)}, path)
    assert not fresh.exists()


@pytest.mark.skipif(sys.platform == "win32", reason="no file locks on this platform")
def test_a_concurrent_save_s_temp_file_is_left_alone(tmp_path):
    path = tmp_path / "optim.pt"
    proc = _start_hanging_save(path)
    try:
        [theirs] = _temps(tmp_path)
        _backdate(tmp_path / theirs, 3600)  # old, but its save is alive and holds the lock
        atomic_file.save_atomic({"x": torch.ones(2)}, path)
        assert _temps(tmp_path) == [theirs]
        assert torch.equal(_saved_x(path), torch.ones(2))
    finally:
        proc.kill()
        proc.wait()
        proc.stdout.close()


# -- save: errors name the target ---------------------------------------------------
def test_full_disk_names_the_target_and_the_cause(tmp_path, monkeypatch):
    path = tmp_path / "optim.pt"
    path.write_bytes(b"old")
    real_fdopen = os.fdopen

    class FullDisk:
        def __init__(self, f):
            self._f, self._written = f, 0

        def write(self, data):
            self._written += len(data)
            if self._written > 100:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            return self._f.write(data)

        def __getattr__(self, name):
            return getattr(self._f, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self._f.close()

    monkeypatch.setattr(atomic_file.os, "fdopen", lambda *a, **k: FullDisk(real_fdopen(*a, **k)))
    with pytest.raises(OSError, match="No space left on device") as info:
        atomic_file.save_atomic({"x": torch.zeros(10000)}, path)
    assert info.value.errno == errno.ENOSPC
    assert str(path) in str(info.value) and "unexpected pos" not in str(info.value)
    assert path.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["optim.pt"]


def test_full_disk_at_fsync_names_the_target(tmp_path, monkeypatch):
    path = tmp_path / "optim.pt"

    def fsync(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(atomic_file.os, "fsync", fsync)
    with pytest.raises(OSError, match=f"cannot save {path}: No space left on device"):
        pyroopt.Adam({"lr": 0.1}).save(path)
    assert os.listdir(tmp_path) == []


def test_dev_full_names_the_target_and_the_cause(tmp_path):
    full = _device(tmp_path, "full", 7)
    with pytest.raises(OSError, match=f"cannot save {full}: No space left on device"):
        atomic_file.save_atomic({"x": torch.zeros(100000)}, full)
    assert stat.S_ISCHR(os.stat(full).st_mode)


def test_full_tmpfs_leaves_the_old_file_and_no_temp_file(tmp_path):
    mnt = tmp_path / "small"
    mnt.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mnt)], capture_output=True
    )
    if mounted.returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        path = mnt / "optim.pt"
        path.write_bytes(b"old")
        with pytest.raises(OSError, match=f"cannot save {path}: No space left on device"):
            atomic_file.save_atomic({"x": torch.zeros(100000)}, path)
        assert path.read_bytes() == b"old"
        assert os.listdir(mnt) == ["optim.pt"]
    finally:
        subprocess.run(["umount", str(mnt)], check=True)


def test_missing_folder_names_the_target(tmp_path):
    path = tmp_path / "nope" / "optim.pt"
    with pytest.raises(FileNotFoundError, match=f"cannot save {path}: its folder .* not exist"):
        pyroopt.Adam({"lr": 0.1}).save(path)
    with pytest.raises(FileNotFoundError, match=f"cannot save {path}"):
        checkpoint.save_training(path, pyroopt.Adam({"lr": 0.1}))


def test_folder_or_file_in_the_way_names_the_target(tmp_path):
    (tmp_path / "a_file").write_bytes(b"")
    with pytest.raises(NotADirectoryError, match="a_file is not a folder"):
        atomic_file.save_atomic({}, tmp_path / "a_file" / "optim.pt")
    with pytest.raises(IsADirectoryError, match=f"cannot save {tmp_path}: it is a folder"):
        atomic_file.save_atomic({}, tmp_path)


def test_unwritable_folder_names_the_target(tmp_path, monkeypatch):
    path = tmp_path / "optim.pt"

    def mkstemp(*args, **kwargs):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(tmp_path / ".x.tmp"))

    monkeypatch.setattr(atomic_file.tempfile, "mkstemp", mkstemp)
    with pytest.raises(PermissionError, match=f"cannot save {path}: Permission denied") as info:
        atomic_file.save_atomic({}, path)
    assert ".tmp" not in str(info.value)


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_folder_names_the_target(tmp_path):
    os.chmod(tmp_path, 0o500)
    try:
        with pytest.raises(PermissionError, match=f"cannot save {tmp_path / 'o.pt'}"):
            atomic_file.save_atomic({}, tmp_path / "o.pt")
    finally:
        os.chmod(tmp_path, 0o700)


def test_unpicklable_object_keeps_its_error_type_and_names_the_target(tmp_path):
    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("boom")

    path = tmp_path / "optim.pt"
    with pytest.raises(RuntimeError, match=f"cannot save {path}: boom"):
        atomic_file.save_atomic({"x": Unpicklable()}, path)
    assert os.listdir(tmp_path) == []


# -- load: errors name the file -----------------------------------------------------
def _stepped(make, steps=3):
    optim = make()
    run(lambda: optim, steps)
    return optim


def test_state_of_another_optimizer_class_names_the_file(tmp_path):
    fresh_store()
    sgd = _stepped(lambda: pyroopt.SGD({"lr": 0.1, "momentum": 0.9}))
    path = tmp_path / "sgd.pt"
    sgd.save(path)
    adam = _stepped(lambda: pyroopt.Adam({"lr": 0.1}))
    before = adam.get_state()
    with pytest.raises(ValueError, match=rf"^{path}: .*'a' has hyperparameters \['dampening'"):
        adam.load(path)
    assert_same_optimizer_state(adam.get_state(), before)


def test_state_shaped_unlike_the_parameters_names_the_file(tmp_path):
    fresh_store()
    optim = _stepped(lambda: pyroopt.Adam({"lr": 0.1}))
    state = optim.get_state()
    state["a"]["state"][0]["exp_avg"] = torch.zeros(7)
    path = tmp_path / "bad.pt"
    checkpoint.save_state(state, path)
    before = optim.get_state()
    with pytest.raises(ValueError, match=rf"^{path}: .*'a'.*'exp_avg' has shape \(7,\)"):
        optim.load(path)
    assert_same_optimizer_state(optim.get_state(), before)


def test_pyro_optim_load_names_the_file_of_another_optimizer_class(tmp_path):
    fresh_store()
    path = tmp_path / "sgd.pt"
    _stepped(lambda: pyroopt.SGD({"lr": 0.1, "momentum": 0.9})).save(path)
    adam = _stepped(lambda: pyroopt.Adam({"lr": 0.1}))
    with pytest.raises(ValueError, match=str(path)):
        adam.load(path)


# -- load_training: all or nothing --------------------------------------------------
def _snapshot():
    store = pyro.get_param_store()
    params = {name: (p, p.detach().clone()) for name, p in store._params.items()}
    return params, dict(store._constraints), torch.get_rng_state()


def _assert_unchanged(snapshot):
    params, constraints, rng = snapshot
    store = pyro.get_param_store()
    assert store._params.keys() == params.keys()
    for name, (p, value) in params.items():
        assert store._params[name] is p and torch.equal(p, value), name
        assert store.param_name(p) == name
    assert store._constraints == constraints
    assert torch.equal(torch.get_rng_state(), rng)


def _training_file_with_a_new_shape(tmp_path):
    """A save_training file whose 'a' is (5,) in the store, its Adam state still (3,)."""
    optim = _stepped(lambda: pyroopt.Adam({"lr": 0.1}), 6)
    path = tmp_path / "train.pt"
    checkpoint.save_training(path, optim)
    state = torch.load(path, weights_only=False)
    state["param_store"]["params"]["a"] = torch.zeros(5)
    torch.save(state, path)
    return optim, path


def test_load_training_with_changed_shapes_changes_nothing(tmp_path):
    fresh_store()
    optim, path = _training_file_with_a_new_shape(tmp_path)
    optim_before, store_before = optim.get_state(), _snapshot()
    torch.rand(3)  # move the generator away from the file's saved state
    store_before = (*store_before[:2], torch.get_rng_state())
    with pytest.raises(ValueError, match=rf"^{path}: .*'a'.*shape \(3,\).*shape \(5,\)"):
        checkpoint.load_training(path, optim)
    _assert_unchanged(store_before)
    assert_same_optimizer_state(optim.get_state(), optim_before)


def test_load_training_entries_for_unknown_names_wait(tmp_path):
    fresh_store()
    optim = _stepped(lambda: pyroopt.Adam({"lr": 0.1}), 6)
    path = tmp_path / "train.pt"
    checkpoint.save_training(path, optim)
    state = torch.load(path, weights_only=False)
    state["optimizer"]["not_yet"] = state["optimizer"]["a"]
    torch.save(state, path)
    resumed = pyroopt.Adam({"lr": 0.1})
    checkpoint.load_training(path, resumed)
    assert "not_yet" in resumed.get_state()


def test_load_training_puts_the_store_back_when_the_optimizer_refuses(tmp_path, monkeypatch):
    fresh_store()
    optim = _stepped(lambda: pyroopt.Adam({"lr": 0.1}), 6)
    path = tmp_path / "train.pt"
    checkpoint.save_training(path, optim)
    fresh_store()
    pyro.param("a", torch.ones(3))
    pyro.param("other", torch.ones(2))
    before = _snapshot()
    optim_before = optim.get_state()

    def refuse(state, where):
        raise ValueError("refused")

    monkeypatch.setattr(optim, "_set_state", refuse)
    with pytest.raises(ValueError, match=f"^{path}: refused"):
        checkpoint.load_training(path, optim)
    _assert_unchanged(before)
    monkeypatch.undo()
    assert_same_optimizer_state(optim.get_state(), optim_before)


def test_load_training_names_the_file_of_a_damaged_rng_entry(tmp_path):
    fresh_store()
    optim = _stepped(lambda: pyroopt.Adam({"lr": 0.1}))
    path = tmp_path / "train.pt"
    checkpoint.save_training(path, optim)
    state = torch.load(path, weights_only=False)
    state["rng"] = {"torch": torch.zeros(3)}
    torch.save(state, path)
    before = _snapshot()
    with pytest.raises(ValueError, match=f"^{path}: its 'rng' entry"):
        checkpoint.load_training(path, optim)
    _assert_unchanged(before)


def test_load_training_checks_entries_against_the_store_s_own_parameters(tmp_path):
    fresh_store()
    optim = _stepped(lambda: pyroopt.Adam({"lr": 0.1}))
    path = tmp_path / "train.pt"
    checkpoint.save_training(path, optim)
    state = torch.load(path, weights_only=False)
    del state["param_store"]["params"]["a"]  # the store's 'a' stays, and is (3,)
    state["optimizer"]["a"]["state"][0]["exp_avg_sq"] = torch.zeros(2, 2)
    torch.save(state, path)
    before = _snapshot()
    with pytest.raises(ValueError, match=rf"^{path}: .*'a'.*'exp_avg_sq' has shape \(2, 2\)"):
        checkpoint.load_training(path, optim)
    _assert_unchanged(before)


def test_error_through_a_link_names_the_link_and_its_target(tmp_path):
    link = tmp_path / "optim.pt"
    link.symlink_to(tmp_path / "gone" / "real.pt")
    with pytest.raises(FileNotFoundError, match=f"cannot save {link} \\(a link to .*real.pt\\)"):
        atomic_file.save_atomic({}, link)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
def test_an_sgd_buffer_saved_as_none_loads_as_in_pyro_optim(dtype):
    """torch before 2.0 saved SGD's momentum buffer as None while momentum was 0; such a
    state, loaded with momentum on, makes the buffer on the next step."""
    group = {
        "lr": 0.1, "momentum": 0.9, "dampening": 0.0, "weight_decay": 0.0, "nesterov": False,
        "maximize": False, "foreach": None, "differentiable": False, "fused": None,
    }  # fmt: skip
    results = []
    for module in (pyro.optim, pyroopt):
        pyro.clear_param_store()
        optim = module.SGD({"lr": 0.1, "momentum": 0.9})
        entry = {
            "state": {0: {"momentum_buffer": None}},
            "param_groups": [{**group, "params": [0]}],
        }
        optim.set_state({"w": entry})
        w = pyro.param("w", torch.linspace(-1, 1, 7, dtype=dtype)).unconstrained()
        for step in range(3):
            w.grad = torch.linspace(0.5, -0.3, 7, dtype=dtype) * (step + 1)
            optim([w])
        results.append((w.detach().clone(), optim.get_state()["w"]["state"][0]["momentum_buffer"]))
    (expected, expected_buffer), (got, got_buffer) = results
    assert torch.equal(got, expected) and torch.equal(got_buffer, expected_buffer)
