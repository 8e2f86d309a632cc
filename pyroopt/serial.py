"""Run a small call on the calling thread alone, changing no process-wide setting.

A small step must not wait for a thread pool: on a busy machine, waiting for torch's
second intra-op thread cost 8-12 ms per Adam step at 1000 x 10 parameters instead of
about 0.6 ms. Two pools can be woken by the torch operations of a step: torch's own
(``at::parallel_for`` over OpenMP, for operations above its grain size, 2048 elements
for MKL-backed ones like ``sqrt``) and MKL's inside its vector functions.

``torch.set_num_threads`` is *not* a way to keep them quiet: whatever the count, it also
turns MKL's dynamic thread adjustment off for the whole process, for good. From then on
the model's own small MKL operations open parallel regions: with the other core busy,
``torch.log`` on 100 floats went from 1.5 us to about 0.7 ms, and Pyro's minipyro
example from 1.7 s to 5.0 s.

:class:`SerialIfSmall` uses the two thread-local controls instead: OpenMP's
``omp_set_num_threads``, which sets the calling thread's own count (its ICV; torch reads
it back as ``torch.get_num_threads()`` on that thread only), and MKL's
``mkl_set_num_threads_local``. Both are restored on exit; no other thread and no later
call sees either. The update is elementwise, so the thread count changes no number.

Example::

    >>> import torch
    >>> before = torch.get_num_threads()
    >>> with SerialIfSmall(1000):
    ...     inside = torch.get_num_threads()
    >>> inside == 1 and torch.get_num_threads() == before
    True
"""

from __future__ import annotations

import ctypes
import functools
from typing import Any

import torch

from pyroopt.native import _entry

#: A call over at most this many elements runs on the calling thread alone. Above it,
#: the work is large enough that a second thread pays for its wake-up.
SERIAL_MAX_NUMEL = 1 << 16


@functools.cache
def _controls() -> tuple[Any, Any] | None:
    """OpenMP's ``omp_set_num_threads`` and MKL's ``mkl_set_num_threads_local`` as torch
    loaded them; ``None`` where torch has no OpenMP (then none of its kernels fan out)."""
    omp = _entry._address("omp_set_num_threads")
    if omp is None:
        return None
    omp_set = ctypes.CFUNCTYPE(None, ctypes.c_int)(omp)
    mkl = _entry.mkl_threads_local_address()
    # MKL's Fortran-style entry (every spelling is one address): a pointer to the count;
    # returns the thread-local count it replaces (0: none was set).
    mkl_set = (
        ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_int))(mkl)
        if mkl is not None
        else None
    )
    return omp_set, mkl_set


class SerialIfSmall:
    """Within it, the calling thread runs torch's and MKL's kernels on itself alone if
    ``numel`` is at most :data:`SERIAL_MAX_NUMEL` (and more threads are set); both
    thread-local counts are restored on exit.

    (A class rather than a generator-based context manager: it is entered on every step.)
    """

    __slots__ = ("mkl", "numel", "omp")

    def __init__(self, numel: int) -> None:
        self.numel = numel
        self.omp = 0
        self.mkl: int | None = None

    def __enter__(self) -> None:
        if self.numel > SERIAL_MAX_NUMEL:
            return
        threads = torch.get_num_threads()  # this thread's count (initialises torch's)
        controls = _controls()
        if threads <= 1 or controls is None:
            return
        omp_set, mkl_set = controls
        self.omp = threads
        omp_set(1)
        if mkl_set is not None:
            self.mkl = mkl_set(ctypes.byref(ctypes.c_int(1)))

    def __exit__(self, *exc: object) -> None:
        if not self.omp:
            return
        omp_set, mkl_set = _controls()  # type: ignore[misc]
        if mkl_set is not None and self.mkl is not None:
            mkl_set(ctypes.byref(ctypes.c_int(self.mkl)))
            self.mkl = None
        omp_set(self.omp)
        self.omp = 0
