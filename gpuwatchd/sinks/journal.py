"""Structured records as native journald fields.

A record (the event dict a structlog chain builds) becomes one journal entry
whose fields can be matched directly::

    journalctl -u gpuwatchd GPUWATCHD_EVENT=container_restarted
    journalctl -u gpuwatchd CONTAINER_NAME=KonomiTV -p warning

``container`` and ``container_id`` become ``CONTAINER_NAME`` and
``CONTAINER_ID`` (the 12-hex short ID), the names Docker's own journald log
driver uses, so one ``journalctl CONTAINER_NAME=...`` shows a container's lines
beside gpuwatchd's records about it. Every other key becomes
``GPUWATCHD_<KEY>``.

:func:`journal_fields` is pure; :func:`send` and :class:`JournalRenderer` write
to journald through systemd-python. systemd-python and structlog are imported
only when first used, so the module loads with neither (tests run it under a
bare system Python).
"""

from __future__ import annotations

import enum
import json
import os
import re
import uuid
from collections.abc import Mapping
from pathlib import PurePath
from typing import TYPE_CHECKING, Any

from gpuwatchd.text import one_line

if TYPE_CHECKING:
    from structlog.typing import EventDict, WrappedLogger

SYSLOG_IDENTIFIER = "gpuwatchd"

#: syslog priorities (journalctl -p) for the record levels structlog produces.
PRIORITIES: Mapping[str, int] = {
    "debug": 7,
    "info": 6,
    "notice": 5,
    "warning": 4,
    "warn": 4,
    "error": 3,
    "exception": 3,
    "critical": 2,
    "fatal": 2,
}
DEFAULT_PRIORITY = 6

#: Keys consumed into dedicated fields; never repeated as GPUWATCHD_<KEY>.
_CONSUMED = frozenset({"event", "level", "message", "message_id", "container", "container_id"})

#: Keys shown, in this order, in a MESSAGE built for a record that has none.
_SUMMARY_KEYS = (
    "container",
    "gpu_index",
    "gpu_uuid",
    "cause",
    "confidence",
    "result",
    "count",
    "dry_run",
)

_NOT_FIELD_CHAR = re.compile(r"[^A-Z0-9_]")
_HEX_ID = re.compile(r"[0-9a-f]{12,64}")
_MAX_FIELD_NAME = 64  # journald rejects longer field names


def field_name(key: str) -> str:
    """``GPUWATCHD_<KEY>``: *key* upper-cased, every character outside ``[A-Z0-9_]`` as ``_``."""
    name = "GPUWATCHD_" + _NOT_FIELD_CHAR.sub("_", key.upper())
    return name[:_MAX_FIELD_NAME]


def field_value(value: Any) -> str:
    """One field's text: bools as ``true``/``false``, enums by value, lists and dicts as JSON."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, enum.Enum):
        return field_value(value.value)
    if isinstance(value, str):
        return value
    if isinstance(value, PurePath):
        return str(value)
    if isinstance(value, Mapping | list | tuple | set | frozenset):
        if isinstance(value, set | frozenset):
            value = sorted(value, key=str)
        return json.dumps(value, ensure_ascii=False, sort_keys=True, default=field_value)
    return str(value)


def short_container_id(container_id: str) -> str:
    """Docker's 12-hex short ID for a full (or already short) hex ID; other text unchanged."""
    text = container_id.strip().lower()
    if _HEX_ID.fullmatch(text):
        return text[:12]
    return container_id


def normalize_message_id(message_id: str | uuid.UUID) -> str:
    """A MESSAGE_ID as journald writes it: 32 lower-case hex digits, no dashes.

    Text that is not a 128-bit ID is returned unchanged (journald stores it as is).
    """
    if isinstance(message_id, uuid.UUID):
        return message_id.hex
    try:
        return uuid.UUID(message_id).hex
    except ValueError:
        return message_id


def summary(record: Mapping[str, Any]) -> str:
    """A one-line human message for a record: its ``message``, else event plus key fields."""
    message = record.get("message")
    if message is not None and str(message).strip():
        return one_line(message)
    parts = [str(record.get("event") or "event")]
    for key in _SUMMARY_KEYS:
        value = record.get(key)
        if value is not None:
            parts.append(f"{key}={field_value(value)}")
    return " ".join(parts)


