"""The persisted state: restart budgets, give-ups and pauses that survive a restart.

Stored as versioned JSON in ``<state_dir>/state.json``::

    {
      "version": 1,
      "restarts": {"KonomiTV": [1767139200.5, ...]},   # wall-clock epoch seconds
      "given_up": {"KonomiTV": 1767139500.0},
      "paused": {"*": null, "other": 1767143100.0},    # "*" = everything; null = no end
      "gpu_last_disabled": {"GPU-1234...": 1767139100.0}
    }

Keys are container *names* (budgets follow the name across recreations);
``gpu_last_disabled`` is keyed by GPU UUID. All times are wall-clock epoch
seconds, the core's time base.

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
import math
import os
import secrets
import stat
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from gpuwatchd.config import MAX_DURATION

STATE_VERSION = 1
#: A state file larger than this is not ours: real ones are a few KiB.
MAX_STATE_BYTES = 1 << 20
#: How far past the wall clock a recorded time may lie (clock steps, NTP).
CLOCK_SLACK = 300.0
#: The longest pause a state file may hold, from now: the longest duration anywhere.
MAX_PAUSE_AHEAD = MAX_DURATION
STATE_FILE_NAME = "state.json"
#: The key in ``paused`` that pauses every container.
ALL_CONTAINERS = "*"


def _empty() -> Mapping[Any, Any]:
    return MappingProxyType({})


@dataclass(frozen=True)
class PersistedState:
    """An immutable snapshot of what the core keeps across daemon restarts.

    ``restarts``: restart times per container name, oldest first.
    ``given_up``: when each given-up container was given up.
    ``paused``: pause end per container name (:data:`ALL_CONTAINERS` for all),
    None for "until resumed".
    ``gpu_last_disabled``: when each GPU (by UUID) was last seen with
    persistence mode Disabled.
    """

    restarts: Mapping[str, tuple[float, ...]] = field(default_factory=_empty)
    given_up: Mapping[str, float] = field(default_factory=_empty)
    paused: Mapping[str, float | None] = field(default_factory=_empty)
    gpu_last_disabled: Mapping[str, float] = field(default_factory=_empty)

    def to_json(self) -> dict[str, Any]:
        """The JSON document for this state, with ``version``."""
        return {
            "version": STATE_VERSION,
            "restarts": {k: list(v) for k, v in sorted(self.restarts.items())},
            "given_up": dict(sorted(self.given_up.items())),
            "paused": dict(sorted(self.paused.items())),
            "gpu_last_disabled": dict(sorted(self.gpu_last_disabled.items())),
        }

    @classmethod
    def from_json(cls, doc: object, *, now: float | None = None) -> PersistedState:
        """Parse a version-1 document.

        With ``now`` (epoch seconds), times later than ``now`` plus
        :data:`CLOCK_SLACK` are refused (a pause may end up to a year ahead):
        a restart "in the future" would hold a budget spent for ever.

        Raises:
            StateVersionError: when the version is not :data:`STATE_VERSION`.
            ValueError: when the document is not a valid state (any wrong shape
                rejects the whole file: half a budget is worse than none).
        """
        past = math.inf if now is None else now + CLOCK_SLACK
        ahead = math.inf if now is None else now + MAX_PAUSE_AHEAD + CLOCK_SLACK
        if not isinstance(doc, dict):
            raise ValueError("not a JSON object")
        version = doc.get("version")
        if not isinstance(version, int) or isinstance(version, bool):
            raise ValueError("no integer 'version'")
        if version != STATE_VERSION:
            raise StateVersionError(version)
        unknown = set(doc) - {"version", "restarts", "given_up", "paused", "gpu_last_disabled"}
        if unknown:
            raise ValueError(f"unknown key(s) {sorted(unknown)}")
        restarts = {
            name: tuple(sorted(_times(f"restarts.{name}", v, past)))
            for name, v in _object(doc, "restarts").items()
        }
        given_up = {
            k: _time(f"given_up.{k}", v, past) for k, v in _object(doc, "given_up").items()
        }
        paused = {
            k: None if v is None else _time(f"paused.{k}", v, ahead)
            for k, v in _object(doc, "paused").items()
        }
        disabled = {
            k: _time(f"gpu_last_disabled.{k}", v, past)
            for k, v in _object(doc, "gpu_last_disabled").items()
        }
        return cls(
            MappingProxyType(restarts),
            MappingProxyType(given_up),
            MappingProxyType(paused),
            MappingProxyType(disabled),
        )


class StateVersionError(ValueError):
    """The state file was written by another (older or newer) gpuwatchd."""

    def __init__(self, version: int) -> None:
        super().__init__(
            f"unsupported state version {version} (this gpuwatchd reads {STATE_VERSION})"
        )
        self.version = version


def _object(doc: dict[str, Any], key: str) -> dict[str, Any]:
    value = doc.get(key, {})
    if not isinstance(value, dict):
        raise ValueError(f"'{key}' is not an object")
    return value


def _time(where: str, value: object, latest: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"'{where}' is not a time in seconds")
    if value > latest:
        raise ValueError(f"'{where}' lies in the future")
    return float(value)


def _times(where: str, value: object, latest: float) -> list[float]:
    if not isinstance(value, list):
        raise ValueError(f"'{where}' is not a list")
    return [_time(where, v, latest) for v in value]


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
