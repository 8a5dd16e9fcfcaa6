"""Faults survived by notifications: hostile webhooks (real loopback servers that
answer with a bad status line, 101 headers, a redirect, or one byte at a time),
commands that flood stderr, ignore SIGTERM or leave children behind, storms larger
than the pool, and shutdown with all of that in flight.

Each test drives the real :class:`Notifier` with real processes and real sockets.
"""

from __future__ import annotations

import asyncio
import gc
import sys
import threading
import time
import tracemalloc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gpuwatchd.config import NotifyConfig
from gpuwatchd.model.records import Record, make_record
from gpuwatchd.sinks.notify import MAX_CONCURRENT, MAX_PENDING, Notifier
from tests.faults.hostile import HostileServer, alive, answer, free_port, pids_in, trickle

pytestmark = pytest.mark.timeout(120)

RESTARTED = make_record(
    "container_restarted", container="KonomiTV", container_id="0123456789ab",
    cause="persistence_off", attempt=1, max_restarts=3, dry_run=False,
)

#: Writes its PID into argv[1], starts a grandchild that does the same, ignores
#: SIGTERM, and never finishes on its own.
STUBBORN = """
import os, signal, subprocess, sys, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
subprocess.Popen([sys.executable, "-c",
    "import os, sys, time\\n"
    "open(os.path.join(sys.argv[1], str(os.getpid())), 'w').write(str(os.getpid()))\\n"
    "time.sleep(300)", sys.argv[1]])
open(os.path.join(sys.argv[1], str(os.getpid())), "w").write(str(os.getpid()))
sys.stdin.buffer.read()
time.sleep(300)
"""

#: Starts a grandchild that writes its PID into argv[1] and lives on, detached
#: from the pipes; exits 0 once the grandchild is running.
LEAVES_A_CHILD = """
import os, subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c",
    "import os, sys, time\\n"
    "open(os.path.join(sys.argv[1], str(os.getpid())), 'w').write(str(os.getpid()))\\n"
    "time.sleep(300)", sys.argv[1]],
    stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
while not os.path.exists(os.path.join(sys.argv[1], str(child.pid))):
    time.sleep(0.05)
"""


class Collected:
    """The records the notifier hands back (its notify_failed records)."""

    def __init__(self) -> None:
        self.records: list[Record] = []

    def __call__(self, record: Record) -> None:
        self.records.append(record)

    def errors(self) -> list[str]:
        assert all(r.event == "notify_failed" for r in self.records), self.records
        return [str(r.get("error")) for r in self.records]


def catch_loop_errors() -> list[dict[str, Any]]:
    seen: list[dict[str, Any]] = []
    asyncio.get_running_loop().set_exception_handler(lambda _loop, ctx: seen.append(ctx))
    return seen


@pytest.fixture
def server_factory() -> Iterator[Any]:
    made: list[HostileServer] = []

    def make(respond: Any) -> HostileServer:
        server = HostileServer(respond)
        made.append(server)
        return server

    yield make
    for server in made:
        server.close()


def script(tmp_path: Path, body: str, name: str = "cmd.py") -> Path:
    path = tmp_path / name
    path.write_text(body)
    return path


