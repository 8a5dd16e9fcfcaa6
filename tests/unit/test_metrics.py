"""Metrics: counters from records, gauges from the status snapshot, names by convention,
served over HTTP on loopback."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import socket
import threading
import time
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from gpuwatchd import __version__
from gpuwatchd.core.views import ContainerView, CoreView, DaemonView, GpuView
from gpuwatchd.model.events import ContainerState
from gpuwatchd.model.records import make_record
from gpuwatchd.model.vocabulary import Cause, ProbeResult
from gpuwatchd.sinks import metrics as metrics_module
from gpuwatchd.sinks.metrics import PROBE_RESULTS, Metrics, parse_listen

NOW = 1_700_000_000.0


def status_view(**changes: Any) -> DaemonView:
    """The daemon's view as DaemonStatus.view builds it, around a real CoreView."""
    view = CoreView(
        dry_run=False,
        gpus=(GpuView(0, "GPU-aaaa", "NVIDIA GeForce GTX 1080 Ti", True, NOW - 3, None),
              GpuView(1, "GPU-bbbb", "NVIDIA GeForce GTX 1080 Ti", False, NOW - 3, NOW - 60)),
        containers=(
            ContainerView("KonomiTV", "0123456789abcdef", ContainerState.RUNNING, False,
                          ProbeResult.OK, NOW - 5, 1, None, None, False, None, None, None),
            ContainerView("broken", "fedcba9876543210", ContainerState.RUNNING, False,
                          ProbeResult.NVML_UNKNOWN_ERROR, NOW - 7, 3, NOW - 100, NOW + 3500,
                          True, None, None, None),
        ),
        nvml_unavailable=None,
        docker_unavailable=None,
        paused_all=False,
        paused_all_until=None,
    )
    fields: dict[str, Any] = {"uptime": 120.0, "dry_run": False, "docker_available": True,
                              "nvml_available": True, "core": view}
    fields.update(changes)
    return DaemonView(**fields)


