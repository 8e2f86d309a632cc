"""Optimizer state on disk: pyro.optim's format, written atomically, read safely.

The file is ``torch.save`` of ``{param_name: per-parameter state dict}``, the format
pyro.optim's ``save`` writes, so files move freely between the two.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import hashlib
import math
import numbers
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


#: tempfile.mkstemp's names: the prefix, 8 characters from [a-z0-9_], the suffix
_RANDOM_PART = r"[a-z0-9_]{8}"
_TEMP_SUFFIX = ".tmp"
#: bytes of a shortened temporary name beside its head: ".", ".", 8 hex digits, ".",
#: 8 random characters, ".tmp"
_SHORTENED_OVERHEAD = 1 + 1 + 8 + 1 + 8 + len(_TEMP_SUFFIX)


def _name_max(folder: str) -> int:
    """The longest file name, in bytes, that ``folder``'s file system takes (255 if unknown)."""
    try:
        return int(os.pathconf(folder, "PC_NAME_MAX"))
    except (OSError, ValueError, AttributeError):  # no pathconf (Windows), or no answer
        return 255


def _temp_prefix(basename: str, name_max: int) -> str:
    """The prefix of the temporary files of a save of ``basename``.

    ``.NAME.``, so that ``.NAME.XXXXXXXX.tmp`` sits beside ``NAME``; where that name
    would be longer than ``name_max`` bytes (a target name of 242-255 bytes on most
    file systems), ``.HEAD.DIGEST.`` instead: HEAD the longest start of NAME that fits
    and DIGEST the first 8 hex digits of NAME's SHA-256, so that targets sharing a
    long start do not share temporary files.

    >>> _temp_prefix("optim.pt", 255)
    '.optim.pt.'
    >>> prefix = _temp_prefix("x" * 250, 255)
    >>> prefix[-10:], len(prefix) + 8 + len(".tmp")
    ('.086d4a1c.', 255)
    """
    prefix = f".{basename}."
    if len(os.fsencode(prefix)) + 8 + len(_TEMP_SUFFIX) <= name_max:
        return prefix
    digest = hashlib.sha256(os.fsencode(basename)).hexdigest()[:8]
    head = basename
    while head and len(os.fsencode(head)) > name_max - _SHORTENED_OVERHEAD:
        head = head[:-1]
    return f".{head}.{digest}."


def _temp_pattern(basename: str, name_max: int) -> re.Pattern[str]:
    """The names of the temporary files a save of ``basename`` creates."""
    prefix = _temp_prefix(basename, name_max)
    return re.compile(re.escape(prefix) + _RANDOM_PART + re.escape(_TEMP_SUFFIX))


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
    pattern = _temp_pattern(basename, _name_max(folder))
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
    return _with_path(e, f"cannot save {where}: {e}")


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


def _access_ok(path: str, mode: int) -> bool:
    """``os.access`` for this process's effective user, as ``open`` decides."""
    if os.access in os.supports_effective_ids:
        return os.access(path, mode, effective_ids=True)
    return os.access(path, mode)


def _read_only_file_system(path: str) -> bool:
    try:
        return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except (OSError, AttributeError):  # no statvfs (Windows)
        return False


def _refusal(path: str, target: str, where: str, reason: str) -> OSError:
    """The error ``open`` gives for an unwritable ``where``: EROFS or EACCES."""
    if _read_only_file_system(where):
        return OSError(
            errno.EROFS, f"cannot save {_describe(path, target)}: {reason} (read-only file system)"
        )
    return PermissionError(
        errno.EACCES, f"cannot save {_describe(path, target)}: Permission denied ({reason})"
    )


def _check_writable(path: str, target: str, folder: str, existing: bool) -> None:
    """Refuse a save that ``open(path, "wb")`` would refuse, or that cannot be atomic.

    An existing file must be writable by this user (its mode, ACLs, a read-only file
    system): the rename that replaces it needs only the folder, so without this check a
    save would replace a file ``chmod 444`` where ``open`` and pyro.optim refuse. The
    folder must be writable too, since the temporary file is created there. Root may
    write anything ``open`` lets it write.
    """
    if existing and not _access_ok(target, os.W_OK):
        raise _refusal(path, target, target, "the file is not writable by this user")
    if not _access_ok(folder, os.W_OK | os.X_OK):
        raise _refusal(
            path,
            target,
            folder,
            f"its folder {folder} is not writable by this user, and an atomic save "
            "creates its temporary file there",
        )


