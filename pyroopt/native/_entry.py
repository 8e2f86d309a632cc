"""What every typed entry into the native library shares: the checks that decide whether a
loop may read a list of tensors as plain arrays, and the ctypes arrays it is handed.

Example::

    >>> import torch
    >>> runs_here([torch.ones(3), torch.zeros(2)], torch.float32)
    True
    >>> runs_here([torch.ones(4)[::2]], torch.float32)  # not contiguous
    False
"""

from __future__ import annotations

import array
import ctypes
import functools
import operator
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from pyroopt import native
from pyroopt._compat import increment_version
from pyroopt.native._spec import Spec

#: the float dtypes the loops are compiled for, and their symbol suffixes
SUFFIXES = {torch.float32: "f32", torch.float64: "f64"}


def typed(spec: Spec, dtype: torch.dtype) -> Any:
    """The C function ``{spec.name}_{suffix}`` for ``dtype``, typed, once the library's
    self-check (:mod:`pyroopt.native.selfcheck`) has found it equal to torch's optimizer
    here; ``None`` without the library, for a dtype the loops are not compiled for, or for
    a loop the check turned off (the rule then runs its chain of torch ops).

    Callers cache what it returns (in a cache that tests clear with the library's), so
    the check costs nothing per call after the first lookup.
    """
    function = unchecked(spec, dtype)
    if function is None:
        return None
    from pyroopt.native import selfcheck  # it imports the wrappers, which import this module

    return function if selfcheck.reason_off(spec.name, dtype) is None else None


def unchecked(spec: Spec, dtype: torch.dtype) -> Any:
    """The C function ``{spec.name}_{suffix}`` for ``dtype``, typed (it takes the
    arguments struct of ``spec``), whatever the self-check says of it; ``None`` without
    the library or for a dtype the loops are not compiled for."""
    lib = native.library() if dtype in SUFFIXES else None
    if lib is None:
        return None
    function = getattr(lib, f"{spec.name}_{SUFFIXES[dtype]}")
    function.argtypes = [ctypes.POINTER(spec.structure)]
    function.restype = ctypes.c_int
    return function


def torch_cpu_path() -> str | None:
    """The file of torch's CPU library, where MKL's functions are exported."""
    folder = os.path.join(os.path.dirname(torch.__file__), "lib")
    for name in ("libtorch_cpu.so", "libtorch_cpu.dylib", "torch_cpu.dll"):
        path = os.path.join(folder, name)
        if os.path.exists(path):
            return path
    return None


@functools.cache
def _torch_cpu() -> ctypes.CDLL | None:
    """torch's CPU library (already loaded)."""
    path = torch_cpu_path()
    try:
        return ctypes.CDLL(path) if path else None
    except OSError:
        return None


def _address(name: str) -> int | None:
    """The address of the function ``name`` in torch's CPU library or the libraries it
    was linked with (MKL, OpenMP); ``None`` if there is none."""
    lib = _torch_cpu()
    function = getattr(lib, name, None) if lib is not None else None
    return None if function is None else ctypes.cast(function, ctypes.c_void_p).value


@functools.cache
def sqrt_function(dtype: torch.dtype) -> int | None:
    """The address of the square root torch takes of a CPU tensor of ``dtype``, for the
    loops to call on blocks; ``None`` where torch uses the correctly rounded one.

    Built with MKL, torch computes ``sqrt`` of float32/float64 tensors with MKL's
    vector library in high-accuracy mode (``vmsSqrt``/``vmdSqrt``), which is within
    1 ulp but not always correctly rounded (measured on torch 2.13: 16% of float32
    roots differ from libm's by 1 ulp), so the loops call that same function (or, for
    float32, compute its bits in line where that was checked: :mod:`._newton_root`).
    """
    if not torch.backends.mkl.is_available() or dtype not in SUFFIXES:
        return None
    if mkl_threads_local_address() is None:  # the loops keep MKL on each part's thread
        return None
    return _address({torch.float32: "vmsSqrt", torch.float64: "vmdSqrt"}[dtype])


@functools.cache
def mkl_version() -> str | None:
    """The version MKL reports at run time (the MKL torch's CPU library was linked with),
    e.g. ``"Intel(R) oneAPI Math Kernel Library Version 2024.2-Product Build 20240605
    ..."``; ``None`` where torch has no MKL."""
    address = _address("MKL_Get_Version_String")
    if address is None:
        return None
    get_version = ctypes.CFUNCTYPE(None, ctypes.c_char_p, ctypes.c_int)(address)
    text = ctypes.create_string_buffer(256)
    get_version(text, len(text))
    return text.value.decode(errors="replace")


