"""One-pass C loops for the update rules pyroopt owns, bitwise equal to torch's.

torch's single-tensor optimizers (what pyro.optim runs on the CPU) update a parameter
with a chain of elementwise passes over memory; torch's fused CPU kernels do it in one
pass but round differently. pyroopt's loops (:file:`rprop.c`, :file:`sgd.c`,
:file:`rmsprop.c`, :file:`adagrad.c`, :file:`adagrad_rmsprop.c`, ... with the thread
split of :file:`parallel.c`) do the chain's operations in one pass, in the same order
and precision, with fused multiply-adds exactly where torch's vectorized CPU ops use
them and torch's own (MKL) square root, so every element gets the value the chain gives
it. (Where MKL's float32 root was checked, on every input, to be the Newton step of
:file:`newton_root.h`, the loops compute it in line instead of calling MKL.)
They are plain C, no Python or torch headers, compiled with the system C compiler
into pyroopt's cache directory and called through :mod:`ctypes` with data pointers.

Each rule is one C source written over an element type (:file:`element.h`), with
torch's operations from one header (:file:`torch_ops.h`), and compiled once per dtype;
each loop takes one struct of arguments, declared once (:mod:`pyroopt.native.specs`):
the build generates its C declaration, and the Python side fills the same fields by
name (:mod:`pyroopt.native._spec`). A loop computes each tensor's coefficients (bias
corrections, decayed rates) from its step count, with the bits of torch's Python
expressions (:file:`coefficients.h`).

``make install`` builds it (``python -m pyroopt.native``); otherwise the first call
builds it, which takes a second or two. The library's file name carries a hash of the
sources (the generated ones too), the compiler and its flags, so an edited source or
spec is rebuilt rather than a stale library loaded, and concurrent builds (several
workers of one job) each write a private file and rename it into place. At load, the
layout of every argument struct in the library is checked against its spec.

Before a loop runs in a process, it is compared bit for bit with torch's own optimizer
on this machine (:mod:`pyroopt.native.selfcheck`); a loop that differs is turned off and
its rule runs the chain of torch ops. That verdict, like the in-line root's, is kept next
to the library under a name that carries what it depends on (:func:`verdict_path`).

Where no library can be had (no C compiler; ``PYROOPT_NATIVE=0`` in the environment
to turn it off), :func:`library` returns ``None`` and :func:`unavailable_reason` says
why; callers then run their eager torch form, which computes the same numbers.

Example::

    >>> from pyroopt import native
    >>> lib = native.library()
    >>> (lib is not None) == (native.unavailable_reason() is None)
    True
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shlex
import shutil
import subprocess
import tempfile
from pathlib import Path

_HERE = Path(__file__).parent
#: every C file is compiled into one library, the rule sources once per dtype (through
#: the files :func:`generated_sources` makes); headers count towards its hash
SOURCES = tuple(sorted(_HERE.glob("*.c")))
HEADERS = tuple(sorted(_HERE.glob("*.h")))
#: ``-ffp-contract=off``: no fused multiply-adds, so every rounding is torch's.
#: ``-fno-math-errno``: ``sqrt`` need not set ``errno`` (same values), so its loops vectorize.
#: ``-fno-trapping-math``: comparisons may be computed for all lanes and blended (the
#: values are the same; only floating-point exception flags are not kept), without
#: which GCC leaves the selects as branches and does not vectorize the loop (measured
#: per float32 element: 7.3 ns instead of 2.25 ns, or 0.8 ns with the wide clones).
FLAGS = (
    "-O3",
    "-fPIC",
    "-shared",
    "-ffp-contract=off",
    "-fno-trapping-math",
    "-fno-math-errno",
)
#: libraries the loops call (``fma``, ``sqrt``): linked, not found by chance in the process
LIBS = ("-lm",)
#: set to ``0`` to run the eager torch forms instead
SWITCH = "PYROOPT_NATIVE"


#: torch CPU kernel sets whose roundings the loops were checked against (their vector
#: ops fuse multiply-adds where the loops call ``fma``); elsewhere the chains run
VERIFIED_CAPABILITIES = ("AVX2", "AVX512")


def torch_cpu_capability() -> str:
    """The CPU kernel set torch dispatches to in this process (``"AVX512"``, ...)."""
    import torch

    return str(torch.backends.cpu.get_cpu_capability())


class NativeBuildError(RuntimeError):
    """The C compiler failed, or none was found."""


def cache_dir() -> Path:
    """Where built libraries are kept: ``$PYROOPT_CACHE_DIR``, else ``~/.cache/pyroopt``."""
    explicit = os.environ.get("PYROOPT_CACHE_DIR")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "pyroopt"


def compiler() -> list[str] | None:
    """The C compiler command: ``$CC`` if set, else ``cc`` on the path (``None``: none)."""
    command = shlex.split(os.environ.get("CC", ""))
    if command:
        return command
    found = shutil.which("cc") or shutil.which("gcc")
    return [found] if found else None


def generated_sources() -> dict[str, str]:
    """The files the build generates from the loops' specs (:mod:`pyroopt.native.specs`),
    by name: their argument structs, the structs' layouts, and a file per rule source and
    dtype that compiles it for that dtype."""
    from pyroopt.native import _spec, specs

    return _spec.generated_files(specs.ALL)


def plain_sources() -> tuple[Path, ...]:
    """The C files compiled once, as they are (the rule sources are compiled per dtype)."""
    from pyroopt.native import specs

    rules = {spec.source for spec in specs.ALL}
    return tuple(source for source in SOURCES if source.name not in rules)


def library_path(cc: list[str]) -> Path:
    """The built library's path for this source, its specs, compiler and set of flags."""
    digest = hashlib.sha256()
    for part in (*cc, *FLAGS, *LIBS, platform.machine()):
        digest.update(part.encode() + b"\0")
    for source in (*SOURCES, *HEADERS):
        digest.update(source.name.encode() + b"\0" + source.read_bytes())
    for name, text in sorted(generated_sources().items()):
        digest.update(name.encode() + b"\0" + text.encode())
    return cache_dir() / "native" / f"pyroopt_native-{digest.hexdigest()[:16]}.so"


