"""Build (once) and install Horovod 0.28.1 with PyTorch and Gloo.

Run ``python -m pyroopt.horovod_build``; ``make install`` does.

Horovod 0.28.1 is the last release and asks CMake for C++14, which torch >= 2.1
headers no longer compile under. This module fetches its source distribution with
pip, raises the standard to C++17, builds a wheel against the torch installed in the
running interpreter's environment and caches that wheel under ``$PYROOPT_CACHE``
(default ``~/.cache/pyroopt``) in ``horovod-0.28.1-torch-<torch version>-<python tag>``,
so later installs take seconds.
"""

from __future__ import annotations

import argparse
import glob
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Sequence
from pathlib import Path

HOROVOD_VERSION = "0.28.1"
CXX14 = "set(CMAKE_CXX_STANDARD 14)"
CXX17 = "set(CMAKE_CXX_STANDARD 17)"
PATCHED = ("CMakeLists.txt", "horovod/torch/CMakeLists.txt")
BUILD_ENV = {
    "HOROVOD_WITH_PYTORCH": "1",
    "HOROVOD_WITH_GLOO": "1",
    "HOROVOD_WITHOUT_MPI": "1",
    "HOROVOD_WITHOUT_TENSORFLOW": "1",
    "HOROVOD_WITHOUT_MXNET": "1",
    "HOROVOD_GPU_OPERATIONS": "",
}
BUILD_REQUIREMENTS = ("wheel", "packaging", "psutil", "pyyaml", "cloudpickle")


class HorovodBuildError(RuntimeError):
    """A step of the build failed; the message says which and what to do."""


def _log(message: str) -> None:
    print(f"horovod_build: {message}", flush=True)


def cache_root() -> Path:
    return Path(os.environ.get("PYROOPT_CACHE") or Path.home() / ".cache" / "pyroopt")


def python_tag(python: str = sys.executable) -> str:
    return _query(python, 'import sys; print(f"cp{sys.version_info[0]}{sys.version_info[1]}")')


def torch_version(python: str = sys.executable) -> str:
    try:
        return _query(python, "import torch; print(torch.__version__)")
    except HorovodBuildError as e:
        raise HorovodBuildError(
            f"torch must be installed in {python}'s environment before horovod is built ({e})"
        ) from None


def wheel_dir(torch_ver: str, py_tag: str, root: Path | None = None) -> Path:
    """The cache folder of one horovod wheel: it links against one torch build."""
    return (root or cache_root()) / f"horovod-{HOROVOD_VERSION}-torch-{torch_ver}-{py_tag}"


def _query(python: str, code: str) -> str:
    result = subprocess.run([python, "-c", code], capture_output=True, text=True)
    if result.returncode != 0:
        raise HorovodBuildError(result.stderr.strip().splitlines()[-1:] or "python failed")
    return result.stdout.strip()


def _run(cmd: Sequence[str], what: str, **kwargs: object) -> None:
    result = subprocess.run(list(cmd), **kwargs)  # type: ignore[call-overload]
    if result.returncode != 0:
        raise HorovodBuildError(f"{what} failed (exit {result.returncode}): {' '.join(cmd)}")


def installed(python: str = sys.executable) -> bool:
    """Whether horovod HOROVOD_VERSION with its torch extension imports in ``python``."""
    code = f"import horovod, horovod.torch; assert horovod.__version__ == {HOROVOD_VERSION!r}"
    return subprocess.run([python, "-c", code], capture_output=True).returncode == 0


def patch_cxx_standard(src: Path) -> None:
    """Raise horovod's CMake C++ standard from 14 to 17 (torch >= 2.1 headers need 17)."""
    for rel in PATCHED:
        f = src / rel
        text = f.read_text()
        if CXX14 not in text:
            raise HorovodBuildError(f"expected {CXX14!r} in {f}; horovod's source changed")
        f.write_text(text.replace(CXX14, CXX17))


