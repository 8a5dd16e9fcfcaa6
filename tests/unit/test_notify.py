"""Notifications: the document, the command (a real subprocess), the webhook (a real
HTTP server on loopback), failures recorded and never recursing."""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from collections.abc import Iterator
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from gpuwatchd.config import NotifyConfig
from gpuwatchd.model.records import CATALOGUE, Record, make_record
from gpuwatchd.sinks.notify import NOTIFY_EVENTS, Notifier, notification_document, redact_url

RESTARTED = make_record(
    "container_restarted", container="KonomiTV", container_id="0123456789ab",
    cause="persistence_off", attempt=1, max_restarts=3, dry_run=False,
)


def write_script(tmp_path: Path, body: str) -> Path:
    """A Python script run by the current interpreter (no shell involved)."""
    path = tmp_path / "notify-me.py"
    path.write_text(f"import sys, os, time\n{body}\n")
    return path


class Collected:
    """The records the notifier hands back (its notify_failed records)."""

    def __init__(self) -> None:
        self.records: list[Record] = []

    def __call__(self, record: Record) -> None:
        self.records.append(record)

    def errors(self) -> list[str]:
        assert all(r.event == "notify_failed" for r in self.records)
        return [str(r.get("error")) for r in self.records]


# --------------------------------------------------------------------------
# The document


def test_document_carries_the_record_and_its_context() -> None:
    """Record fields plus event, level, message, timestamp, message_id and host."""
    when = datetime(2024, 5, 1, 3, 4, 5, 678000, tzinfo=timezone.utc)
    doc = notification_document(RESTARTED, host="tv-host", timestamp=when)
    assert doc["event"] == "container_restarted"
    assert doc["level"] == "warning"
    assert doc["container"] == "KonomiTV"
    assert doc["cause"] == "persistence_off"
    assert doc["attempt"] == 1
    assert doc["message"] == RESTARTED.message
    assert doc["timestamp"] == "2024-05-01T03:04:05.678+00:00"
    assert doc["message_id"] == CATALOGUE["container_restarted"].message_id
    assert doc["host"] == "tv-host"
    json.dumps(doc)  # JSON-ready as is


def test_document_tuples_become_lists_and_missing_message_id_is_null() -> None:
    record = make_record("probe_unavailable", container="c", command=("nvidia-smi", "-L"))
    doc = notification_document(record, host="h")
    assert doc["command"] == ["nvidia-smi", "-L"]
    assert doc["message_id"] is None


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("https://hooks.example.com/services/T0/B0/SECRET?x=1", "https://hooks.example.com/…"),
        ("http://127.0.0.1:8080/token", "http://127.0.0.1:8080/…"),
    ],
)
def test_webhook_urls_are_shown_without_path_or_query(url: str, shown: str) -> None:
    """Error records never carry a webhook's secret path or query."""
    assert redact_url(url) == shown


def test_the_person_facing_events() -> None:
    """Restart, recovery, give-up, skip and persistence failure notify; notify_failed never."""
    assert {"container_restarted", "container_recovered", "remediation_gave_up",
            "remediation_skipped", "gpu_persistence_set_failed"} <= NOTIFY_EVENTS
    assert "notify_failed" not in NOTIFY_EVENTS
    assert "log_pattern_matched" not in NOTIFY_EVENTS


# --------------------------------------------------------------------------
# The command


async def test_command_receives_the_record_on_stdin(tmp_path: Path) -> None:
    """The command gets the document as JSON on stdin; no failure is recorded."""
    out = tmp_path / "received.json"
    script = write_script(tmp_path, f"open({str(out)!r}, 'wb').write(sys.stdin.buffer.read())")
    sink = Collected()
    notifier = Notifier(NotifyConfig(command=(sys.executable, str(script))), sink, host="h1")
    notifier.on_record(RESTARTED)
    await notifier.drain(10)
    doc = json.loads(out.read_text())
    assert doc["event"] == "container_restarted"
    assert doc["container"] == "KonomiTV"
    assert doc["host"] == "h1"
    assert sink.records == []


async def test_other_events_and_notify_failed_are_not_sent(tmp_path: Path) -> None:
    """Only NOTIFY_EVENTS are delivered; a notify_failed never triggers another delivery."""
    out = tmp_path / "received"
    script = write_script(tmp_path, f"open({str(out)!r}, 'ab').write(b'x')")
    sink = Collected()
    notifier = Notifier(NotifyConfig(command=(sys.executable, str(script))), sink)
    notifier.on_record(make_record("log_pattern_matched", container="c", pattern="(ER-05)"))
    notifier.on_record(make_record("notify_failed", error="earlier failure"))
    assert notifier.pending == 0
    await notifier.drain(5)
    assert not out.exists()


async def test_nothing_configured_sends_nothing() -> None:
    sink = Collected()
    notifier = Notifier(NotifyConfig(), sink)
    notifier.on_record(RESTARTED)
    assert notifier.pending == 0
    assert sink.records == []


async def test_a_failing_command_is_recorded_with_its_stderr(tmp_path: Path) -> None:
    """Exit status and stderr go into one notify_failed record about the same container."""
    script = write_script(tmp_path, "sys.stderr.write('smtp refused\\n'); sys.exit(3)")
    sink = Collected()
    notifier = Notifier(NotifyConfig(command=(sys.executable, str(script))), sink)
    notifier.on_record(RESTARTED)
    await notifier.drain(10)
    [error] = sink.errors()
    assert "container_restarted" in error
    assert "exited with status 3: smtp refused" in error
    assert sink.records[0].get("container") == "KonomiTV"


