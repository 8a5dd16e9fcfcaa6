"""The persisted state as data: restart budgets, give-ups, pauses, GPU history and
what gpuwatchd did to each container, with its versioned JSON form.

Pure: no file is read or written here (:mod:`gpuwatchd.adapters.state_file`
does that). The JSON document::

    {
      "version": 2,
      "restarts": {"KonomiTV": [1767139200.5, ...]},   # wall-clock epoch seconds
      "given_up": {"KonomiTV": 1767139500.0},
      "paused": {"*": null, "other": 1767143100.0},    # "*" = everything; null = no end
      "gpu_last_disabled": {"GPU-1234...": 1767139100.0},
      "history": {"KonomiTV": [{"at": 1767139200.9, "event": "restarted",
                                "cause": "persistence_off", "detail": "certain"}, ...]}
    }

``history`` is what gpuwatchd did to each container, newest last, at most
:data:`MAX_HISTORY` entries each and :data:`MAX_HISTORY_CONTAINERS`
containers: ``restarted`` (``detail``: the cause's confidence), ``recovered``
(``detail``: the verification result) and ``gave_up``. ``gpuwatchd diagnose``
reads it when no daemon answers. Version 1 documents (no ``history``) are
still read, so an upgrade keeps every budget, give-up and pause.

Keys are container *names* (budgets follow the name across recreations);
``gpu_last_disabled`` is keyed by GPU UUID. All times are wall-clock epoch
seconds, the core's time base.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from gpuwatchd.config import MAX_DURATION

STATE_VERSION = 2
#: Older versions this reader still takes (their missing keys read as empty).
READABLE_VERSIONS = frozenset({1, 2})
#: Entries of history kept per container (the newest).
MAX_HISTORY = 16
#: Containers whose history is kept (the most recently touched).
MAX_HISTORY_CONTAINERS = 256
#: What a history entry may say happened.
HISTORY_EVENTS = frozenset({"restarted", "recovered", "gave_up"})
#: How far past the wall clock a recorded time may lie (clock steps, NTP).
CLOCK_SLACK = 300.0
#: The longest pause a state file may hold, from now: the longest duration anywhere.
MAX_PAUSE_AHEAD = MAX_DURATION
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
            MappingProxyType(cap_history(history)),
        )


def cap_history(
    history: Mapping[str, tuple[HistoryEntry, ...]],
) -> dict[str, tuple[HistoryEntry, ...]]:
    """``history`` cut to the :data:`MAX_HISTORY_CONTAINERS` containers whose
    newest entry is the most recent (entries oldest first, as everywhere)."""
    if len(history) <= MAX_HISTORY_CONTAINERS:
        return dict(history)
    ranked = sorted(history.items(), key=lambda kv: kv[1][-1].at if kv[1] else -math.inf)
    return dict(ranked[-MAX_HISTORY_CONTAINERS:])


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
