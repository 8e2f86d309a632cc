"""Write a file so that a crash never leaves a half-written file in place of the last good one.

:func:`save_atomic` is ``torch.save`` into a temporary file beside the target
(``.NAME.XXXXXXXX.tmp``), flushed and fsynced, then renamed over the target (an atomic
replace on POSIX and Windows). A crash, a full disk or a killed process at any instant
leaves the old file or the new one, never a torn one; a failed save removes its
temporary file, and the next save of the same target removes those a killed save left.
Errors name the target and the cause.

Example::

    >>> import os, tempfile, torch
    >>> folder = tempfile.mkdtemp()
    >>> save_atomic({"x": torch.ones(2)}, os.path.join(folder, "optim.pt"))
    >>> save_atomic({"x": torch.zeros(2)}, os.path.join(folder, "optim.pt"))
    >>> torch.load(os.path.join(folder, "optim.pt"), weights_only=True)["x"]
    tensor([0., 0.])
    >>> os.listdir(folder)
    ['optim.pt']
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import re
import stat
import tempfile
import threading
import time
from typing import Any

import torch

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


def with_path(e: Exception, message: str) -> Exception:
    """``e``'s type with ``message``, or ``e`` with ``message`` as a note where its type
    takes other arguments."""
    try:
        return type(e)(message)
    except Exception:
        add_note = getattr(e, "add_note", None)  # Python 3.11+
        if add_note is not None:
            add_note(message)
        return e


def _save_error(e: Exception, recorded: OSError | None, path: str, target: str) -> Exception:
    """The error to raise for a failed save: the same kind, naming the target."""
    where = _describe(path, target)
    cause: BaseException = recorded if recorded is not None else e
    if isinstance(cause, OSError):
        reason = cause.strerror or str(cause) or type(cause).__name__
        # OSError(errno, ...) makes the matching subclass (FileNotFoundError, ...)
        return OSError(cause.errno, f"cannot save {where}: {reason}")
    return with_path(e, f"cannot save {where}: {e}")


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
