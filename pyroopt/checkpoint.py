"""Optimizer state on disk: pyro.optim's format, written atomically, read safely.

The file is ``torch.save`` of ``{param_name: per-parameter state dict}``, the format
pyro.optim's ``save`` writes, so files move freely between the two. Training checkpoints
(:func:`save_training`, :func:`load_training`) add Pyro's param store and the random
generators' states. Files are written by :func:`pyroopt.atomic_file.save_atomic`, and
loaded entries are checked by :mod:`pyroopt.state_checks` before anything changes.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import Any

import torch

from pyroopt import _compat
from pyroopt.atomic_file import save_atomic, with_path
from pyroopt.state_checks import check_entry_shapes

#: Key of the entry that records what wrote a file; pyro.optim ignores it (it waits
#: forever for a parameter of that name), so files stay interchangeable.
METADATA_KEY = "__pyroopt__"
#: Version of the file layout this pyroopt writes and the newest it reads.
FORMAT_VERSION = 1


def _metadata(kind: str) -> dict[str, Any]:
    from pyroopt._version import __version__

    return {"format": FORMAT_VERSION, "pyroopt": __version__, "kind": kind}


def save_state(state: Mapping[str, Any], filename: str | os.PathLike[str]) -> None:
    """Write optimizer state (``{param_name: state}``) atomically, with pyroopt's metadata.

    See :func:`~pyroopt.atomic_file.save_atomic`: a crash leaves the old file or the new
    one, and a hard link to the old file keeps the old contents.
    """
    save_atomic({**state, METADATA_KEY: _metadata("optimizer")}, filename)


_MAP_LOCATIONS = (
    "None, a device (a str such as 'cpu' or 'cuda:0', or a torch.device), a dict "
    "{saved location: device} such as {'cuda:1': 'cpu'}, or a callable (storage, "
    "location) -> storage"
)


def _device_of(path: str, value: Any, what: str) -> torch.device:
    """``value`` (a str or torch.device) as a device this process can load onto."""
    try:
        device = torch.device(value)
    except (RuntimeError, TypeError, ValueError) as e:
        raise ValueError(
            f"cannot load {path}: {what} {value!r} is not a device torch knows ({e})"
        ) from None
    if device.type == "meta":
        raise ValueError(
            f"cannot load {path}: {what} {value!r} is the meta device, whose tensors hold "
            "no values, and optimizer state is values: load onto 'cpu' or an accelerator"
        )
    backend = getattr(torch, device.type, None) if device.type != "cpu" else None
    is_available = getattr(backend, "is_available", None)
    if callable(is_available) and not is_available():
        raise ValueError(
            f"cannot load {path}: {what} {value!r} names a {device.type} device, and "
            f"this process has none (torch.{device.type}.is_available() is False)"
        )
    device_count = getattr(backend, "device_count", None)
    if device.index is not None and callable(device_count) and device.index >= device_count():
        raise ValueError(
            f"cannot load {path}: {what} {value!r} names {device.type} device "
            f"{device.index}, and this process has {device_count()}"
        )
    return device


def _checked_map_location(path: str, map_location: Any) -> Any:
    """``map_location`` as ``torch.load`` takes it, checked before the file is read.

    ``None``, a callable, a device (``str`` or ``torch.device``) this process has, or a
    dict from saved locations to such devices (given to torch as strings, the only form
    its dict lookup reads). The meta device is refused: its tensors hold no values to
    load into an optimizer.
    """
    if map_location is None:
        return None
    if isinstance(map_location, (str, torch.device)):
        _device_of(path, map_location, "map_location")
        return map_location
    if isinstance(map_location, Mapping):
        remap: dict[str, str] = {}
        for saved, device in map_location.items():
            if not isinstance(saved, (str, torch.device)) or not isinstance(
                device, (str, torch.device)
            ):
                raise TypeError(
                    f"cannot load {path}: map_location's entry {saved!r}: {device!r} is not "
                    "allowed; a dict map_location maps saved locations to devices, each a "
                    "str or a torch.device"
                )
            remap[str(saved)] = str(_device_of(path, device, f"map_location[{saved!r}]"))
        return remap
    if callable(map_location):
        return _RecordingMapLocation(map_location)
    raise TypeError(
        f"cannot load {path}: map_location={map_location!r} is not allowed; expected "
        f"{_MAP_LOCATIONS}"
    )


class _RecordingMapLocation:
    """A callable ``map_location``, remembering the error it raised (torch.load hides it)."""

    def __init__(self, function: Callable[[Any, str], Any]) -> None:
        self._function = function
        self.error: Exception | None = None

    def __call__(self, storage: Any, location: str) -> Any:
        try:
            return self._function(storage, location)
        except Exception as e:
            self.error = e
            raise


def _read(path: str, map_location: Any, weights_only: bool, what: str) -> Any:
    """``torch.load`` that names the file and the trouble instead of an unpickling trace."""
    map_location = _checked_map_location(path, map_location)
    try:
        return torch.load(path, map_location=map_location, weights_only=weights_only)
    except (FileNotFoundError, IsADirectoryError, PermissionError):
        raise
    except Exception as e:  # torch.load fails on bad bytes in many ways; name the file
        if isinstance(map_location, _RecordingMapLocation) and map_location.error is not None:
            cause = map_location.error
            error = with_path(cause, f"cannot load {path}: map_location raised {cause!r}")
            if error is cause:
                raise
            raise error from cause
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
    whatever code the file names: use it only for files you trust. ``map_location`` is
    ``torch.load``'s, checked before the file is read (see :func:`_checked_map_location`).
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


def apply_state(optim: Any, state: Mapping[str, Any], path: str) -> None:
    """``optim._set_state(state, path)``, with every error naming the file ``path``.

    All or nothing, as ``_set_state`` is.
    """
    try:
        optim._set_state(state, path)
    except (ValueError, TypeError, KeyError) as e:
        message = str(e.args[0]) if isinstance(e, KeyError) and e.args else str(e)
        if path in message:
            raise
        raise type(e)(f"{path}: {message}") from e


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


def _python_rng_state(entry: Any) -> Any:
    version, internal, gauss = entry
    return (version, tuple(internal), gauss)


def _numpy_rng_state(entry: Any) -> Any:
    """The NumPy state of :func:`rng_state`'s entry, its keys back as ``uint32``."""
    import numpy as np

    name, keys, pos, has_gauss, cached = entry
    if keys.is_complex() or keys.is_floating_point() or keys.dtype == torch.bool:
        raise ValueError(f"its keys must be an integer tensor, found {keys.dtype}")
    keys = keys.cpu().to(torch.int64)
    if keys.numel() and not (bool((keys >= 0).all()) and bool((keys < 2**32).all())):
        raise ValueError("its keys must lie in [0, 2**32)")
    return (name, keys.numpy().astype(np.uint32), pos, has_gauss, cached)