#: what the thread driver of :file:`parallel.c` calls in torch's OpenMP runtime
OPENMP_FUNCTIONS = ("GOMP_parallel", "omp_get_thread_num", "omp_get_num_threads")


def openmp_team_functions() -> tuple[int | None, ...]:
    """The addresses of :data:`OPENMP_FUNCTIONS` in the OpenMP runtime torch's CPU
    library was linked with (found through it, so it is the runtime, and the pool of
    threads, torch's own kernels use); all ``None`` where torch has none."""
    found = tuple(map(_address, OPENMP_FUNCTIONS))
    return (None,) * len(found) if None in found else found


def mkl_threads_local_address() -> int | None:
    """The address of MKL's ``mkl_set_num_threads_local`` in torch, which every part of
    a loop calls to keep MKL on its own thread (:file:`parallel.h`); ``None``: none.
    (torch exports MKL's Fortran-style entry under this name too, every spelling one
    address: it takes a pointer to the count.)"""
    return _address("mkl_set_num_threads_local")


#: A loop takes a second member of torch's thread team (up to ``torch.get_num_threads()``)
#: for every this many elements; a smaller call runs on the calling thread alone. Lower
#: would pay on an idle machine (one float32 Adam call on 2 threads against 1: 84 / 126
#: us at 64k elements, 1.19 / 1.98 ms at 1M), but with the other core busy the call
#: waits for the preempted member: 4.87 ms against 1.99 ms at 1M (median of 300).
NUMEL_PER_THREAD = 1 << 20


def run_loop(
    function_for: Callable[[torch.dtype], Any],
    spec: Spec,
    tensors: Mapping[str, Sequence[Tensor] | None],
    values: Mapping[str, Any],
    *,
    min_per_thread: int,
    writes_grads: bool = False,
) -> bool:
    """Run the C loop ``function_for(dtype)`` of ``spec`` on lists of tensors; ``False``
    (nothing changed) if it cannot run here.

    ``tensors`` are its tensor lists by field name, ``"params"`` first and ``"grads"``
    second; ``None`` stands for a list the loop does not read under these options (the
    parameters' pointers are passed in its place). ``values`` are its other fields by
    name; the fields every loop takes (the counts, torch's square root for the dtype
    where the loop takes roots, the threads) are added here, and the struct is filled
    by name (:meth:`~pyroopt.native._spec.Spec.pack`). Every list it wrote (all but the
    gradients, unless ``writes_grads``) is then marked modified for autograd.
    """
    params = tensors["params"]
    assert params is not None
    dtype = params[0].dtype
    function = function_for(dtype)
    if function is None:
        return False
    slots = list(tensors.values())
    lists = [ts for ts in slots if ts is not None]
    prepared = _prepared(slots, lists)
    if prepared is None:
        return False
    arrays, numels = prepared
    fields = dict(zip(tensors, arrays, strict=True))
    fields.update(values)
    fields.update(
        n_tensors=len(params), numels=numels, n_threads=threads(), min_per_thread=min_per_thread
    )
    if spec.root:
        fields["root"] = sqrt_function(dtype)
    function(spec.pack(fields))
    grads = tensors["grads"]
    written = lists if writes_grads else [ts for ts in lists if ts is not grads]
    # Tuples are an engine's own flat buffers or views of them, which no graph saves
    # (the engine bumps its parameters' versions itself); every other tensor is marked.
    marked = [t for ts in written if not isinstance(ts, tuple) for t in ts]
    if marked:
        mark_modified(marked)
    return True


#: the checked arrays of recent calls over tuples of tensors, by the tuples' ids (the
#: entry holds the tuples, so an id is not reused while it is cached)
_PREPARED: dict[tuple[int, ...], tuple[tuple[Any, ...], tuple[Any, ...], Any]] = {}
_PREPARED_MAX = 16


