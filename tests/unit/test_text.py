"""The shared text helpers: one line for errors and texts, optional text, timestamps."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from gpuwatchd.text import one_line, record_timestamp, text_or_none


class Explained(Exception):
    explanation = "no such\n container"


def test_one_line_collapses_whitespace_and_prefers_dockers_explanation() -> None:
    assert one_line("  a\n\tb  c ") == "a b c"
    assert one_line(Explained("500 Server Error")) == "no such container"
    assert one_line(ValueError("x\ny")) == "x y"


def test_one_line_names_an_empty_error_by_its_type_but_keeps_an_empty_text() -> None:
    assert one_line(TimeoutError()) == "TimeoutError"
    assert one_line("") == ""


def test_text_or_none() -> None:
    assert text_or_none(None) is None and text_or_none("") is None
    assert text_or_none("systemd") == "systemd" and text_or_none(2) == "2"


def test_record_timestamp_is_utc_to_the_millisecond() -> None:
    when = datetime(2026, 1, 2, 12, 0, 0, 123456, tzinfo=timezone(timedelta(hours=9)))
    assert record_timestamp(when) == "2026-01-02T03:00:00.123+00:00"
