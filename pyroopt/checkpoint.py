"""Optimizer state on disk: pyro.optim's format, written atomically, read safely.

The file is ``torch.save`` of ``{param_name: per-parameter state dict}``, the format
pyro.optim's ``save`` writes, so files move freely between the two.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import stat
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

import torch

from pyroopt import _compat

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None  # type: ignore[assignment]


#: A temporary file beside a target counts as left by a killed save only once it has
#: not been written for this long (and, where file locks exist, no live save holds it).
STALE_TEMP_AGE_S = 5.0

_umask_lock = threading.Lock()


def _umask() -> int:
    """The process's umask, read without changing it where the system allows."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    # os.umask can only be read by setting it; the lock keeps our own threads from
    # seeing the temporary value (other code creating files at this instant could).
    with _umask_lock:
        mask = os.umask(0o077)
        os.umask(mask)
    return mask


def _temp_pattern(basename: str) -> re.Pattern[str]:
    # tempfile.mkstemp's names: the prefix, 8 characters from [a-z0-9_], the suffix
    return re.compile(re.escape(f".{basename}.") + r"[a-z0-9_]{8}" + re.escape(".tmp"))


def _remove_stale_temps(folder: str, basename: str) -> None:
    """Delete ``.BASENAME.XXXXXXXX.tmp`` files that a killed save of this target left.

    Two savers of one target may run at once (each writes its own temporary file and
    the last rename wins), so a temporary file is removed only when no save is writing
    it: no live process holds its lock (a save holds an exclusive ``flock`` on its
    temporary file until the rename; the system drops it when the process dies) and
    it has not been written for :data:`STALE_TEMP_AGE_S` seconds (which covers the
    instant between a save creating its file and locking it). Without ``fcntl``
    (Windows) only the age counts, and an open file cannot be deleted there anyway.
    Best effort: anything that fails is left alone.
    """
    pattern = _temp_pattern(basename)
    try:
        names = [n for n in os.listdir(folder) if pattern.fullmatch(n)]
    except OSError:
        return
    for name in names:
        candidate = os.path.join(folder, name)
        try:
            fd = os.open(candidate, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
        except OSError:
            continue
        try:
            if fcntl is not None:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except OSError:
                    continue  # a live save is writing it
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode) or time.time() - st.st_mtime < STALE_TEMP_AGE_S:
                continue
            with contextlib.suppress(OSError):
                if os.path.samestat(st, os.stat(candidate, follow_symlinks=False)):
                    os.unlink(candidate)
        finally:
            os.close(fd)  # drops the lock


class _RecordingWriter:
    """The file object torch writes through, remembering the OSError it raised.

    torch replaces a failed write's ``OSError`` (say, ``No space left on device``) by
    its own ``RuntimeError: unexpected pos ...``; this keeps the cause to report.
    """

    def __init__(self, f: Any) -> None:
        self._f = f
        self.error: OSError | None = None

    def write(self, data: Any) -> int:
        try:
            return self._f.write(data)
        except OSError as e:
            self.error = e
            raise

    def flush(self) -> None:
        self._f.flush()


def _describe(path: str, target: str) -> str:
    return f"{path} (a link to {target})" if os.path.islink(path) else path


def _save_error(e: Exception, recorded: OSError | None, path: str, target: str) -> Exception:
    """The error to raise for a failed save: the same kind, naming the target."""
    where = _describe(path, target)
    cause: BaseException = recorded if recorded is not None else e
    if isinstance(cause, OSError):
        reason = cause.strerror or str(cause) or type(cause).__name__
        # OSError(errno, ...) makes the matching subclass (FileNotFoundError, ...)
        return OSError(cause.errno, f"cannot save {where}: {reason}")
    try:
        return type(e)(f"cannot save {where}: {e}")
    except Exception:  # an exception class that takes other arguments
        add_note = getattr(e, "add_note", None)  # Python 3.11+
        if add_note is not None:
            add_note(f"while saving {where}")
        return e


def _check_folder(path: str, target: str, folder: str) -> None:
    if not os.path.exists(folder):
        raise FileNotFoundError(
            errno.ENOENT,
            f"cannot save {_describe(path, target)}: its folder {folder} does not exist",
        )
    if not os.path.isdir(folder):
        raise NotADirectoryError(
            errno.ENOTDIR,
            f"cannot save {_describe(path, target)}: {folder} is not a folder",
        )
    if os.path.isdir(target):
        raise IsADirectoryError(
            errno.EISDIR, f"cannot save {_describe(path, target)}: it is a folder"
        )


