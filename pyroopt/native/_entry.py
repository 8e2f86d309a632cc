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

import ctypes
import functools
import os
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from pyroopt import native

#: a C ``T *const *``: one data pointer per tensor
POINTERS = ctypes.POINTER(ctypes.c_void_p)
#: a C ``const int64_t *``
INT64S = ctypes.POINTER(ctypes.c_int64)
#: a C ``const unsigned char *``: one flag per tensor
FLAGS = ctypes.POINTER(ctypes.c_ubyte)
#: a C ``const double *``: one coefficient per tensor
DOUBLES = ctypes.POINTER(ctypes.c_double)
#: the float dtypes the loops are compiled for, and their symbol suffixes
SUFFIXES = {torch.float32: "f32", torch.float64: "f64"}


def typed(name: str, dtype: torch.dtype, argtypes: Sequence[Any]) -> Any:
    """The C function ``{name}_{suffix}`` for ``dtype``, typed; ``None`` without the
    library or for a dtype the loops are not compiled for. (Callers cache it, in a
    cache that tests clear with the library's.)"""
    lib = native.library() if dtype in SUFFIXES else None
    if lib is None:
        return None
    function = getattr(lib, f"{name}_{SUFFIXES[dtype]}")
    function.argtypes = list(argtypes)
    function.restype = ctypes.c_int
    return function


@functools.cache
def sqrt_function(dtype: torch.dtype) -> int | None:
    """The address of the square root torch takes of a CPU tensor of ``dtype``, for the
    loops to call on blocks; ``None`` where torch uses the correctly rounded one.

    Built with MKL, torch computes ``sqrt`` of float32/float64 tensors with MKL's
    vector library in high-accuracy mode (``vmsSqrt``/``vmdSqrt``), which is within
    1 ulp but not always correctly rounded (measured on torch 2.13: 16% of float32
    roots differ from libm's by 1 ulp), so the loops call that same function.
    """
    if not torch.backends.mkl.is_available() or dtype not in SUFFIXES:
        return None
    name = {torch.float32: "vmsSqrt", torch.float64: "vmdSqrt"}[dtype]
    folder = os.path.join(os.path.dirname(torch.__file__), "lib")
    for library in ("libtorch_cpu.so", "libtorch_cpu.dylib", "torch_cpu.dll"):
        path = os.path.join(folder, library)
        if os.path.exists(path):
            try:
                function = getattr(ctypes.CDLL(path), name)
            except (OSError, AttributeError):
                return None
            address: int | None = ctypes.cast(function, ctypes.c_void_p).value
            return address
    return None


def runs_here(tensors: Sequence[Tensor], dtype: torch.dtype) -> bool:
    """Whether a loop can read ``tensors`` as plain arrays of ``dtype`` in memory.

    (A tensor with its negative bit set is a lazily negated view: its memory holds
    the values before negation; a conjugated one likewise.)
    """
    return (
        all(
            t.device.type == "cpu" and t.dtype == dtype and t.layout == torch.strided
            for t in tensors
        )
        and all(map(Tensor.is_contiguous, tensors))
        and not any(map(Tensor.is_neg, tensors))
        and not any(map(Tensor.is_conj, tensors))
    )


def numels_if_runs(lists: Sequence[Sequence[Tensor]]) -> list[int] | None:
    """The element counts of ``lists[0]`` if every list runs here in its dtype, with the
    same length and the same counts tensor by tensor; else ``None``."""
    dtype = lists[0][0].dtype
    if not all(len(ts) == len(lists[0]) and runs_here(ts, dtype) for ts in lists):
        return None
    numels = list(map(Tensor.numel, lists[0]))
    if any(list(map(Tensor.numel, ts)) != numels for ts in lists[1:]):
        return None
    return numels


def pointers(tensors: Sequence[Tensor]) -> Any:
    return (ctypes.c_void_p * len(tensors))(*map(Tensor.data_ptr, tensors))


def int64s(values: Sequence[int]) -> Any:
    return (ctypes.c_int64 * len(values))(*values)


def flags(values: Sequence[bool]) -> Any:
    return (ctypes.c_ubyte * len(values))(*values)


def doubles(values: Sequence[float]) -> Any:
    return (ctypes.c_double * len(values))(*values)


def threads() -> int:
    """How many threads a loop may use: torch's intra-op count."""
    return torch.get_num_threads()


def mark_modified(tensors: Sequence[Tensor]) -> None:
    """Tell autograd the loop wrote ``tensors``, as an in-place torch op would, so a
    graph that saved one of them refuses to backward through stale values."""
    torch._C._increment_version(list(tensors))