def save_atomic(obj: Any, filename: str | os.PathLike[str]) -> None:
    """``torch.save(obj, filename)`` such that a crash leaves the old file or the new one.

    Writes a temporary file ``.NAME.XXXXXXXX.tmp`` in the target's folder (for a name
    too long for that, a shortened one: see :func:`_temp_prefix`), flushes and fsyncs
    it, then renames it over the target (an atomic replace on POSIX and Windows). On
    failure the target is untouched and the temporary file is removed.

    - A symbolic link is followed: its target file is replaced and the link stays.
    - The rename replaces the folder's entry for the target with a new file: a hard
      link to the old file keeps the old contents (``torch.save`` and pyro.optim,
      writing in place, change every link).
    - A target this user cannot write raises ``PermissionError``, as
      ``open(filename, "wb")`` does, and so does a folder this user cannot write
      (where the temporary file must go).
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
    _check_writable(path, target, folder, existing is not None)
    basename = os.path.basename(target)
    _remove_stale_temps(folder, basename)
    tmp: str | None = None
    writer: _RecordingWriter | None = None
    try:
        fd, tmp = tempfile.mkstemp(
            prefix=_temp_prefix(basename, _name_max(folder)), suffix=_TEMP_SUFFIX, dir=folder
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
    """Write optimizer state (``{param_name: state}``) atomically, with pyroopt's metadata.

    See :func:`save_atomic`: a crash leaves the old file or the new one, and a hard link
    to the old file keeps the old contents.
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


def _with_path(e: Exception, message: str) -> Exception:
    """``e``'s type with ``message``, or ``e`` with ``message`` as a note where its type
    takes other arguments."""
    try:
        return type(e)(message)
    except Exception:
        add_note = getattr(e, "add_note", None)  # Python 3.11+
        if add_note is not None:
            add_note(message)
        return e


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
            error = _with_path(cause, f"cannot load {path}: map_location raised {cause!r}")
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

    Written by :func:`save_atomic`: a crash leaves the old file or the new one, and a
    hard link to the old file keeps the old contents. With ``rng=True`` the random
    generators' states are saved too, so that a resumed SVI run draws the same samples
    and retraces the same loss curve.

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
            _check_entry_shapes(path, name, param_state, param)

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
        error = _with_path(e, f"{path}: {e}")
        if error is e:
            raise
        raise error from e


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
    """Check one parameter's entry (pyro.optim's per-parameter format) before it is used.

    Checks its layout (a one-parameter optimizer's state dict), the hyperparameters
    whose meaning every torch and pyro optimizer taking them shares (``lr``, ``betas``,
    ``eps``, ``weight_decay``, ``momentum``, the flags, ...: see ``_HYPERPARAMETERS``)
    and the state entries whose kind is known (``step`` a whole number >= 0 or a
    tensor of them; parameter-shaped entries tensors). A value of the wrong kind raises
    ``TypeError``, one out of range ``ValueError``, naming ``where``, the parameter, the
    key, the value and what is allowed. Keys it does not know are left to the optimizer.

    >>> group = {"lr": 0.1, "betas": (0.9, 0.999), "params": [0]}
    >>> check_param_state("w", {"state": {0: {"step": 3.0}}, "param_groups": [group]})
    >>> bad = {"state": {0: {"step": -7}}, "param_groups": [group]}
    >>> check_param_state("w", bad)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ValueError: state: the optimizer state of 'w' has state entry 'step' = -7; allowed: a...
    """
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
    for key, value in groups[0].items():
        check = _HYPERPARAMETERS.get(key)
        if check is not None:
            _refuse_unless(check(value), where, name, "hyperparameter", key, value)
    for index, entries in state["state"].items():
        if index != 0 or not isinstance(entries, Mapping):
            raise ValueError(
                f"{where}: the optimizer state of {name!r} must hold the state of its one "
                f"parameter as {{0: {{key: value}}}}, found {{{index!r}: "
                f"{type(entries).__name__}}}"
            )
        for key, value in entries.items():
            check = _state_entries().get(key)
            if check is not None:
                _refuse_unless(check(value), where, name, "state entry", key, value)