def build() -> Path:
    """Compile the library unless it is built already; its path.

    Raises :class:`NativeBuildError` with the compiler's output when that fails.
    """
    cc = compiler()
    if cc is None:
        raise NativeBuildError("no C compiler: neither $CC, cc nor gcc is available")
    target = library_path(cc)
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, partial = tempfile.mkstemp(prefix=target.name + ".", dir=target.parent)
    os.close(fd)
    try:
        with tempfile.TemporaryDirectory(prefix="pyroopt_native.") as generated:
            for name, text in generated_sources().items():
                Path(generated, name).write_text(text)
            sources = [*map(str, plain_sources()), *sorted(map(str, Path(generated).glob("*.c")))]
            command = [*cc, *FLAGS, "-I", str(_HERE), "-I", generated, "-o", partial, *sources]
            _compile([*command, *LIBS])
        os.replace(partial, target)  # atomic: a reader never sees half a library
    finally:
        if os.path.exists(partial):
            os.unlink(partial)
    return target


def _compile(command: list[str]) -> subprocess.CompletedProcess[str]:
    """Run the compiler; :class:`NativeBuildError` with its output where it fails."""
    try:
        done = subprocess.run(command, capture_output=True, text=True)
    except OSError as error:  # the compiler named by $CC does not exist
        raise NativeBuildError(f"{shlex.join(command)} could not run: {error}") from error
    if done.returncode != 0:
        raise NativeBuildError(
            f"{shlex.join(command)} failed (exit {done.returncode}):\n{done.stderr}"
        )
    return done


def verdict_path(kind: str, library: Path, *depends_on: str) -> Path:
    """Where a verdict of ``kind`` about ``library`` on this machine is kept.

    It lies next to the library, under a name that carries a hash of everything the
    verdict depends on: the CPU model, torch's build (its version and its CPU library),
    MKL's identity (the version it reports, and the environment variables that steer its
    choice of kernel), the library's own hash, and ``depends_on``. Change any of them and
    the name changes, so the verdict is made anew.

    Example::

        >>> from pathlib import Path
        >>> verdict_path("example", Path("/cache/lib.so"), "x").name.startswith("example-")
        True
        >>> verdict_path("example", Path("/cache/lib.so"), "x") == verdict_path(
        ...     "example", Path("/cache/lib.so"), "y")
        False
    """
    import torch

    from pyroopt.native import _entry, _newton_root

    torch_cpu = _entry.torch_cpu_path()
    stat = os.stat(torch_cpu) if torch_cpu else None
    parts = [
        _newton_root.cpu_identity(),
        torch.__version__,
        f"{torch_cpu} {stat.st_size} {stat.st_mtime_ns}" if stat else "no torch_cpu",
        f"MKL {_entry.mkl_version()}",
        *(f"{name}={os.environ.get(name, '')}" for name in _newton_root.MKL_VARIABLES),
        library.name,
        *depends_on,
    ]
    digest = hashlib.sha256()
    for part in parts:
        digest.update(part.encode() + b"\0")
    return library.parent / f"{kind}-{digest.hexdigest()[:16]}.txt"