async def test_a_missing_command_is_recorded(tmp_path: Path) -> None:
    sink = Collected()
    notifier = Notifier(NotifyConfig(command=(str(tmp_path / "absent"),)), sink)
    notifier.on_record(RESTARTED)
    await notifier.drain(10)
    [error] = sink.errors()
    assert "could not start" in error


async def test_a_hung_command_is_killed_at_the_timeout(tmp_path: Path) -> None:
    """A command still running at notify.timeout is killed, and that is recorded.

    On 3.10 ``asyncio.wait_for`` raises ``asyncio.TimeoutError``, not the builtin
    ``TimeoutError``: this test is what shows the timeout still gives notify_failed.
    """
    pid_file = tmp_path / "pid"
    script = write_script(
        tmp_path, f"open({str(pid_file)!r}, 'w').write(str(os.getpid())); time.sleep(60)"
    )
    sink = Collected()
    notifier = Notifier(NotifyConfig(command=(sys.executable, str(script)), timeout=1.0), sink)
    notifier.on_record(RESTARTED)
    await notifier.drain(20)
    [error] = sink.errors()
    assert "timed out after 1s" in error
    pid = int(pid_file.read_text())
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # killed and reaped


async def test_the_daemon_is_not_held_up(tmp_path: Path) -> None:
    """on_record returns before a slow command finishes (it only schedules)."""
    script = write_script(tmp_path, "time.sleep(3)")
    notifier = Notifier(NotifyConfig(command=(sys.executable, str(script))), Collected())
    notifier.on_record(RESTARTED)
    assert notifier.pending == 1  # still running after on_record returned
    await notifier.drain(20)
    assert notifier.pending == 0


async def test_config_changes_take_effect_for_the_next_record(tmp_path: Path) -> None:
    """A config source that is a function is read at each record (reloads follow)."""
    out = tmp_path / "received"
    script = write_script(tmp_path, f"open({str(out)!r}, 'ab').write(b'x')")
    current = [NotifyConfig()]
    notifier = Notifier(lambda: current[0], Collected())
    notifier.on_record(RESTARTED)
    current[0] = NotifyConfig(command=(sys.executable, str(script)))
    notifier.on_record(RESTARTED)
    await notifier.drain(10)
    assert out.read_bytes() == b"x"


# --------------------------------------------------------------------------
# The webhook


class _Receiver(BaseHTTPRequestHandler):
    status = 200
    bodies: list[tuple[str, dict[str, str], bytes]]

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length", "0"))
        self.bodies.append((self.path, dict(self.headers), self.rfile.read(length)))
        self.send_response(self.status)
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def receiver() -> Iterator[tuple[str, type[_Receiver]]]:
    """An HTTP server on loopback that records every POST; yields (base URL, handler)."""
    handler = type("Receiver", (_Receiver,), {"bodies": [], "status": 200})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", handler
    finally:
        server.shutdown()
        server.server_close()


async def test_webhook_receives_the_same_json(receiver: tuple[str, type[_Receiver]]) -> None:
    base, handler = receiver
    sink = Collected()
    notifier = Notifier(NotifyConfig(webhook=f"{base}/hook/SECRET"), sink, host="h2")
    notifier.on_record(RESTARTED)
    await notifier.drain(10)
    assert sink.records == []
    [(path, headers, body)] = handler.bodies
    assert path == "/hook/SECRET"
    assert headers["Content-Type"].startswith("application/json")
    doc = json.loads(body)
    assert doc == {**doc, "event": "container_restarted", "container": "KonomiTV", "host": "h2"}


async def test_webhook_error_status_is_recorded_without_the_secret(
    receiver: tuple[str, type[_Receiver]],
) -> None:
    base, handler = receiver
    handler.status = 500
    sink = Collected()
    notifier = Notifier(NotifyConfig(webhook=f"{base}/hook/SECRET"), sink)
    notifier.on_record(RESTARTED)
    await notifier.drain(10)
    [error] = sink.errors()
    assert "HTTP 500" in error
    assert "SECRET" not in error


async def test_webhook_nobody_listening_is_recorded() -> None:
    """A refused connection is one notify_failed record, quickly, never an exception."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, not listening: connections are refused
        sink = Collected()
        notifier = Notifier(NotifyConfig(webhook=f"http://127.0.0.1:{port}/x", timeout=2), sink)
        started = time.monotonic()
        notifier.on_record(RESTARTED)
        await notifier.drain(10)
    [error] = sink.errors()
    assert "failed" in error
    assert time.monotonic() - started < 10


async def test_an_unexpected_error_in_a_delivery_is_recorded(tmp_path: Path) -> None:
    """A delivery that fails in a way no sender anticipates (here the OS refuses an
    argument with a NUL byte, a ValueError) still ends in notify_failed, never in an
    exception lost inside a task."""
    sink = Collected()
    notifier = Notifier(NotifyConfig(command=(sys.executable, "-c", "pass\0")), sink)
    notifier.on_record(RESTARTED)
    await notifier.drain(10)
    [error] = sink.errors()
    assert "container_restarted" in error
    assert "ValueError" in error or "null" in error
    assert notifier.pending == 0