def journal_fields(
    record: Mapping[str, Any],
    message_ids: Mapping[str, str | uuid.UUID] | None = None,
) -> dict[str, str]:
    """Map a structured record to native journal fields.

    ``MESSAGE`` is :func:`summary`; ``PRIORITY`` comes from ``level`` (info when
    absent or unknown); ``SYSLOG_IDENTIFIER`` is always ``gpuwatchd``;
    ``GPUWATCHD_EVENT`` is ``event``; ``CONTAINER_NAME`` and ``CONTAINER_ID``
    (plus ``CONTAINER_ID_FULL`` for a full ID, as Docker writes them) come from
    ``container`` and ``container_id``. ``MESSAGE_ID`` is the record's
    ``message_id``, else ``message_ids[event]``. Every other key becomes
    ``GPUWATCHD_<KEY>`` (see :func:`field_name`, :func:`field_value`); keys whose
    value is None are left out. Pure: raises nothing for any mapping of str keys.
    """
    level = str(record.get("level") or "info").lower()
    fields: dict[str, str] = {
        "MESSAGE": summary(record),
        "PRIORITY": str(PRIORITIES.get(level, DEFAULT_PRIORITY)),
        "SYSLOG_IDENTIFIER": SYSLOG_IDENTIFIER,
    }
    event = record.get("event")
    if event is not None:
        fields["GPUWATCHD_EVENT"] = field_value(event)

    message_id = record.get("message_id")
    if message_id is None and message_ids is not None and event is not None:
        message_id = message_ids.get(field_value(event))
    if message_id is not None:
        fields["MESSAGE_ID"] = normalize_message_id(
            message_id if isinstance(message_id, uuid.UUID) else str(message_id)
        )

    container = record.get("container")
    if container is not None:
        fields["CONTAINER_NAME"] = field_value(container)
    container_id = record.get("container_id")
    if container_id is not None:
        full = field_value(container_id)
        fields["CONTAINER_ID"] = short_container_id(full)
        if len(full) == 64 and _HEX_ID.fullmatch(full.lower()):
            fields["CONTAINER_ID_FULL"] = full.lower()

    for key, value in record.items():
        if key in _CONSUMED or value is None:
            continue
        fields.setdefault(field_name(str(key)), field_value(value))
    return fields


def send(
    record: Mapping[str, Any],
    message_ids: Mapping[str, str | uuid.UUID] | None = None,
) -> None:
    """Write *record* to journald as :func:`journal_fields`.

    Raises ``ImportError`` when systemd-python is not installed and ``OSError``
    when journald cannot be reached (no /run/systemd/journal/socket).
    """
    from systemd import journal  # only the daemon under journald needs it

    fields = journal_fields(record, message_ids)
    # sendv is what journal.send() ends in, minus the CODE_FILE/CODE_LINE/CODE_FUNC
    # it would add from the caller's frame: that is always this module or
    # structlog, which tells an operator nothing.
    journal.sendv(*(f"{name}={value}" for name, value in fields.items()))


def stream_is_journal(fd: int = 2) -> bool:
    """True when *fd* is the journald stream systemd connected (``JOURNAL_STREAM``).

    That is how a process knows its stderr goes to the journal, so it can send
    native fields instead of text. False whenever that cannot be proven.
    """
    value = os.environ.get("JOURNAL_STREAM", "")
    device, _, inode = value.partition(":")
    try:
        st = os.fstat(fd)
        return st.st_dev == int(device) and st.st_ino == int(inode)
    except (OSError, ValueError):
        return False


class JournalRenderer:
    """structlog processor, meant to be last: sends the event to journald, then drops it.

    The event's ``level`` (from ``add_log_level``) decides PRIORITY; when absent,
    the logging method's name does. ``exc_info`` is rendered into an
    ``exception`` field first. Raises ``structlog.DropEvent`` after sending, so
    the wrapped logger prints nothing; a failed send (journald gone) is written
    to stderr as one JSON line instead of being lost, and never raises.
    """

    def __init__(self, message_ids: Mapping[str, str | uuid.UUID] | None = None) -> None:
        self._message_ids = message_ids

    def __call__(self, logger: WrappedLogger, method_name: str, event_dict: EventDict) -> Any:
        import structlog

        if event_dict.get("exc_info"):
            event_dict = structlog.processors.format_exc_info(logger, method_name, event_dict)
        event_dict.pop("exc_info", None)
        event_dict.setdefault("level", method_name)
        try:
            send(event_dict, self._message_ids)
        except (ImportError, OSError) as exc:
            fallback = {key: field_value(value) for key, value in event_dict.items()}
            fallback["journal_error"] = str(exc)
            os.write(2, (json.dumps(fallback, ensure_ascii=False) + "\n").encode())
        raise structlog.DropEvent