def samples(metrics: Metrics) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample exposed, by (name, labels)."""
    text = generate_latest(metrics.registry).decode()
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def value(metrics: Metrics, name: str, **labels: str) -> float | None:
    return samples(metrics).get((name, frozenset(labels.items())))


def test_counters_follow_records() -> None:
    """Each record kind increments its counter; a folded record counts `count` times."""
    m = Metrics()
    m.on_record(make_record("log_pattern_matched", container="K", pattern="(ER-05)", count=7))
    m.on_record(make_record("container_restarted", container="K", cause=Cause.PERSISTENCE_OFF,
                            attempt=1, max_restarts=3))
    m.on_record(make_record("container_recovered", container="K", result="ok", elapsed=4.2))
    m.on_record(make_record("remediation_failed", container="K", result="nvml_unknown_error"))
    m.on_record(make_record("remediation_skipped", container="K", reason="paused"))
    m.on_record(make_record("remediation_gave_up", container="K", count=3, window=3600.0))
    m.on_record(make_record("gpu_persistence_enabled", gpu_index=0, gpu_uuid="GPU-a"))
    m.on_record(make_record("gpu_persistence_set_failed", gpu_index=1, error="no permission"))
    m.on_record(make_record("notify_failed", error="x"))
    m.on_record(make_record("daemon_started", version="1", dry_run=False))  # not counted
    assert value(m, "gpuwatchd_log_matches_total", container="K") == 7
    assert value(m, "gpuwatchd_restarts_total", container="K", cause="persistence_off") == 1
    assert value(m, "gpuwatchd_recoveries_total", container="K", result="ok") == 1
    assert value(m, "gpuwatchd_remediation_failures_total", container="K") == 1
    assert value(m, "gpuwatchd_remediation_skipped_total", container="K", reason="paused") == 1
    # A give-up's count is the restarts that failed: still one give-up.
    assert value(m, "gpuwatchd_remediation_give_ups_total", container="K") == 1
    assert value(m, "gpuwatchd_persistence_enabled_total", gpu="0") == 1
    assert value(m, "gpuwatchd_persistence_set_failures_total", gpu="1") == 1
    assert value(m, "gpuwatchd_notify_failures_total") == 1


def test_gauges_come_from_the_stored_snapshot() -> None:
    """GPU persistence, per-container probe result (enum style), timestamps, budgets."""
    doc = status_view()
    m = Metrics(lambda: doc)
    m.refresh()
    assert value(m, "gpuwatchd_up") == 1
    assert value(m, "gpuwatchd_docker_available") == 1
    assert value(m, "gpuwatchd_nvml_available") == 1
    assert value(m, "gpuwatchd_dry_run") == 0
    assert value(m, "gpuwatchd_build_info", version=__version__,
                 python=__import__("platform").python_version()) == 1
    name = "NVIDIA GeForce GTX 1080 Ti"
    assert value(m, "gpuwatchd_gpu_persistence_mode", gpu="0", uuid="GPU-aaaa", model=name) == 1
    assert value(m, "gpuwatchd_gpu_persistence_mode", gpu="1", uuid="GPU-bbbb", model=name) == 0
    assert value(m, "gpuwatchd_gpu_last_checked_timestamp_seconds",
                 gpu="0", uuid="GPU-aaaa") == NOW - 3
    for result in PROBE_RESULTS:
        assert value(m, "gpuwatchd_container_probe_result",
                     container="KonomiTV", result=result) == (result == "ok")
    assert value(m, "gpuwatchd_container_probe_result",
                 container="broken", result="nvml_unknown_error") == 1
    assert value(m, "gpuwatchd_container_last_probe_timestamp_seconds",
                 container="KonomiTV") == NOW - 5
    assert value(m, "gpuwatchd_container_restarts_in_window", container="KonomiTV") == 1
    assert value(m, "gpuwatchd_container_given_up", container="broken") == 1
    assert value(m, "gpuwatchd_container_given_up", container="KonomiTV") == 0
    assert value(m, "gpuwatchd_container_paused", container="broken") == 1


def test_degraded_and_dry_run_show() -> None:
    doc = status_view(docker_available=False, nvml_available=None, dry_run=True)
    m = Metrics(lambda: doc)
    m.refresh()
    assert value(m, "gpuwatchd_docker_available") == 0
    assert value(m, "gpuwatchd_nvml_available") == 0  # not known yet reads as unavailable
    assert value(m, "gpuwatchd_dry_run") == 1


def test_up_is_zero_without_a_fresh_snapshot() -> None:
    """Before the first refresh (or when the loop stops refreshing) gpuwatchd_up is 0."""
    m = Metrics(status_view)
    assert value(m, "gpuwatchd_up") == 0
    m.refresh()
    assert value(m, "gpuwatchd_up") == 1
    m.snapshot_at -= 3600  # the loop has not refreshed for an hour
    assert value(m, "gpuwatchd_up") == 0


def test_names_follow_prometheus_conventions() -> None:
    """gpuwatchd_ prefix everywhere; counters end in _total; times in seconds."""
    m = Metrics(status_view)
    m.refresh()
    m.on_record(make_record("container_restarted", container="K", cause="unknown"))
    text = generate_latest(m.registry).decode()
    families = list(text_string_to_metric_families(text))
    assert families
    for family in families:
        assert family.name.startswith("gpuwatchd_"), family.name
        if family.type == "counter":
            assert all(s.name.endswith(("_total", "_created")) for s in family.samples)
        if "timestamp" in family.name or "time" in family.name:
            assert family.name.endswith("_seconds"), family.name


@pytest.mark.parametrize(
    ("listen", "expected"),
    [("127.0.0.1:19835", ("127.0.0.1", 19835)), ("[::1]:1", ("::1", 1)),
     ("localhost:80", ("localhost", 80))],
)
def test_parse_listen(listen: str, expected: tuple[str, int]) -> None:
    assert parse_listen(listen) == expected


class LoopThread:
    """An event loop on a thread of its own, so blocking clients can talk to a server on it."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(10)

    def call(self, fn: Any) -> Any:
        async def on_loop() -> Any:
            return fn()
        return self.run(on_loop())

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@pytest.fixture
def loop_thread() -> Iterator[LoopThread]:
    lt = LoopThread()
    try:
        yield lt
    finally:
        lt.close()


@pytest.fixture
def busy_calls() -> list[float]:
    return []


@pytest.fixture
def served(loop_thread: LoopThread, busy_calls: list[float]) -> Iterator[tuple[Metrics, str]]:
    m = Metrics(status_view)
    m.refresh()
    host, port = loop_thread.run(m.serve("127.0.0.1:0", on_busy=lambda: busy_calls.append(1)))
    try:
        yield m, f"http://{host}:{port}/metrics"
    finally:
        loop_thread.call(m.close)


def address(url: str) -> tuple[str, int]:
    host, port = url.split("/")[2].rsplit(":", 1)
    return host, int(port)


def raw_request(url: str, data: bytes) -> bytes:
    """Send ``data`` and read until the server closes (at most 10 s)."""
    with socket.create_connection(address(url), timeout=10) as s:
        s.sendall(data)
        chunks = []
        with contextlib.suppress(ConnectionResetError):  # dropped: RST, not FIN
            while chunk := s.recv(65536):
                chunks.append(chunk)
    return b"".join(chunks)