# -- what a saved hyperparameter or state entry may be ---------------------------------
#: A check's verdict on a value: ``None`` if allowed, else the error type to raise
#: (``TypeError`` for a value of the wrong kind, ``ValueError`` for one out of range)
#: and what is allowed.
_Verdict = tuple[type[Exception], str] | None
_Check = Callable[[Any], _Verdict]


def _refuse_unless(
    verdict: _Verdict, where: str, name: str, what: str, key: str, value: Any
) -> None:
    if verdict is not None:
        error, allowed = verdict
        raise error(
            f"{where}: the optimizer state of {name!r} has {what} {key!r} = {value!r}; "
            f"allowed: {allowed}"
        )


def _real(value: Any) -> float | None:
    """``value`` as a float if it is a real number or a one-element real tensor, else None.

    >>> _real(3), _real(torch.tensor([0.5])), _real(True), _real("0.1")
    (3.0, 0.5, None, None)
    """
    if type(value) in (float, int):  # the common case, without the ABC check below
        return float(value)
    if isinstance(value, torch.Tensor):
        if (
            value.numel() != 1
            or value.is_meta
            or value.is_complex()
            or value.dtype == torch.bool
            or value.layout != torch.strided
        ):
            return None
        return float(value.item())
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        return float(value)
    return None


class _Range:
    """Real numbers from ``low`` to ``high``, each end open or closed, as torch's
    optimizers check their arguments (NaN lies in no range).

    >>> 1.0 in _Range(0, 1, high_open=True), float("nan") in _Range(), str(_Range(0))
    (False, False, '>= 0')
    """

    def __init__(
        self,
        low: float = -math.inf,
        high: float = math.inf,
        *,
        low_open: bool = False,
        high_open: bool = False,
    ) -> None:
        self.low, self.high, self.low_open, self.high_open = low, high, low_open, high_open

    def __contains__(self, x: float) -> bool:
        above = x > self.low if self.low_open else x >= self.low
        below = x < self.high if self.high_open else x <= self.high
        return above and below

    def __str__(self) -> str:
        if self.low == -math.inf and self.high == math.inf:
            return ""
        if self.high == math.inf:
            return f"{'>' if self.low_open else '>='} {self.low:g}"
        if self.low == -math.inf:
            return f"{'<' if self.high_open else '<='} {self.high:g}"
        left, right = "(" if self.low_open else "[", ")" if self.high_open else "]"
        return f"in {left}{self.low:g}, {self.high:g}{right}"


def _number(allowed_range: _Range | None = None) -> _Check:
    """A real number (or one-element tensor), in ``allowed_range`` if given."""
    allowed_range = allowed_range or _Range()
    allowed = f"a real number {allowed_range}".strip()

    def check(value: Any) -> _Verdict:
        x = _real(value)
        if x is None:
            return TypeError, allowed
        return None if x in allowed_range else (ValueError, allowed)

    return check


def _numbers(items: list[_Check] | _Check, allowed: str) -> _Check:
    """A tuple or list: of ``len(items)`` values each passing its check, or of any
    positive number of values each passing the one check ``items``."""

    def check(value: Any) -> _Verdict:
        if not isinstance(value, (tuple, list)):
            return TypeError, allowed
        if not value or (isinstance(items, list) and len(value) != len(items)):
            return ValueError, allowed
        checks = items if isinstance(items, list) else [items] * len(value)
        for item, item_check in zip(value, checks, strict=True):
            verdict = item_check(item)
            if verdict is not None:
                return verdict[0], allowed
        return None

    return check


def _either(first: _Check, second: _Check, allowed: str) -> _Check:
    """What passes ``first`` or ``second``; refused as out of range (``ValueError``)
    where either found the value's kind right."""

    def check(value: Any) -> _Verdict:
        refusals = [first(value), second(value)]
        if None in refusals:
            return None
        kinds = [refusal[0] for refusal in refusals if refusal is not None]
        return (ValueError if ValueError in kinds else TypeError), allowed

    return check


def _none(value: Any) -> _Verdict:
    return None if value is None else (TypeError, "None")


def _flag(*, optional: bool = False) -> _Check:
    allowed = "True, False or None" if optional else "True or False"

    def check(value: Any) -> _Verdict:
        ok = isinstance(value, bool) or (optional and value is None)
        return None if ok else (TypeError, allowed)

    return check


