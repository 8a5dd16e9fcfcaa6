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
import json
import math
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

STATE_VERSION = 1
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
    def from_json(cls, doc: object) -> PersistedState:
        """Parse a version-1 document.

        Raises:
            StateVersionError: when the version is not :data:`STATE_VERSION`.
            ValueError: when the document is not a valid state (any wrong shape
                rejects the whole file: half a budget is worse than none).
        """
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
            name: tuple(sorted(_times(f"restarts.{name}", v)))
            for name, v in _object(doc, "restarts").items()
        }
        given_up = {k: _time(f"given_up.{k}", v) for k, v in _object(doc, "given_up").items()}
        paused = {
            k: None if v is None else _time(f"paused.{k}", v)
            for k, v in _object(doc, "paused").items()
        }
        disabled = {
            k: _time(f"gpu_last_disabled.{k}", v)
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


def _time(where: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"'{where}' is not a time in seconds")
    return float(value)


def _times(where: str, value: object) -> list[float]:
    if not isinstance(value, list):
        raise ValueError(f"'{where}' is not a list")
    return [_time(where, v) for v in value]


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
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return PersistedState(), None
    except OSError as exc:
        # Unreadable (permissions, I/O error): nothing to move; say so.
        return PersistedState(), f"cannot read state file {path}: {exc.strerror or exc}"
    try:
        return PersistedState.from_json(json.loads(raw)), None
    except StateVersionError as exc:
        kind, reason = f"unsupported-v{exc.version}", str(exc)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        kind, reason = "corrupt", f"corrupt ({exc})"
    moved = _move_aside(path, kind, time.time() if now is None else now)
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
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        try:
            os.fchmod(fd, 0o600)  # O_CREAT's mode does not apply to a leftover temp file
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