def dropped(s: socket.socket) -> bool:
    """True once the server has closed ``s`` without sending a byte."""
    try:
        return s.recv(1) == b""
    except ConnectionResetError:
        return True


def test_served_over_http_on_the_configured_address(served: tuple[Metrics, str]) -> None:
    """GET /metrics on loopback answers the exposition format with our metrics only."""
    m, url = served
    assert url.startswith("http://127.0.0.1:")
    m.on_record(make_record("container_restarted", container="K", cause="persistence_off"))
    with urllib.request.urlopen(url, timeout=10) as answer:
        assert answer.status == 200
        assert answer.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        text = answer.read().decode()
    assert 'gpuwatchd_restarts_total{cause="persistence_off",container="K"} 1.0' in text
    assert "gpuwatchd_up 1.0" in text
    assert "python_gc" not in text  # a dedicated registry: nothing from the global one


def test_gzip_openmetrics_and_head_when_asked(served: tuple[Metrics, str]) -> None:
    _m, url = served
    req = urllib.request.Request(url, headers={
        "Accept": "application/openmetrics-text; version=1.0.0", "Accept-Encoding": "gzip"})
    with urllib.request.urlopen(req, timeout=10) as answer:
        assert answer.headers["Content-Encoding"] == "gzip"
        assert answer.headers["Content-Type"].startswith("application/openmetrics-text")
        text = gzip.decompress(answer.read()).decode()
    assert text.rstrip().endswith("# EOF")
    head = raw_request(url, b"HEAD /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
    status, _, body = head.partition(b"\r\n\r\n")
    assert status.startswith(b"HTTP/1.1 200 OK") and body == b""
    assert b"Content-Length: 0" not in status


@pytest.mark.parametrize(("request_bytes", "status"), [
    (b"GET /nothing HTTP/1.1\r\n\r\n", b"404"),
    (b"POST /metrics HTTP/1.1\r\n\r\n", b"405"),
    (b"garbage\r\n\r\n", b"400"),
    (b"GET /metrics\r\n\r\n", b"400"),
])
def test_other_requests_get_an_error_status(served: tuple[Metrics, str], request_bytes: bytes,
                                             status: bytes) -> None:
    _m, url = served
    assert raw_request(url, request_bytes).split(b" ")[1] == status


def test_an_oversized_request_head_is_dropped_unanswered(served: tuple[Metrics, str]) -> None:
    _m, url = served
    answer = raw_request(url, b"GET /metrics HTTP/1.1\r\nX: " + b"a" * 20000 + b"\r\n\r\n")
    assert answer == b""


def test_connections_are_capped_and_idle_ones_time_out(
    served: tuple[Metrics, str], loop_thread: LoopThread, busy_calls: list[float],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """MAX_CONNECTIONS idle clients are held; one more is closed at once and reported;
    the idle ones are dropped at REQUEST_TIMEOUT, and then a scrape answers again."""
    m, url = served
    monkeypatch.setattr(metrics_module, "REQUEST_TIMEOUT", 1.0)
    idle = [socket.create_connection(address(url), timeout=10)
            for _ in range(metrics_module.MAX_CONNECTIONS)]
    try:
        deadline = time.monotonic() + 10
        while loop_thread.call(lambda: m.active_connections) < len(idle):
            assert time.monotonic() < deadline, "the idle connections were not accepted"
            time.sleep(0.05)
        assert raw_request(url, b"") == b""  # one more: closed without a byte
        assert busy_calls == [1]
        assert all(dropped(s) for s in idle)  # at REQUEST_TIMEOUT, unanswered
    finally:
        for s in idle:
            s.close()
    with urllib.request.urlopen(url, timeout=10) as answer:
        assert answer.status == 200
    deadline = time.monotonic() + 10
    while loop_thread.call(lambda: m.active_connections) != 0:
        assert time.monotonic() < deadline, "a finished connection is still counted"
        time.sleep(0.05)


def test_close_stops_the_server(served: tuple[Metrics, str], loop_thread: LoopThread) -> None:
    m, url = served
    loop_thread.call(m.close)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1):
                pass
        except OSError:
            return
        time.sleep(0.1)
    pytest.fail("the metrics server still answers after close()")


def test_an_address_in_use_raises_oserror(served: tuple[Metrics, str],
                                         loop_thread: LoopThread) -> None:
    _m, url = served
    port = url.rsplit(":", 1)[1].split("/")[0]
    with pytest.raises(OSError):
        loop_thread.run(Metrics().serve(f"127.0.0.1:{port}"))
