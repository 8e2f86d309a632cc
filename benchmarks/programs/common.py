"""What every whole program shares: its command line, the one line where the two runs
differ, a timer around the optimizer's calls, and the result line it ends with."""

from __future__ import annotations

import argparse
import hashlib
import json
import time
from collections.abc import Iterable, Sequence
from types import ModuleType
from typing import Any

import pyro
import pyro.optim
from torch import Tensor

#: the optimizer modules a program can import, by their ``--optim`` name
OPTIMS: tuple[str, ...] = ("pyro", "pyroopt")
#: the result line starts with this, followed by a JSON object
RESULT_MARKER = "WHOLE_PROGRAM_RESULT"


def parse_args(description: str, steps: int, argv: Sequence[str] | None) -> argparse.Namespace:
    """``--optim`` (required), ``--steps`` (default ``steps``) and ``--seed``."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--optim", choices=OPTIMS, required=True, help="optimizer module")
    parser.add_argument("--steps", type=int, default=steps, help="SVI steps (default %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="seed of data and model")
    args = parser.parse_args(argv)
    if args.steps < 1:
        parser.error(f"--steps must be at least 1, got {args.steps}")
    return args


def optim_module(name: str) -> ModuleType:
    """``pyro.optim`` or ``pyroopt``: the only line in which the two runs differ."""
    if name == "pyro":
        import pyro.optim as optim
    elif name == "pyroopt":
        import pyroopt as optim  # type: ignore[no-redef]  # the one line that differs
    else:
        raise ValueError(f"optimizer module must be one of {OPTIMS}, got {name!r}")
    return optim


class TimedOptim(pyro.optim.PyroOptim):
    """Passes every call on to ``inner`` and adds up the seconds spent in it; the first
    call's seconds are also kept on their own (it builds the optimizer's state, and
    torch's first optimizer imports ``torch._dynamo``).

    A ``PyroOptim`` because ``SVI`` accepts nothing else; it never runs pyro's
    ``__init__`` and answers any other attribute from ``inner``.
    """

    def __init__(self, inner: pyro.optim.PyroOptim) -> None:
        self.inner = inner
        self.seconds = 0.0
        self.first_seconds = 0.0
        self.calls = 0

    def __call__(self, params: Iterable[Tensor], *args: Any, **kwargs: Any) -> None:
        start = time.perf_counter()
        try:
            self.inner(params, *args, **kwargs)  # type: ignore[arg-type]  # SVI passes a set
        finally:
            seconds = time.perf_counter() - start
            if self.calls == 0:
                self.first_seconds = seconds
            self.seconds += seconds
            self.calls += 1

    def __getattr__(self, name: str) -> Any:
        # only reached for attributes the wrapper lacks (pyro's __init__ never ran)
        if name == "inner":
            raise AttributeError(name)
        return getattr(self.inner, name)


def param_checksum() -> str:
    """SHA-256 of every parameter in Pyro's param store: name, dtype, shape and the
    bytes of its unconstrained value, in name order (not in the order of creation)."""
    digest = hashlib.sha256()
    for name, param in sorted(pyro.get_param_store().named_parameters(), key=lambda kv: kv[0]):
        value = param.detach().cpu().contiguous()
        digest.update(f"{name}|{value.dtype}|{tuple(value.shape)}|".encode())
        digest.update(value.numpy().tobytes())
    return digest.hexdigest()


def finish(optim: str, timed: TimedOptim, steps: int, loss: float) -> dict[str, Any]:
    """Print the result line the benchmark reads, and return what it holds."""
    result = {
        "optim": optim,
        "steps": steps,
        "optim_calls": timed.calls,
        "optim_seconds": timed.seconds,
        "first_call_seconds": timed.first_seconds,
        "loss": loss,
        "checksum": param_checksum(),
    }
    print(RESULT_MARKER, json.dumps(result), flush=True)
    return result
