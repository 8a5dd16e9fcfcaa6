"""Everything gpuwatchd asks of an engine, on Docker and on Podman's compat API.

The daemon's own gateway (:class:`gpuwatchd.adapters.docker_engine.DockerGateway`) against
each real engine: container events, inspect times, exec probes and their exit
codes, followed logs, restart.  The private Podman service runs in
Asia/Tokyo, so its times carry a +09:00 offset.
"""

from __future__ import annotations

import gc
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from docker.models.containers import Container

from gpuwatchd.adapters.docker_engine import WATCHED_EVENTS, DockerGateway
from gpuwatchd.core.docker_inspect import parse_docker_time
from tests.bench import ONAIR_LINE, wait_for
from tests.bench.engines import Engine, on_every_engine
from tests.live.conftest import healthy

# The docker SDK can leave the socket of a finished exec or a closed stream to
# the garbage collector; the daemon does not care, but here the gateway runs in
# the test process, where pytest turns that ResourceWarning into an error.  The
# garbage is collected at each test's teardown so it cannot fail a later test.
pytestmark = [
    pytest.mark.docker, pytest.mark.slow, on_every_engine,
    pytest.mark.filterwarnings("ignore::ResourceWarning"),
    pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning"),
]


@pytest.fixture
def gateway(engine: Engine) -> Iterator[DockerGateway]:
    gw = DockerGateway(engine.host, timeout=30)
    try:
        yield gw
    finally:
        gw.close()
        gc.collect()


class Events:
    """The gateway's event stream, read on a thread into a list."""

    def __init__(self, gateway: DockerGateway) -> None:
        self.seen: list[dict[str, Any]] = []
        self._stream = gateway.event_stream()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        for event in self._stream:
            self.seen.append(event)

    def actions(self, container_id: str) -> list[str]:
        return [str(e.get("Action") or e.get("status")) for e in self.seen
                if (e.get("Actor") or {}).get("ID", e.get("id")) == container_id]

    def close(self) -> None:
        self._stream.close()
        self._thread.join(5)


def test_event_stream_delivers_start_die_and_destroy_and_nothing_else(
    gateway: DockerGateway, make_container: Callable[..., Container],
) -> None:
    """The events the watch set needs arrive; exec events (our probes) do not."""
    events = Events(gateway)
    try:
        time.sleep(0.5)  # the stream is open before the container exists
        box = make_container("nosmi", gpu=False)
        wait_for(lambda: "start" in events.actions(box.id), 20, message="start event")
        box.exec_run(["true"])
        box.stop(timeout=1)
        wait_for(lambda: "die" in events.actions(box.id), 20,
                 message=lambda: f"die event; seen {events.actions(box.id)}")
        box.remove()
        wait_for(lambda: "destroy" in events.actions(box.id), 20,
                 message=lambda: f"destroy event; seen {events.actions(box.id)}")
    finally:
        events.close()
    actions = events.actions(box.id)
    assert set(actions) <= set(WATCHED_EVENTS), actions


def test_ping_names_the_engine_and_its_version(engine: Engine, gateway: DockerGateway) -> None:
    """Docker or Podman, with the version its own client reports."""
    found = gateway.ping()
    if engine.name == "podman":
        assert found.name == "Podman"
        assert found.version == engine.podman("version", "--format", "{{.Server.Version}}").strip()
    else:
        assert found.name == "Docker"
        assert found.version == engine.client.version()["Version"]


def test_inspect_start_time_is_the_real_instant(
    gateway: DockerGateway, make_container: Callable[..., Container],
) -> None:
    """StartedAt, whatever offset the engine writes it with, is now within seconds."""
    before = time.time()
    box = make_container("nosmi", gpu=False)
    info = gateway.inspect(box.id)
    assert info is not None
    assert info.status == "running" and info.pid > 0
    assert before - 5 <= info.started_at <= time.time() + 5, (
        box.attrs["State"]["StartedAt"], before)


def test_exec_probe_reports_exit_codes_output_and_timeouts(
    gateway: DockerGateway, make_container: Callable[..., Container],
) -> None:
    box = make_container("nosmi", gpu=False)
    ok = gateway.exec_probe(box.id, ("sh", "-c", "echo hello"), timeout=20)
    assert (ok.exit_code, ok.output.strip(), ok.timed_out) == (0, b"hello", False)
    failed = gateway.exec_probe(box.id, ("sh", "-c", "echo bad >&2; exit 3"), timeout=20)
    assert failed.exit_code == 3 and b"bad" in failed.output
    hung = gateway.exec_probe(box.id, ("sleep", "60"), timeout=1)
    assert hung.timed_out and hung.exit_code is None
    missing = gateway.exec_probe(box.id, ("/no/such/binary",), timeout=20)
    assert missing.exit_code not in (None, 0) or missing.exec_error


def test_recent_and_followed_logs_carry_the_workload_lines(
    gateway: DockerGateway, make_container: Callable[..., Container],
) -> None:
    box = make_container("konomi", environment={"WORKLOAD_INTERVAL": "0.3"})
    healthy(box)
    raw = gateway.recent_logs(box.id, since=time.time() - 60, tail=20)
    lines = raw.decode().splitlines()
    assert any(ONAIR_LINE in line for line in lines), lines[-3:]
    stamp = lines[-1].split(" ", 1)[0]
    assert abs(parse_docker_time(stamp) - time.time()) < 30, stamp

    stream = gateway.log_stream(box.id, since=time.time())
    got: list[bytes] = []

    def read() -> None:
        for chunk in stream:
            got.append(chunk)
            if ONAIR_LINE.encode() in b"".join(got):
                return

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(20)
    stream.close()
    assert ONAIR_LINE.encode() in b"".join(got)


def test_restart_starts_the_container_again(
    gateway: DockerGateway, make_container: Callable[..., Container],
) -> None:
    box = make_container("nosmi", gpu=False)
    first = gateway.inspect(box.id)
    assert first is not None
    time.sleep(1.1)
    gateway.restart(box.id, stop_timeout=1)
    again = gateway.inspect(box.id)
    assert again is not None
    assert again.status == "running"
    assert again.started_at > first.started_at
    assert again.pid != first.pid