async def wait_until(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


async def deliver_one(config: NotifyConfig, grace: float = 30.0) -> Collected:
    sink = Collected()
    notifier = Notifier(config, sink, host="h")
    notifier.on_record(RESTARTED)
    await notifier.drain(grace)
    assert notifier.pending == 0
    return sink


# --------------------------------------------------------------------------
# Hostile webhooks


@pytest.mark.parametrize(
    ("raw", "why"),
    [
        (b"NOT-HTTP garbage\r\n\r\n", "bad status line"),
        (b"HTTP/1.1 200 OK\r\n" + b"".join(b"X-H%d: v\r\n" % i for i in range(101))
         + b"Content-Length: 0\r\n\r\n", "101 headers"),
    ],
)
async def test_a_malformed_answer_is_notify_failed_without_a_traceback(
    server_factory: Any, raw: bytes, why: str
) -> None:
    server = server_factory(answer(raw))
    errors = catch_loop_errors()
    sink = await deliver_one(NotifyConfig(webhook=f"{server.url}/hook/SECRET", timeout=5))
    gc.collect()  # an exception nobody retrieved is reported when its task is collected
    await asyncio.sleep(0)
    [error] = sink.errors()
    assert error.startswith("container_restarted: webhook http://127.0.0.1:"), why
    assert "SECRET" not in error
    assert errors == [], why


@pytest.mark.parametrize("target", ["ftp", "http"])
async def test_a_redirect_is_not_followed_and_is_a_failure(
    server_factory: Any, target: str
) -> None:
    """A 3xx is not "delivered", whatever it points to, and the target is never contacted."""
    elsewhere = server_factory(answer(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"))
    location = f"{target}://127.0.0.1:{elsewhere.port}/x".encode()
    server = server_factory(answer(
        b"HTTP/1.1 302 Found\r\nLocation: " + location + b"\r\nContent-Length: 0\r\n\r\n"
    ))
    sink = await deliver_one(NotifyConfig(webhook=f"{server.url}/hook", timeout=5))
    [error] = sink.errors()
    assert "HTTP 302" in error
    assert server.connections == 1
    assert elsewhere.connections == 0


async def test_a_trickling_webhook_ends_at_the_deadline_and_leaks_nothing(
    server_factory: Any,
) -> None:
    """One byte every 0.5 s never trips a per-read timeout; the total deadline ends it,
    the connection is closed, and no thread is left behind."""
    server = server_factory(trickle())
    threads_before = threading.active_count()
    sink = await deliver_one(NotifyConfig(webhook=f"{server.url}/hook", timeout=1.5))
    [error] = sink.errors()
    assert "timed out after 1.5s" in error
    await wait_until(server.client_gone.is_set, 10, "the webhook connection to be closed")
    await wait_until(lambda: threading.active_count() <= threads_before + 1, 10,
                     "no notification thread left")  # +1: the server's own handler thread


async def test_a_webhook_nobody_answers_is_notify_failed() -> None:
    sink = await deliver_one(NotifyConfig(webhook=f"http://127.0.0.1:{free_port()}/", timeout=5))
    [error] = sink.errors()
    assert "failed" in error


# --------------------------------------------------------------------------
# Hostile commands


async def test_a_flood_on_stderr_is_read_only_up_to_a_cap(tmp_path: Path) -> None:
    """64 MiB on stderr: the delivery keeps a short excerpt, never the flood."""
    flood = script(tmp_path, (
        "import sys\n"
        "sys.stderr.write('smtp refused\\n')\n"
        "block = b'e' * (1 << 20)\n"
        "for _ in range(64): sys.stderr.buffer.write(block)\n"
        "sys.exit(3)\n"
    ))
    tracemalloc.start()
    try:
        sink = await deliver_one(NotifyConfig(command=(sys.executable, str(flood)), timeout=60))
        _now, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    [error] = sink.errors()
    assert "exited with status 3: smtp refused" in error
    assert len(error) < 1000
    print(f"peak traced memory while reading 64 MiB of stderr: {peak / 2**20:.1f} MiB")
    assert peak < 8 * 2**20


async def test_a_command_that_ignores_sigterm_is_killed_with_its_children(
    tmp_path: Path,
) -> None:
    pids = tmp_path / "pids"
    pids.mkdir()
    cmd = script(tmp_path, STUBBORN)
    sink = await deliver_one(NotifyConfig(command=(sys.executable, str(cmd), str(pids)),
                                          timeout=2))
    [error] = sink.errors()
    assert "timed out after 2s" in error
    assert len(pids_in(pids)) == 2
    await wait_until(lambda: not any(alive(p) for p in pids_in(pids)), 10,
                     "the command and its child to be gone")


async def test_a_command_leaves_no_process_behind(tmp_path: Path) -> None:
    """A command that exits at once but left a child running: the child ends with it."""
    pids = tmp_path / "pids"
    pids.mkdir()
    cmd = script(tmp_path, LEAVES_A_CHILD)
    sink = await deliver_one(NotifyConfig(command=(sys.executable, str(cmd), str(pids))))
    assert sink.records == []
    [grandchild] = pids_in(pids)
    await wait_until(lambda: not alive(grandchild), 10, "the left-behind child to be gone")


# --------------------------------------------------------------------------
# Storms: the pool


async def test_at_most_max_concurrent_deliveries_run_at_once(tmp_path: Path) -> None:
    log = tmp_path / "log"
    cmd = script(tmp_path, (
        "import os, sys, time\n"
        f"fd = os.open({str(log)!r}, os.O_WRONLY | os.O_APPEND | os.O_CREAT)\n"
        "os.write(fd, b'+'); time.sleep(0.4); os.write(fd, b'-')\n"
    ))
    sink = Collected()
    notifier = Notifier(NotifyConfig(command=(sys.executable, str(cmd))), sink)
    for _ in range(3 * MAX_CONCURRENT):
        notifier.on_record(RESTARTED)
    await notifier.drain(60)
    running = most = 0
    for mark in log.read_text():
        running += 1 if mark == "+" else -1
        most = max(most, running)
    assert log.read_text().count("+") == 3 * MAX_CONCURRENT
    assert 2 <= most <= MAX_CONCURRENT
    assert sink.records == []


async def test_beyond_the_pending_cap_each_notification_is_recorded_as_dropped(
    tmp_path: Path,
) -> None:
    cmd = script(tmp_path, "import time; time.sleep(0.5)\n")
    sink = Collected()
    notifier = Notifier(NotifyConfig(command=(sys.executable, str(cmd))), sink)
    for _ in range(MAX_PENDING + 3):
        notifier.on_record(RESTARTED)
    dropped = sink.errors()
    assert len(dropped) == 3
    assert all("dropped" in e and f"{MAX_PENDING} notifications pending" in e for e in dropped)
    await notifier.close(grace=0.1)
    assert notifier.pending == 0


# --------------------------------------------------------------------------
# Shutdown


async def test_close_ends_a_storm_within_its_grace_and_records_what_was_not_sent(
    tmp_path: Path, server_factory: Any
) -> None:
    """Stubborn commands and a trickling webhook in flight, more waiting: close()
    ends them all promptly, kills every process group, closes every connection, and
    records each delivery that did not happen."""
    pids = tmp_path / "pids"
    pids.mkdir()
    cmd = script(tmp_path, STUBBORN)
    server = server_factory(trickle())
    threads_before = threading.active_count()
    config = NotifyConfig(command=(sys.executable, str(cmd), str(pids)),
                          webhook=f"{server.url}/hook", timeout=60)
    sink = Collected()
    notifier = Notifier(config, sink)
    storm = 10
    for _ in range(storm):
        notifier.on_record(RESTARTED)
    await wait_until(lambda: len(pids_in(pids)) >= 2 and server.connections >= 1, 30,
                     "deliveries under way")
    await asyncio.wait_for(notifier.close(grace=1.0), 30)
    assert notifier.pending == 0
    errors = sink.errors()
    assert len(errors) == 2 * storm  # a command and a webhook for each record
    assert all("gpuwatchd is stopping" in e for e in errors), errors
    await wait_until(lambda: not any(alive(p) for p in pids_in(pids)), 10,
                     "every command and child to be gone")
    await wait_until(server.client_gone.is_set, 10, "the webhook connection to be closed")
    await wait_until(lambda: threading.active_count() <= threads_before + server.connections,
                     10, "no notification thread left")

    # After close nothing is sent, and that is recorded too.
    notifier.on_record(RESTARTED)
    assert notifier.pending == 0
    assert "gpuwatchd is stopping" in sink.errors()[-1]
    assert len(sink.records) == 2 * storm + 1
