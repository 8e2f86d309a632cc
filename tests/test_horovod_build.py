"""pyroopt.horovod_build's logic, with pip and the build stubbed (a real build takes minutes)."""

from __future__ import annotations

import builtins
import subprocess
import sys
import tarfile
from pathlib import Path
from types import SimpleNamespace

import pytest

from pyroopt import horovod_build as hb


def make_sdist(where: Path, cxx: str = hb.CXX14) -> Path:
    src = where / "src" / f"horovod-{hb.HOROVOD_VERSION}"
    (src / "horovod" / "torch").mkdir(parents=True)
    for rel in hb.PATCHED:
        (src / rel).write_text(f"project(x)\n{cxx}\n")
    sdist = where / f"horovod-{hb.HOROVOD_VERSION}.tar.gz"
    with tarfile.open(sdist, "w:gz") as tar:
        tar.add(src, arcname=src.name)
    return sdist


class FakeSubprocess:
    """Stands in for subprocess.run: records commands, plays pip download and pip wheel."""

    def __init__(self, sdist: Path | None, *, installed: bool = False, wheel_rc: int = 0):
        self.sdist, self.installed, self.wheel_rc = sdist, installed, wheel_rc
        self.calls: list[tuple[list[str], dict]] = []

    def __call__(self, cmd, **kwargs):
        cmd = [str(c) for c in cmd]
        self.calls.append((cmd, kwargs))
        out = ""
        rc = 0
        if cmd[1:3] == ["-c", cmd[2]] and "torch.__version__" in cmd[2]:
            out = "2.13.0+cpu\n"
        elif "sys.version_info" in " ".join(cmd):
            out = "cp311\n"
        elif "horovod.__version__" in " ".join(cmd):
            rc = 0 if self.installed else 1
        elif cmd[1:4] == ["-m", "pip", "download"]:
            dest = Path(cmd[cmd.index("-d") + 1])
            dest.joinpath(self.sdist.name).write_bytes(self.sdist.read_bytes())
        elif cmd[1:4] == ["-m", "pip", "wheel"]:
            if self.wheel_rc == 0:
                self.patched = [(Path(cmd[-1]) / rel).read_text() for rel in hb.PATCHED]
                dist = Path(cmd[cmd.index("-w") + 1])
                dist.mkdir(parents=True)
                (dist / f"horovod-{hb.HOROVOD_VERSION}-cp311-cp311-linux_x86_64.whl").write_text("")
            else:
                kwargs["stdout"].write("error: c++ exploded\n")
            rc = self.wheel_rc
        return SimpleNamespace(returncode=rc, stdout=out, stderr="")

    def commands(self, *prefix: str) -> list[list[str]]:
        return [c for c, _ in self.calls if c[1 : 1 + len(prefix)] == list(prefix)]


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("PYROOPT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(hb, "_cmake_ok", lambda: True)
    return tmp_path / "cache"


def test_cache_path_scheme_matches_the_existing_cache(cache):
    assert hb.wheel_dir("2.13.0+cpu", "cp311") == cache / "horovod-0.28.1-torch-2.13.0+cpu-cp311"
    assert hb.wheel_dir("2.13.0+cpu", "cp311", Path.home() / ".cache/pyroopt") == (
        Path.home() / ".cache/pyroopt/horovod-0.28.1-torch-2.13.0+cpu-cp311"
    )


def test_builds_patches_caches_and_installs(cache, tmp_path, monkeypatch):
    fake = FakeSubprocess(make_sdist(tmp_path))
    monkeypatch.setattr(subprocess, "run", fake)
    assert hb.main(["--python", "py"]) == 0
    assert all(hb.CXX17 in text and hb.CXX14 not in text for text in fake.patched)
    ((wheel_cmd, kwargs),) = [(c, k) for c, k in fake.calls if c[1:4] == ["-m", "pip", "wheel"]]
    assert "--no-build-isolation" in wheel_cmd
    for key, value in {
        "HOROVOD_WITH_PYTORCH": "1",
        "HOROVOD_WITH_GLOO": "1",
        "HOROVOD_WITHOUT_MPI": "1",
        "HOROVOD_WITHOUT_TENSORFLOW": "1",
        "HOROVOD_WITHOUT_MXNET": "1",
    }.items():
        assert kwargs["env"][key] == value
    cached = list((cache / "horovod-0.28.1-torch-2.13.0+cpu-cp311").glob("horovod-*.whl"))
    assert len(cached) == 1
    (install,) = fake.commands("-m", "pip", "install", "--quiet", "--no-build-isolation")
    assert install[-1] == str(cached[0])


def test_cached_wheel_is_installed_without_building(cache, monkeypatch):
    d = cache / "horovod-0.28.1-torch-2.13.0+cpu-cp311"
    d.mkdir(parents=True)
    (d / "horovod-0.28.1-cp311-cp311-linux_x86_64.whl").write_text("")
    fake = FakeSubprocess(None)
    monkeypatch.setattr(subprocess, "run", fake)
    assert hb.main(["--python", "py"]) == 0
    assert not fake.commands("-m", "pip", "download")
    assert not fake.commands("-m", "pip", "wheel")
    assert len(fake.commands("-m", "pip", "install")) == 1


def test_already_installed_does_nothing(cache, monkeypatch):
    fake = FakeSubprocess(None, installed=True)
    monkeypatch.setattr(subprocess, "run", fake)
    assert hb.main(["--python", "py"]) == 0
    assert not fake.commands("-m", "pip")


def test_failed_build_says_what_failed(cache, tmp_path, monkeypatch, capsys):
    fake = FakeSubprocess(make_sdist(tmp_path), wheel_rc=1)
    monkeypatch.setattr(subprocess, "run", fake)
    assert hb.main(["--python", "py"]) == 1
    err = capsys.readouterr().err
    assert "building the horovod wheel failed" in err
    assert "c++ exploded" in err and "horovod-build.log" in err
    assert not (cache / "horovod-0.28.1-torch-2.13.0+cpu-cp311").exists()


def test_changed_source_is_refused(cache, tmp_path, monkeypatch, capsys):
    fake = FakeSubprocess(make_sdist(tmp_path, cxx="set(CMAKE_CXX_STANDARD 20)"))
    monkeypatch.setattr(subprocess, "run", fake)
    assert hb.main(["--python", "py"]) == 1
    assert "expected 'set(CMAKE_CXX_STANDARD 14)'" in capsys.readouterr().err


def test_missing_torch_is_named(cache, monkeypatch, capsys):
    def run(cmd, **kwargs):
        return SimpleNamespace(returncode=1, stdout="", stderr="ModuleNotFoundError: torch")

    monkeypatch.setattr(subprocess, "run", run)
    assert hb.main(["--python", "py"]) == 1
    assert "torch must be installed" in capsys.readouterr().err


@pytest.mark.parametrize(
    "error",
    [
        ModuleNotFoundError("No module named 'horovod'"),
        ImportError("Extension horovod.torch has not been built"),  # built without PyTorch
    ],
)
def test_horovod_optimizer_names_the_build_command(monkeypatch, error):
    from pyroopt.distributed import horovod

    real_import = builtins.__import__

    def fake_import(name, *args, **kwargs):
        if name.startswith("horovod"):
            raise error
        return real_import(name, *args, **kwargs)

    monkeypatch.delitem(sys.modules, "horovod.torch", raising=False)
    monkeypatch.setattr(builtins, "__import__", fake_import)
    with pytest.raises(ImportError, match=r"python -m pyroopt\.horovod_build"):
        horovod._horovod()
