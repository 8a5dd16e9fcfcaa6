"""The persisted state: restart budgets, give-ups and pauses that survive a restart.

Stored as versioned JSON in ``<state_dir>/state.json``::

    {
      "version": 2,
      "restarts": {"KonomiTV": [1767139200.5, ...]},   # wall-clock epoch seconds
      "given_up": {"KonomiTV": 1767139500.0},
      "paused": {"*": null, "other": 1767143100.0},    # "*" = everything; null = no end
      "gpu_last_disabled": {"GPU-1234...": 1767139100.0},
      "history": {"KonomiTV": [{"at": 1767139200.9, "event": "restarted",
                                "cause": "persistence_off", "confidence": "certain"}, ...]}
    }

``history`` is what gpuwatchd did to each container, newest last, at most
:data:`MAX_HISTORY` entries each: ``restarted`` (with the cause and its
confidence), ``recovered`` (with the cause and the verification result) and
``gave_up`` (with the cause). ``gpuwatchd diagnose`` reads it when no daemon
answers. Version 1 files (no ``history``) are still read, so an upgrade keeps
every budget, give-up and pause.

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

STATE_VERSION = 2
#: Older versions this reader still takes (their missing keys read as empty).
READABLE_VERSIONS = frozenset({1, 2})
#: Entries of history kept per container (the newest).
MAX_HISTORY = 16
#: What a history entry may say happened.
HISTORY_EVENTS = frozenset({"restarted", "recovered", "gave_up"})
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
class HistoryEntry:
    """One thing gpuwatchd did to a container: ``event`` (one of
    :data:`HISTORY_EVENTS`) at ``at`` (epoch seconds), for ``cause``;
    ``detail`` is the confidence of a restart or the result of a recovery."""

    at: float
    event: str
    cause: str
    detail: str | None = None

    def to_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"at": self.at, "event": self.event, "cause": self.cause}
        if self.detail is not None:
            doc["detail"] = self.detail
        return doc

    @classmethod
    def from_json(cls, where: str, doc: object, latest: float) -> HistoryEntry:
        """Parse one entry.

        Raises:
            ValueError: not an entry of the documented shape.
        """
        if not isinstance(doc, dict) or set(doc) - {"at", "event", "cause", "detail"}:
            raise ValueError(f"'{where}' is not a history entry")
        event, cause, detail = doc.get("event"), doc.get("cause"), doc.get("detail")
        if event not in HISTORY_EVENTS or not isinstance(cause, str) or len(cause) > 64:
            raise ValueError(f"'{where}' is not a history entry")
        if detail is not None and (not isinstance(detail, str) or len(detail) > 64):
            raise ValueError(f"'{where}.detail' is not a short string")
        return cls(_time(f"{where}.at", doc.get("at"), latest), event, cause, detail)


@dataclass(frozen=True)
class PersistedState:
    """An immutable snapshot of what the core keeps across daemon restarts.

    ``restarts``: restart times per container name, oldest first.
    ``given_up``: when each given-up container was given up.
    ``paused``: pause end per container name (:data:`ALL_CONTAINERS` for all),
    None for "until resumed".
    ``gpu_last_disabled``: when each GPU (by UUID) was last seen with
    persistence mode Disabled.
    ``history``: what gpuwatchd did to each container, oldest first.
    """

    restarts: Mapping[str, tuple[float, ...]] = field(default_factory=_empty)
    given_up: Mapping[str, float] = field(default_factory=_empty)
    paused: Mapping[str, float | None] = field(default_factory=_empty)
    gpu_last_disabled: Mapping[str, float] = field(default_factory=_empty)
    history: Mapping[str, tuple[HistoryEntry, ...]] = field(default_factory=_empty)

    def to_json(self) -> dict[str, Any]:
        """The JSON document for this state, with ``version``."""
        return {
            "version": STATE_VERSION,
            "restarts": {k: list(v) for k, v in sorted(self.restarts.items())},
            "given_up": dict(sorted(self.given_up.items())),
            "paused": dict(sorted(self.paused.items())),
            "gpu_last_disabled": dict(sorted(self.gpu_last_disabled.items())),
            "history": {k: [e.to_json() for e in v] for k, v in sorted(self.history.items())},
        }

    @classmethod
    def from_json(cls, doc: object, *, now: float | None = None) -> PersistedState:
        """Parse a document of any of :data:`READABLE_VERSIONS`.

        With ``now`` (epoch seconds), times later than ``now`` plus
        :data:`CLOCK_SLACK` are refused (a pause may end up to a year ahead):
        a restart "in the future" would hold a budget spent for ever.

        Raises:
            StateVersionError: when the version is not one of :data:`READABLE_VERSIONS`.
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
        if version not in READABLE_VERSIONS:
            raise StateVersionError(version)
        keys = {"version", "restarts", "given_up", "paused", "gpu_last_disabled"}
        if version >= 2:
            keys.add("history")
        unknown = set(doc) - keys
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
        history = {}
        for name, entries in _object(doc, "history").items():
            if not isinstance(entries, list):
                raise ValueError(f"'history.{name}' is not a list")
            parsed = [HistoryEntry.from_json(f"history.{name}", e, past) for e in entries]
            history[name] = tuple(sorted(parsed, key=lambda e: e.at)[-MAX_HISTORY:])
        return cls(
            MappingProxyType(restarts),
            MappingProxyType(given_up),
            MappingProxyType(paused),
            MappingProxyType(disabled),
            MappingProxyType(history),
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
