"""Whether the loops may take float32 square roots in line (:file:`newton_root.h`).

The in-line (Newton) root is MKL's method in the kernel MKL runs on some CPUs, not on
all, so it is turned on only where it was compared with the root torch calls on every
float32 it takes and no bit differed. That check runs once per CPU model and torch
build (about 1.5 s on two threads) and its verdict is kept in the cache directory,
next to the library, under a name that carries what it depends on: the CPU's
identity, torch's CPU library, the environment variables that steer MKL's choice of
kernel, and the library's own hash.

Example::

    >>> from pyroopt import native
    >>> from pyroopt.native import _newton_root
    >>> lib = native.library()
    >>> reason = _newton_root.reason_off(lib)
    >>> reason is None or isinstance(reason, str)
    True
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import os
import platform
import tempfile
from pathlib import Path

import torch

from pyroopt import native
from pyroopt.native import _entry

#: set to ``0`` to take every float32 root with torch's own function
SWITCH = "PYROOPT_NEWTON_ROOT"
#: the bit patterns the Newton root takes, as inclusive ranges: +0, FLT_MIN to
#: 0x1.ffep127, -0 (what the C check compares: all of them)
RANGES = ((0x00000000, 0x00000000), (0x00800000, 0x7F7FF000), (0x80000000, 0x80000000))
#: environment variables by which MKL can be made to pick another kernel
MKL_VARIABLES = ("MKL_CBWR", "MKL_ENABLE_INSTRUCTIONS", "MKL_DEBUG_CPU_TYPE")
_SAME = "same"


def cpu_identity() -> str:
    """The CPU model, as exactly as the platform tells it (its estimate instruction's
    table is fixed per model)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return f"{platform.machine()} {platform.processor()}"
    first = text.split("\n\n", 1)[0]
    keep = ("vendor_id", "cpu family", "model", "model name", "stepping", "flags")
    lines = [line for line in first.splitlines() if line.split(":")[0].strip() in keep]
    return "\n".join(sorted(lines))


def verdict_path(library: Path) -> Path:
    """Where the verdict for this CPU, torch build, MKL settings and ``library`` is kept."""
    digest = hashlib.sha256()
    torch_cpu = _entry.torch_cpu_path()
    stat = os.stat(torch_cpu) if torch_cpu else None
    parts = [
        cpu_identity(),
        torch.__version__,
        f"{torch_cpu} {stat.st_size} {stat.st_mtime_ns}" if stat else "no torch_cpu",
        *(f"{name}={os.environ.get(name, '')}" for name in MKL_VARIABLES),
        library.name,
    ]
    for part in parts:
        digest.update(part.encode() + b"\0")
    return library.parent / f"newton-root-{digest.hexdigest()[:16]}.txt"


def check(
    lib: ctypes.CDLL,
    root: int,
    ranges: tuple[tuple[int, int], ...] = RANGES,
    threads: int | None = None,
) -> str:
    """Compare the Newton root with the function at address ``root`` on every bit
    pattern of ``ranges``: ``"same"``, or what differs."""
    function = lib.pyroopt_newton_root_check
    function.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_uint32, ctypes.c_int]
    function.restype = ctypes.c_int64
    for lo, hi in ranges:
        first = function(root, lo, hi, threads or _entry.threads())
        if first == -2:
            return "the CPU has no AVX, which the Newton root is written for"
        if first >= 0:
            return f"the Newton root differs from torch's at bit pattern {first:#010x}"
    return _SAME


def reason_off(lib: ctypes.CDLL) -> str | None:
    """``None`` if the loops may take float32 roots in line here; else why not.

    Reads the kept verdict, or runs :func:`check` and keeps its verdict (written to a
    private file and renamed into place, so concurrent processes never read half of
    one; where the cache cannot be written, the verdict holds for this process)."""
    if os.environ.get(SWITCH, "1") == "0":
        return f"turned off by {SWITCH}=0"
    root = _entry.sqrt_function(torch.float32)
    if root is None:
        return "torch takes the correctly rounded root here, which the loops call"
    path = verdict_path(native.build())
    try:
        verdict = path.read_text().strip()
    except OSError:
        verdict = ""
    if not verdict:
        verdict = check(lib, root)
        _keep(path, verdict)
    return None if verdict == _SAME else verdict


def _keep(path: Path, verdict: str) -> None:
    """Write ``verdict`` to ``path`` through a private file renamed into place; where
    that fails (a read-only cache), nothing is kept."""
    partial = None
    try:
        fd, partial = tempfile.mkstemp(prefix=path.name + ".", dir=path.parent)
        with os.fdopen(fd, "w") as file:
            file.write(verdict + "\n")
        os.replace(partial, path)
        partial = None
    except OSError:
        pass
    finally:
        if partial is not None:
            with contextlib.suppress(OSError):
                os.unlink(partial)