def set_rng_state(state: Mapping[str, Any]) -> None:
    """Restore the generators from :func:`rng_state` (its tensors may be on any device)."""
    import random

    import numpy as np

    torch.set_rng_state(state["torch"].cpu())
    random.setstate(_python_rng_state(state["python"]))
    np.random.set_state(_numpy_rng_state(state["numpy"]))


def _check_rng_state(path: str, rng: Any) -> None:
    """Raise ``ValueError`` naming ``path`` unless every generator takes its state.

    Each state is tried on a scratch generator of its kind (torch's checks the size and
    type of its state, Python's and NumPy's theirs), so that restoring the real ones
    cannot fail after the param store and the optimizer have changed.
    """
    import random

    import numpy as np

    ok = (
        isinstance(rng, Mapping)
        and {"torch", "python", "numpy"} <= set(rng)
        and isinstance(rng["torch"], torch.Tensor)
        and isinstance(rng["python"], (tuple, list))
        and len(rng["python"]) == 3
        and isinstance(rng["numpy"], (tuple, list))
        and len(rng["numpy"]) == 5
        and isinstance(rng["numpy"][1], torch.Tensor)
    )
    if not ok:
        raise ValueError(
            f"{path}: its 'rng' entry is not the random generators' state that "
            "save_training writes ('torch', 'python' and 'numpy' entries)"
        )
    trials: dict[str, Callable[[Any], Any]] = {
        "torch": lambda entry: torch.Generator().set_state(entry.cpu()),
        "python": lambda entry: random.Random().setstate(_python_rng_state(entry)),
        "numpy": lambda entry: np.random.RandomState().set_state(_numpy_rng_state(entry)),
    }
    for which, trial in trials.items():
        try:
            trial(rng[which])
        except Exception as e:
            raise ValueError(
                f"{path}: its 'rng' entry holds a {which!r} state that the {which} random "
                f"generator refuses: {e}"
            ) from None