def _cmake_ok() -> bool:
    cmake = shutil.which("cmake")
    if cmake is None:
        return False
    out = subprocess.run([cmake, "--version"], capture_output=True, text=True).stdout.split()
    try:
        major, minor = (int(x) for x in out[2].split(".")[:2])
    except (IndexError, ValueError):
        return False
    return major == 3 and minor >= 13


def build_wheel(python: str, dest: Path, log: Path) -> Path:
    """Download, patch and build the horovod wheel into ``dest``; return its path."""
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        _run(
            [
                *(python, "-m", "pip", "download", "--quiet", "--no-deps"),
                *("--no-binary", ":all:", "-d", str(work), f"horovod=={HOROVOD_VERSION}"),
            ],
            f"downloading the horovod {HOROVOD_VERSION} source distribution",
        )
        sdist = work / f"horovod-{HOROVOD_VERSION}.tar.gz"
        if not sdist.exists():
            raise HorovodBuildError(f"pip download left no {sdist.name} in {work}")
        with tarfile.open(sdist) as tar:
            tar.extractall(work, filter="data")
        src = work / f"horovod-{HOROVOD_VERSION}"
        patch_cxx_standard(src)
        env = {**os.environ, **BUILD_ENV, "MAKEFLAGS": f"-j{os.cpu_count() or 1}"}
        # Horovod's CMake files predate CMake 4, which refuses them: use a 3.x CMake.
        if not _cmake_ok():
            _run(
                [python, "-m", "pip", "install", "--quiet", "cmake>=3.13,<4"],
                "installing a CMake 3.x to build horovod",
            )
            env["PATH"] = f"{Path(python).parent}{os.pathsep}{env.get('PATH', '')}"
        _run(
            [python, "-m", "pip", "install", "--quiet", *BUILD_REQUIREMENTS],
            "installing horovod's build requirements",
        )
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "w") as out:
            result = subprocess.run(
                [
                    *(python, "-m", "pip", "wheel", "--no-build-isolation", "--no-deps"),
                    *("-w", str(work / "dist"), str(src)),
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
            )
        if result.returncode != 0:
            tail = "".join(log.read_text().splitlines(keepends=True)[-40:])
            raise HorovodBuildError(
                f"building the horovod wheel failed; last lines:\n{tail}\nfull log in {log}"
            )
        wheels = sorted((work / "dist").glob("horovod-*.whl"))
        if not wheels:
            raise HorovodBuildError(f"pip wheel built no horovod wheel (log in {log})")
        dest.mkdir(parents=True, exist_ok=True)
        return Path(shutil.copy2(wheels[0], dest))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pyroopt.horovod_build", description=__doc__)
    parser.add_argument(
        "--python", default=sys.executable, help="interpreter to install into (default: this one)"
    )
    parser.add_argument("--force", action="store_true", help="reinstall even if already installed")
    args = parser.parse_args(argv)
    python = args.python
    try:
        torch_ver = torch_version(python)
        if not args.force and installed(python):
            _log(f"horovod {HOROVOD_VERSION} already installed for torch {torch_ver}")
            return 0
        cached = wheel_dir(torch_ver, python_tag(python))
        wheels = sorted(glob.glob(str(cached / "horovod-*.whl")))
        if wheels:
            wheel = Path(wheels[0])
        else:
            _log(
                f"building horovod {HOROVOD_VERSION} for torch {torch_ver} (3 to 12 min on 2 cores)"
            )
            wheel = build_wheel(python, cached, cache_root() / "horovod-build.log")
        _run(
            [python, "-m", "pip", "install", "--quiet", "--no-build-isolation", str(wheel)],
            f"installing the cached horovod wheel {wheel}",
        )
        code = "import horovod.torch as hvd; assert hvd.gloo_built(), 'built without gloo'"
        if subprocess.run([python, "-c", code]).returncode != 0:
            raise HorovodBuildError(
                "horovod installed but horovod.torch does not import with gloo support; "
                f"delete {cached} and run `python -m pyroopt.horovod_build` again"
            )
    except HorovodBuildError as e:
        print(f"horovod_build: {e}", file=sys.stderr)
        return 1
    _log(f"horovod {HOROVOD_VERSION} installed from {wheel}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