def _prepared(
    slots: Sequence[Sequence[Tensor] | None], lists: Sequence[Sequence[Tensor]]
) -> tuple[list[Any], Any] | None:
    """The pointer arrays of ``slots`` and the element counts, if the loop can run.

    Lists are checked (:func:`numels_if_runs`) and read on every call. Tuples are
    checked and read once and then served from a cache: an engine that steps the same
    flat buffers, or fixed views of them, every step (a tuple cannot change, and the
    engine's own buffers keep their memory) pays nothing per tensor for them.
    """
    frozen = all(isinstance(ts, tuple) for ts in lists)
    if frozen:
        key = tuple(map(id, slots))
        hit = _PREPARED.get(key)
        if hit is not None and all(map(operator.is_, hit[0], slots)):
            return list(hit[1]), hit[2]
    numels = numels_if_runs(lists)
    if numels is None:
        return None
    params = slots[0]
    arrays = [pointers(params if ts is None else ts) for ts in slots]  # type: ignore[arg-type]
    counts = int64s(numels)
    if frozen:
        if len(_PREPARED) >= _PREPARED_MAX:
            _PREPARED.clear()
        _PREPARED[key] = (tuple(slots), tuple(arrays), counts)
    return arrays, counts


def forget_prepared() -> None:
    """Drop the cached arrays (and with them the tuples of views they hold): an engine
    calls it when it lays its buffers out anew, so old buffers are not kept alive."""
    _PREPARED.clear()


_IS_CPU = operator.attrgetter("is_cpu")
_DTYPE = operator.attrgetter("dtype")
_LAYOUT = operator.attrgetter("layout")


def runs_here(tensors: Sequence[Tensor], dtype: torch.dtype) -> bool:
    """Whether a loop can read ``tensors`` as plain arrays of ``dtype`` in memory.

    (A tensor with its negative bit set is a lazily negated view: its memory holds
    the values before negation; a conjugated one likewise.) The checks iterate in C
    (``map``): a call over a thousand small tensors must stay cheap.
    """
    return (
        set(map(_DTYPE, tensors)) <= {dtype}
        and all(map(_IS_CPU, tensors))
        and set(map(_LAYOUT, tensors)) <= {torch.strided}
        and all(map(Tensor.is_contiguous, tensors))
        and not any(map(Tensor.is_neg, tensors))
        and not any(map(Tensor.is_conj, tensors))
    )


def numels_if_runs(lists: Sequence[Sequence[Tensor]]) -> list[int] | None:
    """The element counts of ``lists[0]`` if every list runs here in its dtype, with the
    same length and the same counts tensor by tensor; else ``None``."""
    dtype = lists[0][0].dtype
    if any(len(ts) != len(lists[0]) for ts in lists):
        return None
    if not runs_here([t for ts in lists for t in ts], dtype):
        return None
    numels = list(map(Tensor.numel, lists[0]))
    if any(list(map(Tensor.numel, ts)) != numels for ts in lists[1:]):
        return None
    return numels


def pointers(tensors: Sequence[Tensor]) -> Any:
    # A list, not the map itself: a tuple built from an iterator (the call's ``*``) is
    # resized, which leaves one object on the garbage collector's count per call, and
    # with it a collection every few hundred steps.
    return (ctypes.c_void_p * len(tensors))(*list(map(Tensor.data_ptr, tensors)))


#: From this many values on, a C array is filled through :mod:`array` (one C-level
#: conversion; 95 against 500 us for 1000 doubles), below it element by element
#: (cheaper for the one or few values of a flat step).
_BULK = 16


def _c_array(ctype: Any, code: str, values: Sequence[Any]) -> Any:
    if len(values) < _BULK:
        return (ctype * len(values))(*values)
    buffer = array.array(code, values)
    return (ctype * len(buffer)).from_buffer(buffer)  # holds ``buffer``


def int64s(values: Sequence[int]) -> Any:
    return _c_array(ctypes.c_int64, "q", values)


def flags(values: Sequence[bool]) -> Any:
    return _c_array(ctypes.c_ubyte, "B", values)


def doubles(values: Sequence[float]) -> Any:
    return _c_array(ctypes.c_double, "d", values)


def step_counts(steps: Sequence[int], n: int) -> Any:
    """The C array of ``n`` tensors' step counts, from one count per tensor or one for
    all; a ``ValueError`` for any other number of counts."""
    if len(steps) == n:
        return int64s(steps)
    if len(steps) == 1:
        return int64s([steps[0]] * n)
    raise ValueError(f"{len(steps)} step counts for {n} tensors")


def threads() -> int:
    """How many threads a loop may use: torch's intra-op count, the size of the team of
    torch's OpenMP runtime it runs on (:file:`parallel.c`)."""
    return torch.get_num_threads()


def mark_modified(tensors: Sequence[Tensor]) -> None:
    """Tell autograd the loop wrote ``tensors``, as an in-place torch op would, so a
    graph that saved one of them refuses to backward through stale values."""
    increment_version(list(tensors))
