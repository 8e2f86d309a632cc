"""Optimizer state on disk: pyro.optim's format, written atomically, read safely.

The file is ``torch.save`` of ``{param_name: per-parameter state dict}``, the format
pyro.optim's ``save`` writes, so files move freely between the two.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import tempfile
import zipfile
from collections.abc import Mapping
from typing import Any

import torch


def save_atomic(obj: Any, filename: str | os.PathLike[str]) -> None:
    """``torch.save(obj, filename)`` such that a crash leaves the old file or the new one.

    Writes a temporary file in the same folder, flushes and fsyncs it, then renames it
    over ``filename`` (an atomic replace on POSIX and Windows).
    """
    path = os.fspath(filename)
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_folder(folder)


def _fsync_folder(folder: str) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def load_state(filename: str | os.PathLike[str], map_location: Any = None) -> dict[str, Any]:
    """Read an optimizer state file with ``torch.load(weights_only=True)``."""
    path = os.fspath(filename)
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise
    except (pickle.UnpicklingError, zipfile.BadZipFile, RuntimeError, EOFError) as e:
        raise ValueError(
            f"{path} is not a readable optimizer checkpoint (truncated, corrupt, or it "
            f"holds objects other than tensors and plain values): {e}"
        ) from None
    if not isinstance(state, Mapping):
        raise ValueError(
            f"{path} does not hold optimizer state: expected a dict of "
            f"{{param_name: state}}, found {type(state).__name__}"
        )
    for name in state:
        if not isinstance(name, str):
            raise ValueError(f"{path}: parameter names must be strings, found {name!r}")
    return dict(state)


def check_param_state(name: Any, state: Any, where: str = "state") -> None:
    """Check the shape of one parameter's entry (pyro.optim's per-parameter format)."""
    if not isinstance(name, str):
        raise ValueError(f"{where}: parameter names must be strings, found {name!r}")
    if not isinstance(state, Mapping):
        raise ValueError(
            f"{where}: the state of {name!r} must be a dict, found {type(state).__name__}"
        )
    if "scheduler" in state and "optimizer" in state:
        raise ValueError(
            f"{where}: the state of {name!r} is a learning-rate scheduler's; load it into "
            "a pyroopt.PyroLRScheduler"
        )
    _check_optimizer_state(name, state, where)


def check_scheduler_state(name: Any, state: Any, where: str = "state") -> None:
    """Check one parameter's entry under a schedule: ``{"scheduler", "optimizer"}``."""
    if not isinstance(name, str):
        raise ValueError(f"{where}: parameter names must be strings, found {name!r}")
    if not (
        isinstance(state, Mapping)
        and isinstance(state.get("scheduler"), Mapping)
        and "optimizer" in state
    ):
        raise ValueError(
            f"{where}: the state of {name!r} must be a dict with 'scheduler' and "
            "'optimizer' entries, as a learning-rate scheduler saves it"
        )
    _check_optimizer_state(name, state["optimizer"], where)


def _check_optimizer_state(name: str, state: Any, where: str) -> None:
    groups = state.get("param_groups") if isinstance(state, Mapping) else None
    if not (
        isinstance(state, Mapping)
        and isinstance(state.get("state"), Mapping)
        and isinstance(groups, list)
        and len(groups) == 1
        and isinstance(groups[0], Mapping)
    ):
        raise ValueError(
            f"{where}: the optimizer state of {name!r} must be a one-parameter optimizer "
            "state dict with keys 'state' and 'param_groups' (one group)"
        )
