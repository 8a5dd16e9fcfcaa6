"""Notifications through Apprise (``[notify] urls``), end to end on loopback.

The real :class:`Notifier` sends real records through the real Apprise, in the
real delivery child process, to a loopback HTTP server these tests start; the
server sees what ntfy or a JSON receiver would. Failures (nobody listening, a
server that never answers, one that refuses) must be ``notify_failed`` within
the deadline, shutdown must end them, and no part of a URL, token included, may
show up in a record or on stderr.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest

from gpuwatchd.config import NotifyConfig
from gpuwatchd.model.records import Record, make_record
from gpuwatchd.sinks.notify import Notifier
from gpuwatchd.sinks.notify_message import human_message
from tests.faults.hostile import HostileServer, answer, free_port
from tests.faults.test_notify_bounds import Collected, wait_until

pytestmark = pytest.mark.timeout(120)

RESTARTED = make_record(
    "container_restarted", container="KonomiTV", container_id="0123456789ab",
    cause="persistence_off", confidence="certain", attempt=1, max_restarts=3, matches=2,
    dry_run=False,
)
GAVE_UP = make_record(
    "remediation_gave_up", container="KonomiTV", container_id="0123456789ab",
    cause="device_access_lost", count=3, window=3600.0, until="2026-12-06T17:00:00Z",
    dry_run=False,
)
OK = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"
#: A token-like secret put in every URL; it must never leave the child process.
TOKEN = "tk_Zq8X3vN7pL2mR9wQ4sT6"


def never_answers(conn: Any) -> None:
    """Read the request, then hold the connection without a byte of answer."""
    time.sleep(60)


@pytest.fixture
def servers() -> Iterator[Any]:
    made: list[HostileServer] = []

    def make(respond: Any = None) -> HostileServer:
        server = HostileServer(respond or answer(OK))
        made.append(server)
        return server

    yield make
    for server in made:
        server.close()


def body_of(request: bytes) -> Any:
    return json.loads(request.partition(b"\r\n\r\n")[2])


async def send(config: NotifyConfig, *records: Record, grace: float = 60.0) -> Collected:
    sink = Collected()
    notifier = Notifier(config, sink, host="h")
    for record in records:
        notifier.on_record(record)
    await notifier.drain(grace)
    assert notifier.pending == 0
    return sink


def assert_no_secret(text: str, port: int) -> None:
    assert TOKEN not in text
    assert "127.0.0.1" not in text and f":{port}" not in text  # not even the host and port


# --------------------------------------------------------------------------
# Delivered


@pytest.mark.parametrize("record", [RESTARTED, GAVE_UP], ids=lambda r: r.event)
async def test_a_json_url_receives_the_title_and_body(servers: Any, record: Record) -> None:
    server = servers()
    sink = await send(NotifyConfig(urls=(f"json://127.0.0.1:{server.port}/hook",)), record)
    assert sink.records == []
    [request] = server.requests
    assert request.startswith(b"POST /hook ")
    title, body = human_message(record)
    document = body_of(request)
    assert (document["title"], document["message"]) == (title, body)
    assert title.startswith("gpuwatchd: ")
    assert "KonomiTV" in title and str(record.get("cause")) in title


@pytest.mark.parametrize("record", [RESTARTED, GAVE_UP], ids=lambda r: r.event)
async def test_an_ntfy_url_receives_the_title_and_body(servers: Any, record: Record) -> None:
    server = servers()
    sink = await send(NotifyConfig(urls=(f"ntfy://127.0.0.1:{server.port}/gpu-alerts",)), record)
    assert sink.records == []
    [request] = server.requests
    title, body = human_message(record)
    document = body_of(request)
    assert document["topic"] == "gpu-alerts"
    assert (document["title"], document["message"]) == (title, body)


async def test_each_url_is_its_own_delivery(servers: Any) -> None:
    """A URL that fails does not stop the others; the failure names only its place."""
    good = servers()
    config = NotifyConfig(urls=(f"json://127.0.0.1:{free_port()}/{TOKEN}",
                                f"ntfy://127.0.0.1:{good.port}/gpu-alerts"), timeout=20)
    sink = await send(config, RESTARTED)
    assert len(good.requests) == 1
    [error] = sink.errors()
    assert error.startswith("container_restarted: apprise urls[0] (json://) ")


# --------------------------------------------------------------------------
# Failures: bounded, and nothing of the URL shown


async def test_an_unreachable_url_is_notify_failed() -> None:
    port = free_port()
    sink = await send(NotifyConfig(urls=(f"json://user:{TOKEN}@127.0.0.1:{port}/{TOKEN}",),
                                   timeout=20), RESTARTED)
    [record] = sink.records
    assert record.event == "notify_failed"
    assert record.get("container") == "KonomiTV"
    error = str(record.get("error"))
    assert "urls[0] (json://) not delivered" in error
    assert_no_secret(json.dumps(dict(record.fields)), port)


async def test_a_server_that_never_answers_is_ended_at_the_deadline(servers: Any) -> None:
    server = servers(never_answers)
    sink = await send(NotifyConfig(urls=(f"ntfy://127.0.0.1:{server.port}/{TOKEN}",),
                                   timeout=1.5), RESTARTED)
    [error] = sink.errors()
    assert error == "container_restarted: apprise urls[0] (ntfy://) timed out after 1.5s " \
        "and was killed"
    await wait_until(lambda: server.connections >= 1, 5, "the connection to have been made")


async def test_a_url_apprise_does_not_know_is_notify_failed() -> None:
    sink = await send(NotifyConfig(urls=(f"nosuchservice://{TOKEN}@example.org/",)), RESTARTED)
    [error] = sink.errors()
    assert "urls[0] (nosuchservice://) is not a URL Apprise understands" in error
    assert TOKEN not in error


async def test_close_ends_hanging_deliveries_and_records_them(servers: Any) -> None:
    server = servers(never_answers)
    sink = Collected()
    notifier = Notifier(NotifyConfig(urls=(f"json://127.0.0.1:{server.port}/{TOKEN}",),
                                     timeout=60), sink)
    for _ in range(6):
        notifier.on_record(RESTARTED)
    await wait_until(lambda: server.connections >= 4, 30, "deliveries under way")
    await asyncio.wait_for(notifier.close(grace=1.0), 30)
    assert notifier.pending == 0
    errors = sink.errors()
    assert len(errors) == 6
    assert all("not delivered: gpuwatchd is stopping" in e for e in errors), errors
    assert all(TOKEN not in e for e in errors)


def test_apprise_logs_nothing_of_the_url_on_stderr(servers: Any) -> None:
    """The delivery child itself: a refused notification (HTTP 500) gives one line on
    stderr, and Apprise's own log output, which would quote the host, is silenced."""
    server = servers(answer(b"HTTP/1.1 500 Oops\r\nContent-Length: 0\r\n\r\n"))
    url = f"json://admin:{TOKEN}@127.0.0.1:{server.port}/{TOKEN}?token={TOKEN}"
    job = {"kind": "apprise", "url": url, "title": "t", "body": "b"}
    done = subprocess.run([sys.executable, "-m", "gpuwatchd.sinks.deliver"],
                          input=json.dumps(job).encode(), capture_output=True, timeout=60)
    assert done.returncode == 1
    assert len(server.requests) == 1
    stderr = done.stderr.decode()
    assert stderr.count("\n") == 1, stderr
    assert "not delivered" in stderr
    assert_no_secret(stderr + done.stdout.decode(), server.port)