def save_training(filename: str | os.PathLike[str], optim: Any, *, rng: bool = True) -> None:
    """Save Pyro's param store and ``optim``'s state together in one atomic file.

    Written by :func:`~pyroopt.atomic_file.save_atomic`: a crash leaves the old file or
    the new one, and a hard link to the old file keeps the old contents. With
    ``rng=True`` the random generators' states are saved too, so that a resumed SVI run
    draws the same samples and retraces the same loss curve.

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
    objects only. ``map_location`` is ``torch.load``'s, checked before the file is read
    (see :func:`_checked_map_location`).

    All or nothing: the whole file is read and checked before anything changes (each
    optimizer entry's hyperparameters and state, and its shapes against the parameter
    of its name, the file's or else the store's, while entries for names in neither
    wait for their parameter; each random generator's state, tried on a scratch
    generator). Then the generators, the param store and, last, the optimizer take
    their parts; the optimizer takes its part whole or not at all, and if it refuses,
    the store and the generators are put back as they were. Every error names the file.
    Like Pyro's ``param_store.set_state``, the file's parameters are added to the store,
    replacing those of the same name; others stay.
    """
    import pyro

    path = os.fspath(filename)
    with _compat.safe_globals(_constraint_classes()):
        state = _read(path, map_location, weights_only, "training checkpoint")
    if not (isinstance(state, Mapping) and {"param_store", "optimizer"} <= set(state)):
        raise ValueError(
            f"{path} is not a training checkpoint: expected 'param_store' and 'optimizer' "
            "entries, as save_training writes"
        )
    _check_metadata(path, state, "training")
    store = state["param_store"]
    if not (
        isinstance(store, Mapping)
        and set(store) == {"params", "constraints"}
        and isinstance(store["params"], Mapping)
        and isinstance(store["constraints"], Mapping)
    ):
        raise ValueError(
            f"{path}: its 'param_store' entry is not a Pyro param store state "
            "(a dict with 'params' and 'constraints' dicts)"
        )
    for name, value in store["params"].items():
        if not (isinstance(name, str) and isinstance(value, torch.Tensor)):
            raise ValueError(
                f"{path}: the param store's params must map names to tensors; found "
                f"{name!r}: {type(value).__name__}"
            )
    optimizer_state = state["optimizer"]
    if not isinstance(optimizer_state, Mapping):
        raise ValueError(
            f"{path}: its 'optimizer' entry must be a dict of {{param_name: state}}, "
            f"found {type(optimizer_state).__name__}"
        )
    if "rng" in state:
        _check_rng_state(path, state["rng"])
    param_store = pyro.get_param_store()
    store_before = param_store.get_state()  # unconstrained values, by name
    for name, param_state in optimizer_state.items():
        optim._check_state(name, param_state, path)
        param = store["params"].get(name)
        if param is None:  # the store's parameter of that name stays
            param = store_before["params"].get(name)
        if param is not None:
            check_entry_shapes(path, name, param_state, param)

    rng_before = rng_state()
    try:
        if "rng" in state:
            set_rng_state(state["rng"])  # checked above: cannot fail
        param_store.set_state(
            {"params": dict(store["params"]), "constraints": dict(store["constraints"])}
        )
        # Last: the optimizer takes its state all or nothing, and nothing after it can
        # fail, so that undoing the store and the generators undoes everything.
        apply_state(optim, optimizer_state, path)
    except BaseException as e:
        param_store.clear()
        param_store.set_state(store_before)
        set_rng_state(rng_before)
        if not isinstance(e, Exception) or path in str(e):
            raise
        error = with_path(e, f"{path}: {e}")
        if error is e:
            raise
        raise error from e
