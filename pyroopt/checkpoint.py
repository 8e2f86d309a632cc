"""Optimizer state on disk: pyro.optim's format, written atomically, read safely.

The file is ``torch.save`` of ``{param_name: per-parameter state dict}``, the format
pyro.optim's ``save`` writes, so files move freely between the two.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable, Mapping
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


#: Key of the entry that records what wrote a file; pyro.optim ignores it (it waits
#: forever for a parameter of that name), so files stay interchangeable.
METADATA_KEY = "__pyroopt__"
#: Version of the file layout this pyroopt writes and the newest it reads.
FORMAT_VERSION = 1


def _metadata(kind: str) -> dict[str, Any]:
    from pyroopt._version import __version__

    return {"format": FORMAT_VERSION, "pyroopt": __version__, "kind": kind}


def save_state(state: Mapping[str, Any], filename: str | os.PathLike[str]) -> None:
    """Write optimizer state (``{param_name: state}``) atomically, with pyroopt's metadata."""
    save_atomic({**state, METADATA_KEY: _metadata("optimizer")}, filename)


def _read(path: str, map_location: Any, weights_only: bool, what: str) -> Any:
    """``torch.load`` that names the file and the trouble instead of an unpickling trace."""
    try:
        return torch.load(path, map_location=map_location, weights_only=weights_only)
    except (FileNotFoundError, IsADirectoryError, PermissionError):
        raise
    except Exception as e:  # torch.load fails on bad bytes in many ways; name the file
        detail = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(
            f"{path} is not a readable {what} (truncated, corrupt, or holding objects other "
            f"than tensors and plain values, which are refused unless weights_only=False): "
            f"{detail}"
        ) from None


def _check_metadata(path: str, state: Mapping[str, Any], kind: str) -> None:
    meta = state.get(METADATA_KEY)
    if meta is None:
        return  # written by pyro.optim
    if not isinstance(meta, Mapping) or not isinstance(meta.get("format"), int):
        raise ValueError(f"{path}: its {METADATA_KEY!r} entry is damaged: {meta!r}")
    if meta["format"] > FORMAT_VERSION:
        raise ValueError(
            f"{path} was written by pyroopt {meta.get('pyroopt', '?')} in checkpoint format "
            f"{meta['format']}; this pyroopt reads formats up to {FORMAT_VERSION}: upgrade it"
        )
    if meta.get("kind", kind) != kind:
        raise ValueError(f"{path} holds a {meta['kind']} checkpoint, not a {kind} one")


def load_state(
    filename: str | os.PathLike[str], map_location: Any = None, *, weights_only: bool = True
) -> dict[str, Any]:
    """Read optimizer state written by pyroopt's or pyro.optim's ``save``.

    With ``weights_only=True`` (the default) the file cannot run code: it may hold only
    tensors and plain values. ``weights_only=False`` unpickles anything, which runs
    whatever code the file names: use it only for files you trust.
    """
    path = os.fspath(filename)
    state = _read(path, map_location, weights_only, "optimizer checkpoint")
    if not isinstance(state, Mapping):
        raise ValueError(
            f"{path} does not hold optimizer state: expected a dict of "
            f"{{param_name: state}}, found {type(state).__name__}"
        )
    _check_metadata(path, state, "optimizer")
    for name in state:
        if not isinstance(name, str):
            raise ValueError(f"{path}: parameter names must be strings, found {name!r}")
    return {k: v for k, v in state.items() if k != METADATA_KEY}


def _constraint_classes() -> list[Callable[..., Any] | tuple[Callable[..., Any], str]]:
    """Constraint classes a param store's state holds: plain data, safe to unpickle."""
    import pyro.distributions.constraints as pyro_constraints
    import torch.distributions.constraints as torch_constraints

    classes: set[type] = {
        cls
        for module in (torch_constraints, pyro_constraints)
        for cls in vars(module).values()
        if isinstance(cls, type) and issubclass(cls, torch_constraints.Constraint)
    }
    return [*sorted(classes, key=lambda cls: f"{cls.__module__}.{cls.__qualname__}")]


def rng_state() -> dict[str, Any]:
    """The state of torch's, Python's and NumPy's random generators, as plain data."""
    import random

    import numpy as np

    name, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)
    keys_tensor = torch.from_numpy(np.asarray(keys, dtype=np.int64))  # a tensor loads safely
    return {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": (name, keys_tensor, pos, has_gauss, cached),
    }


def set_rng_state(state: Mapping[str, Any]) -> None:
    """Restore the generators from :func:`rng_state`."""
    import random

    import numpy as np

    torch.set_rng_state(state["torch"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))


def save_training(filename: str | os.PathLike[str], optim: Any, *, rng: bool = True) -> None:
    """Save Pyro's param store and ``optim``'s state together in one atomic file.

    With ``rng=True`` the random generators' states are saved too, so that a resumed
    SVI run draws the same samples and retraces the same loss curve.

    Example::

        >>> import os, tempfile, pyro, torch, pyroopt
        >>> pyro.clear_param_store()
        >>> x = pyro.param("x", torch.ones(2), constraint=pyro.distributions.constraints.positive)
        >>> optim = pyroopt.Adam({"lr": 0.1})
        >>> path = os.path.join(tempfile.mkdtemp(), "train.pt")
        >>> save_training(path, optim)
        >>> pyro.clear_param_store()
        >>> load_training(path, optim)
        >>> pyro.param("x")
        tensor([1., 1.], grad_fn=<AddBackward0>)
    """
    import pyro

    save_atomic(
        {
            METADATA_KEY: _metadata("training"),
            "param_store": pyro.get_param_store().get_state(),
            "optimizer": optim.get_state(),
            **({"rng": rng_state()} if rng else {}),
        },
        filename,
    )


def load_training(
    filename: str | os.PathLike[str],
    optim: Any,
    map_location: Any = None,
    *,
    weights_only: bool = True,
) -> None:
    """Restore Pyro's param store, ``optim`` and the random generators (if saved) from
    :func:`save_training`'s file.

    Loads safely by default: the file may hold tensors, plain values and constraint
    objects only. The param store is replaced only once the whole file has been read
    and checked.
    """
    import pyro

    path = os.fspath(filename)
    with torch.serialization.safe_globals(_constraint_classes()):
        state = _read(path, map_location, weights_only, "training checkpoint")
    if not (isinstance(state, Mapping) and {"param_store", "optimizer"} <= set(state)):
        raise ValueError(
            f"{path} is not a training checkpoint: expected 'param_store' and 'optimizer' "
            "entries, as save_training writes"
        )
    _check_metadata(path, state, "training")
    store = state["param_store"]
    if not (isinstance(store, Mapping) and {"params", "constraints"} <= set(store)):
        raise ValueError(f"{path}: its 'param_store' entry is not a Pyro param store state")
    for name, param_state in state["optimizer"].items():
        optim._check_state(name, param_state, path)
    pyro.get_param_store().set_state(dict(store))  # type: ignore[arg-type]
    optim._set_state(state["optimizer"], path)
    if "rng" in state:
        set_rng_state(state["rng"])


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