def read_verdict(path: Path) -> str:
    """The verdict kept at ``path``; ``""`` where none is (or it cannot be read)."""
    try:
        return path.read_text().strip()
    except OSError:
        return ""


def keep_verdict(path: Path, verdict: str) -> None:
    """Keep ``verdict`` at ``path``, written to a private file renamed into place, so
    that concurrent processes never read half of one; where the cache cannot be
    written, nothing is kept."""
    from pyroopt.native import _newton_root

    _newton_root._keep(path, verdict)


#: the instruction sets each loop is compiled for, widest first (:file:`parallel.h`)
#: and the CPU flags each needs; GCC's resolver runs the first the CPU supports
VECTOR_CLONES: tuple[tuple[str, frozenset[str]], ...] = (
    ("avx512f", frozenset({"avx512f"})),
    (
        "x86-64-v3 (AVX2 and FMA)",
        frozenset({"avx", "avx2", "bmi1", "bmi2", "f16c", "fma", "abm", "movbe", "xsave"}),
    ),
    ("default (baseline x86-64)", frozenset()),
)


@functools.cache
def vector_clone() -> str:
    """Which compiled variant of the loops this CPU runs (:file:`parallel.h`: GCC on
    x86-64 Linux builds an AVX-512F, an x86-64-v3 and a baseline clone of each loop and
    picks one at load time); elsewhere the one build there is."""
    cc = compiler()
    macros = ""
    if cc is not None:
        try:
            done = subprocess.run(
                [*cc, "-dM", "-E", "-x", "c", os.devnull], capture_output=True, text=True
            )
            macros = done.stdout
        except OSError:
            macros = ""
    defined = {line.split()[1] for line in macros.splitlines() if line.startswith("#define ")}
    if not ({"__GNUC__", "__x86_64__", "__linux__"} <= defined) or "__clang__" in defined:
        return "one build, no vector clones (the clones are GCC's, on x86-64 Linux)"
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        info = ""
    flags = next(
        (line.split(":", 1)[1].split() for line in info.splitlines() if line.startswith("flags")),
        [],
    )
    return next(name for name, needs in VECTOR_CLONES if needs <= set(flags))


@functools.cache
def _load() -> tuple[ctypes.CDLL | None, str | None]:
    """The library and ``None``, or ``None`` and why not; tried once per process."""
    if os.environ.get(SWITCH, "1") == "0":
        return None, f"turned off by {SWITCH}=0"
    capability = torch_cpu_capability()
    if capability not in VERIFIED_CAPABILITIES:
        return None, (
            f"torch runs its {capability} CPU kernels here; the loops reproduce the "
            f"roundings of its {'/'.join(VERIFIED_CAPABILITIES)} kernels only"
        )
    try:
        lib = ctypes.CDLL(str(build()))
    except (NativeBuildError, OSError) as error:
        return None, str(error)
    from pyroopt.native import _entry, _spec, specs

    try:
        for spec in specs.ALL:
            spec.check_layout(lib)
    except _spec.LayoutMismatch as error:
        return None, str(error)

    lib.pyroopt_use_openmp.argtypes = [ctypes.c_void_p] * 3
    lib.pyroopt_use_openmp.restype = None
    lib.pyroopt_use_openmp(*_entry.openmp_team_functions())
    lib.pyroopt_use_mkl.argtypes = [ctypes.c_void_p]
    lib.pyroopt_use_mkl.restype = None
    lib.pyroopt_use_mkl(_entry.mkl_threads_local_address())
    from pyroopt.native import _newton_root

    lib.pyroopt_use_newton_root.argtypes = [ctypes.c_int]
    lib.pyroopt_use_newton_root.restype = None
    lib.pyroopt_use_newton_root(_newton_root.reason_off(lib) is None)
    return lib, None


def library() -> ctypes.CDLL | None:
    """The loaded library, built on first use; ``None`` if it cannot be had."""
    return _load()[0]


def unavailable_reason() -> str | None:
    """Why :func:`library` is ``None``, or ``None`` when the library is loaded."""
    return _load()[1]
