"""The state file: :class:`~gpuwatchd.model.state.PersistedState` on disk, in
``<state_dir>/state.json`` (the document is described in :mod:`gpuwatchd.model.state`).

Writes are atomic: a temporary file in the same directory (mode 0600), fsync,
rename over the old file, fsync of the directory. Reads never crash the
daemon: a missing file gives empty state; a corrupt file, or one of an
unknown version, gives empty state, is moved aside (``state.json.corrupt-<ts>``
or ``state.json.unsupported-v<N>-<ts>``) so nothing is lost silently, and comes
back with a one-line warning for the daemon to record.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import secrets
import stat
import time
from pathlib import Path

from gpuwatchd.model.state import (
    ALL_CONTAINERS,
    CLOCK_SLACK,
    HISTORY_EVENTS,
    MAX_HISTORY,
    MAX_HISTORY_CONTAINERS,
    MAX_PAUSE_AHEAD,
    READABLE_VERSIONS,
    STATE_VERSION,
    HistoryEntry,
    PersistedState,
    StateVersionError,
)

__all__ = [
    "ALL_CONTAINERS",
    "CLOCK_SLACK",
    "HISTORY_EVENTS",
    "MAX_HISTORY",
    "MAX_HISTORY_CONTAINERS",
    "MAX_PAUSE_AHEAD",
    "MAX_STATE_BYTES",
    "READABLE_VERSIONS",
    "STATE_FILE_NAME",
    "STATE_VERSION",
    "HistoryEntry",
    "PersistedState",
    "StateVersionError",
    "load_state",
    "read_state_file",
    "save_state",
    "state_path",
]

#: A state file larger than this is not ours: real ones are a few KiB.
MAX_STATE_BYTES = 1 << 20
STATE_FILE_NAME = "state.json"


def _read_regular(path: Path) -> bytes:
    """The bytes of ``path``, which must be a regular file of at most MAX_STATE_BYTES.

    Never follows a symlink and never blocks on a FIFO or device.

    Raises:
        FileNotFoundError: no file.
        ValueError: a symlink, not a regular file, or too large.
        OSError: cannot be read.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise ValueError("a symbolic link, not a regular file") from None
        raise
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise ValueError("not a regular file")
        data = f.read(MAX_STATE_BYTES + 1)
    if len(data) > MAX_STATE_BYTES:
        raise ValueError(f"larger than {MAX_STATE_BYTES} bytes")
    return data


def read_state_file(path: Path) -> tuple[PersistedState, float]:
    """Read the state file as it is, for a reader that must change nothing
    (``diagnose``); returns the state and the file's modification time.

    Raises:
        FileNotFoundError: no file.
        ValueError: not a usable state file (see :func:`load_state`).
        OSError: it cannot be read.
    """
    data = _read_regular(path)
    mtime = path.stat().st_mtime
    return PersistedState.from_json(json.loads(data), now=time.time()), mtime


def state_path(state_dir: Path) -> Path:
    """Where the state file lives inside ``state_dir``."""
    return state_dir / STATE_FILE_NAME


def load_state(path: Path, *, now: float | None = None) -> tuple[PersistedState, str | None]:
    """Read the state file; never raises for a bad or missing file.

    Returns the state and None, or empty state and a one-line warning when the
    file could not be used. An unusable file is renamed aside (its new name is
    in the warning); ``now`` (epoch seconds, default the wall clock) stamps
    that name.
    """
    when = time.time() if now is None else now
    try:
        raw = _read_regular(path)
        return PersistedState.from_json(json.loads(raw), now=when), None
    except FileNotFoundError:
        return PersistedState(), None
    except StateVersionError as exc:
        kind, reason = f"unsupported-v{exc.version}", str(exc)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        kind, reason = "corrupt", f"corrupt ({exc})"
    except OSError as exc:
        # Unreadable (permissions, I/O error): nothing to move; say so.
        return PersistedState(), f"cannot read state file {path}: {exc.strerror or exc}"
    moved = _move_aside(path, kind, when)
    where = f"moved to {moved}" if moved else "could not move it aside"
    return PersistedState(), f"state file {path} {reason}; starting with empty state, {where}"


def _move_aside(path: Path, kind: str, now: float) -> Path | None:
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now))
    for n in range(100):
        target = path.with_name(f"{path.name}.{kind}-{stamp}" + (f".{n}" if n else ""))
        if target.exists():
            continue
        try:
            path.rename(target)
        except OSError:
            return None
        return target
    return None


def save_state(path: Path, state: PersistedState) -> None:
    """Write ``state`` to ``path`` atomically, mode 0600; creates the directory (0700).

    Raises:
        OSError: when the directory or file cannot be written; the old file is
            then left as it was.
    """
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    data = (json.dumps(state.to_json(), indent=2, sort_keys=True) + "\n").encode()
    # A fresh random name, created exclusively and never through a symlink: a
    # file planted in the directory cannot make root write or chmod another.
    tmp = path.with_name(f".{path.name}.tmp-{secrets.token_hex(8)}")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(tmp, flags, 0o600)
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    # The rename is durable only once the directory entry is on disk.
    dfd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)
