"""Where records go: structlog configured for people, for machines, or for journald.

``console`` is for a person at a terminal; ``json`` writes one JSON object per
line to stderr; ``journal`` sends native journal fields (see
:mod:`gpuwatchd.sinks.journal`). Under systemd the journal is chosen by itself when
stderr is the journal stream (``JOURNAL_STREAM``).
"""

from __future__ import annotations

import logging
import sys
from datetime import datetime, timezone
from typing import Any, Literal

import structlog
from structlog.typing import EventDict, Processor, WrappedLogger

from gpuwatchd.model.records import CATALOGUE, Record
from gpuwatchd.sinks.journal import JournalRenderer, stream_is_journal
from gpuwatchd.text import record_timestamp

LogFormat = Literal["console", "json", "journal"]
LOG_FORMATS: tuple[LogFormat, ...] = ("console", "json", "journal")

_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
    "critical": logging.CRITICAL,
}


def _timestamp(_logger: WrappedLogger, _method: str, event_dict: EventDict) -> EventDict:
    # ISO 8601 with milliseconds, always UTC: the catalogue promises this shape.
    event_dict["timestamp"] = record_timestamp(datetime.now(timezone.utc))
    return event_dict


def resolve_format(requested: LogFormat | None) -> LogFormat:
    """The format to use: the requested one, else journal under journald, else console."""
    if requested is not None:
        return requested
    return "journal" if stream_is_journal(2) else "console"


def configure_logging(fmt: LogFormat | None = None, level: str = "info") -> LogFormat:
    """Configure structlog for the whole process; returns the format chosen."""
    chosen = resolve_format(fmt)
    message_ids = {name: spec.message_id for name, spec in CATALOGUE.items() if spec.message_id}
    processors: list[Processor] = [structlog.processors.add_log_level, _timestamp]
    if chosen == "journal":
        processors.append(JournalRenderer(message_ids))
    elif chosen == "json":
        processors += [
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(ensure_ascii=False),
        ]
    else:
        processors.append(structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty()))
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS[level]),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )
    return chosen


def write_record(record: Record, logger: Any = None) -> None:
    """Write one catalogued record at its level, with its message and MESSAGE_ID."""
    log = logger if logger is not None else structlog.get_logger("gpuwatchd")
    fields: dict[str, Any] = dict(record.fields)
    fields["message"] = record.message
    if record.message_id:
        fields["message_id"] = record.message_id
    log.log(_LEVELS[record.level.value], record.event, **fields)
