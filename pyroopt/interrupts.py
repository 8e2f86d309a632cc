"""Hold Ctrl-C back for the few microseconds in which a step commits.

A bucket's step writes its parameters, state and step counts together; a
``KeyboardInterrupt`` that lands between two of those writes would leave every
parameter of the bucket at step k+1 with the values of step k (and bias corrections
wrong from then on). Python raises ``KeyboardInterrupt`` between bytecodes, so a
SIGINT that arrives during the native loop surfaces right after it returns, before
the counts are written. :class:`DeferInterrupts` makes the commit one unit: in the main
thread it replaces the SIGINT handler for its duration with one that only records the
signal, then restores the handler and, if a signal came, calls it then (by default
raising ``KeyboardInterrupt`` after the commit). Databases and torch's DataLoader keep
their critical sections the same way.

Only SIGINT is deferred, and only where Python's own handler (or a callable one of the
user's) is installed in the main thread; other threads never receive signals.

Example::

    >>> with DeferInterrupts():
    ...     committed = True
    >>> committed
    True
"""

from __future__ import annotations

import _signal
import signal
import threading
from types import FrameType
from typing import Any

_MAIN = threading.main_thread()
_SIGINT = int(signal.SIGINT)


class DeferInterrupts:
    """Within it, a SIGINT is recorded and handled on exit instead of at once."""

    __slots__ = ("_handler", "_received")

    def __init__(self) -> None:
        self._handler: Any = None
        self._received: tuple[int, FrameType | None] | None = None

    def __enter__(self) -> None:
        if threading.current_thread() is not _MAIN:
            return
        # the C module's calls: ``signal``'s wrappers turn every handler into an enum,
        # which costs more than the rest of a small step's commit
        handler = _signal.signal(_SIGINT, self._record)
        if not callable(handler):  # SIG_IGN, SIG_DFL or not set from Python: nothing to hold
            _signal.signal(_SIGINT, handler)
            return
        self._handler = handler
        self._received = None

    def _record(self, signum: int, frame: FrameType | None) -> None:
        self._received = (signum, frame)

    def __exit__(self, *exc: object) -> None:
        handler, self._handler = self._handler, None
        if handler is None:
            return
        _signal.signal(_SIGINT, handler)
        received, self._received = self._received, None
        if received is not None:
            handler(*received)
