"""Text helpers every layer shares (pure: no I/O, standard library only)."""

from __future__ import annotations

from datetime import datetime, timezone


def one_line(value: object) -> str:
    """An error or a text as one line: whitespace runs collapsed to one space.

    An exception with Docker's ``explanation`` gives that explanation; an
    exception with no text at all gives its type name.
    """
    text = str(getattr(value, "explanation", None) or value)
    flat = " ".join(text.split())
    if not flat and isinstance(value, BaseException):
        return type(value).__name__
    return flat


def text_or_none(value: object) -> str | None:
    """``value`` as text; None for None and for the empty string."""
    return None if value in (None, "") else str(value)


def record_timestamp(when: datetime) -> str:
    """``when`` as a record's timestamp: ISO 8601 in UTC, to the millisecond."""
    return when.astimezone(timezone.utc).isoformat(timespec="milliseconds")


__all__ = ["one_line", "record_timestamp", "text_or_none"]