def _step(value: Any) -> _Verdict:
    """torch's 0-dim tensor step, pyro's int step, a float step of older files, or
    DCTAdam's per-element tensor of steps: whole numbers >= 0 in every case."""
    allowed = "a whole number >= 0, or a tensor of whole numbers >= 0 (torch's 0-dim step)"
    if isinstance(value, torch.Tensor):
        if (
            value.is_meta
            or value.is_complex()
            or value.dtype == torch.bool
            or value.layout != torch.strided
        ):
            return TypeError, allowed
        if value.numel() != 1:
            steps = value.detach().to(torch.float64)
            ok = bool((torch.isfinite(steps) & (steps >= 0) & (steps == steps.trunc())).all())
            return None if ok else (ValueError, allowed)
        value = value.item()  # one element: cheaper in Python than as tensor operations
    if not isinstance(value, numbers.Real) or isinstance(value, bool):
        return TypeError, allowed
    x = float(value)
    return None if math.isfinite(x) and x >= 0 and x == int(x) else (ValueError, allowed)


def _tensor(*, optional: bool = False) -> _Check:
    allowed = "a tensor" + (" or None" if optional else "")

    def check(value: Any) -> _Verdict:
        ok = isinstance(value, torch.Tensor) or (optional and value is None)
        return None if ok else (TypeError, allowed)

    return check


_AT_LEAST_0 = _number(_Range(0))
_UNIT = _Range(0, 1, high_open=True)

#: Hyperparameters whose meaning every torch and pyro optimizer that takes them shares,
#: with the ranges their constructors (and pyroopt's) accept. Keys not listed here
#: (a schedule's ``max_lr``, Muon's ``ns_coefficients``, a custom optimizer's own)
#: are left to the optimizer.
_HYPERPARAMETERS: dict[str, _Check] = {
    "lr": _AT_LEAST_0,
    "initial_lr": _AT_LEAST_0,  # what a schedule started from
    "eps": _either(
        _AT_LEAST_0,
        _numbers(_either(_none, _AT_LEAST_0, ""), ""),
        "a real number >= 0, or a tuple of such numbers or None (Adafactor's)",
    ),
    "betas": _numbers(_number(_UNIT), "a tuple of real numbers in [0, 1)"),
    "etas": _numbers(
        [_number(_Range(0, 1, low_open=True, high_open=True)), _number(_Range(1, low_open=True))],
        "a pair (etaminus, etaplus) with 0 < etaminus < 1 < etaplus",
    ),
    "step_sizes": _numbers([_number(), _number()], "a pair of real numbers (min, max)"),
    "rho": _number(_Range(0, 1)),
    "beta2_decay": _number(_Range(high=0)),
    "weight_decay": _AT_LEAST_0,
    "momentum": _AT_LEAST_0,
    "dampening": _number(),
    "lr_decay": _AT_LEAST_0,
    "initial_accumulator_value": _AT_LEAST_0,
    "momentum_decay": _AT_LEAST_0,
    "alpha": _number(),
    "lambd": _number(),
    "t0": _number(),
    "clip_norm": _AT_LEAST_0,  # ClippedAdam, DCTAdam
    "lrd": _AT_LEAST_0,
    "eta": _AT_LEAST_0,  # AdagradRMSProp
    "delta": _AT_LEAST_0,
    **dict.fromkeys(
        [
            "amsgrad",
            "maximize",
            "nesterov",
            "centered",
            "capturable",
            "differentiable",
            "decoupled_weight_decay",
            "centered_variance",
            "subsample_aware",
        ],
        _flag(),
    ),
    "foreach": _flag(optional=True),
    "fused": _flag(optional=True),
}


@functools.cache
def _state_entries() -> dict[str, _Check]:
    """Per-parameter state entries whose kind is known: parameter-shaped tensors and steps."""
    from pyroopt.engine import PARAM_SHAPED_STATE  # engine imports much; checkpoint little

    entries: dict[str, _Check] = dict.fromkeys(PARAM_SHAPED_STATE, _tensor())
    # torch's SGD before 2.0 saved None for a buffer not yet made, and loads it still
    entries["momentum_buffer"] = _tensor(optional=True)
    entries["step"] = _step
    return entries