def save_atomic(obj: Any, filename: str | os.PathLike[str]) -> None:
    """``torch.save(obj, filename)`` such that a crash leaves the old file or the new one.

    Writes a temporary file ``.NAME.XXXXXXXX.tmp`` in the target's folder, flushes and
    fsyncs it, then renames it over the target (an atomic replace on POSIX and
    Windows). On failure the target is untouched and the temporary file is removed.

    - A symbolic link is followed: its target file is replaced and the link stays.
    - The file gets the mode ``open(filename, "wb")`` would give: an existing file
      keeps its mode (and, where permitted, its owner), as with pyro.optim's
      ``torch.save``; a new one gets ``0o666`` less the umask.
    - Temporary files that an earlier, killed save of the same target left behind
      are removed first (see :func:`_remove_stale_temps` for which).
    - A target that is not a regular file (``/dev/null``, a FIFO) cannot be replaced
      atomically; it is written in place, as ``torch.save`` would.
    - Every error names the target and the cause, e.g. ``OSError: [Errno 28] cannot
      save /data/optim.pt: No space left on device``; errors from the file system
      stay ``OSError`` (``FileNotFoundError`` for a missing folder,
      ``PermissionError`` for an unwritable one), others keep their type.
    """
    path = os.fspath(filename)
    target = os.path.realpath(path)
    folder = os.path.dirname(target)
    try:
        existing: os.stat_result | None = os.stat(target)
    except OSError:
        existing = None
    if existing is not None and not stat.S_ISREG(existing.st_mode):
        if stat.S_ISDIR(existing.st_mode):
            _check_folder(path, target, folder)
        _save_in_place(obj, path, target)
        return
    _check_folder(path, target, folder)
    _remove_stale_temps(folder, os.path.basename(target))
    tmp: str | None = None
    writer: _RecordingWriter | None = None
    try:
        fd, tmp = tempfile.mkstemp(
            prefix=f".{os.path.basename(target)}.", suffix=".tmp", dir=folder
        )
        with os.fdopen(fd, "wb") as f:
            if fcntl is not None:
                fcntl.flock(f.fileno(), fcntl.LOCK_EX)  # "being written": see above
            if existing is not None:
                if (existing.st_uid, existing.st_gid) != (os.getuid(), os.getgid()):
                    with contextlib.suppress(OSError):
                        os.fchown(f.fileno(), existing.st_uid, existing.st_gid)
                os.fchmod(f.fileno(), stat.S_IMODE(existing.st_mode))
            else:
                os.fchmod(f.fileno(), 0o666 & ~_umask())
            writer = _RecordingWriter(f)
            torch.save(obj, writer)  # type: ignore[arg-type]
            f.flush()
            os.fsync(f.fileno())
            if fcntl is not None:
                os.replace(tmp, target)  # still locked: no cleaner takes it before this
        if fcntl is None:
            os.replace(tmp, target)  # Windows renames only closed files
    except BaseException as e:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        if not isinstance(e, Exception):
            raise
        error = _save_error(e, writer.error if writer else None, path, target)
        if error is e:
            raise
        raise error from e
    _fsync_folder(folder)


def _save_in_place(obj: Any, path: str, target: str) -> None:
    writer: _RecordingWriter | None = None
    try:
        with open(target, "wb") as f:
            writer = _RecordingWriter(f)
            torch.save(obj, writer)  # type: ignore[arg-type]
    except Exception as e:
        error = _save_error(e, writer.error if writer else None, path, target)
        if error is e:
            raise
        raise error from e


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


def load_into(
    optim: Any,
    filename: str | os.PathLike[str],
    map_location: Any = None,
    *,
    weights_only: bool = True,
) -> None:
    """Read ``filename`` (:func:`load_state`) and set it as ``optim``'s state.

    What ``PyroOptim.load`` does, except that every error, including one that only
    applying the state finds (a file of another optimizer, state shaped unlike its
    parameter), names the file.
    """
    path = os.fspath(filename)
    apply_state(optim, load_state(path, map_location, weights_only=weights_only), path)


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
    objects only. All or nothing: the whole file is read and checked before anything
    changes (each optimizer entry's state must have the shape of the parameter of
    its name, the file's or else the store's; entries for names in neither wait for
    their parameter), and if applying the optimizer state still fails, the param
    store and the random generators are put back as they were. Every error names the
    file. Like Pyro's ``param_store.set_state``, the file's parameters are added to
    the store, replacing those of the same name; others stay.
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
            _check_entry_shapes(path, name, param_state, param)

    rng_before = rng_state()
    try:
        param_store.set_state(
            {"params": dict(store["params"]), "constraints": dict(store["constraints"])}
        )
        apply_state(optim, optimizer_state, path)
        if "rng" in state:
            set_rng_state(state["rng"])
    except BaseException:
        param_store.clear()
        param_store.set_state(store_before)
        set_rng_state(rng_before)
        raise


def _check_rng_state(path: str, rng: Any) -> None:
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


def _check_entry_shapes(path: str, name: str, entry: Mapping[str, Any], param: Any) -> None:
    """Raise ``ValueError`` unless ``entry``'s parameter-shaped tensors fit ``param``."""
    from pyroopt.engine import PARAM_SHAPED_STATE

    inner = entry["optimizer"] if "scheduler" in entry and "optimizer" in entry else entry
    per_param = inner.get("state") if isinstance(inner, Mapping) else None
    if not isinstance(per_param, Mapping):
        return  # _check_state has judged the layout
    for values in per_param.values():
        if not isinstance(values, Mapping):
            continue
        for key, value in values.items():
            if key not in PARAM_SHAPED_STATE:
                continue
            shape = tuple(value.shape) if isinstance(value, torch.Tensor) else None
            if shape != tuple(param.shape):
                raise ValueError(
                    f"{path}: the optimizer state of {name!r} does not fit the parameter: "
                    f"its {key!r} has shape {shape}, but {name!r} has shape "
                    f"{tuple(param.shape)} (did the model change?); nothing was loaded"
                )


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
