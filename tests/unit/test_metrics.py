"""Metrics: counters from records, gauges from the status snapshot, names by convention,
served over HTTP on loopback."""

from __future__ import annotations

import time
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from gpuwatchd import __version__
from gpuwatchd.core import ContainerView, CoreView, GpuView
from gpuwatchd.events import ContainerState
from gpuwatchd.metrics import PROBE_RESULTS, Metrics, parse_listen
from gpuwatchd.records import make_record
from gpuwatchd.types import Cause, ProbeResult

NOW = 1_700_000_000.0


def status_document(**changes: Any) -> dict[str, Any]:
    """A status document as Daemon.status_document builds it, from a real CoreView."""
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
    doc = {"version": __version__, "pid": 1, "uptime": 120.0, "dry_run": False,
           "docker_available": True, "nvml_available": True, "status": "",
           "core": view.to_json()}
    doc.update(changes)
    return doc


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
    doc = status_document()
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
    doc = status_document(docker_available=False, nvml_available=None, dry_run=True)
    m = Metrics(lambda: doc)
    m.refresh()
    assert value(m, "gpuwatchd_docker_available") == 0
    assert value(m, "gpuwatchd_nvml_available") == 0  # not known yet reads as unavailable
    assert value(m, "gpuwatchd_dry_run") == 1


def test_up_is_zero_without_a_fresh_snapshot() -> None:
    """Before the first refresh (or when the loop stops refreshing) gpuwatchd_up is 0."""
    m = Metrics(status_document)
    assert value(m, "gpuwatchd_up") == 0
    m.refresh()
    assert value(m, "gpuwatchd_up") == 1
    m.snapshot_at -= 3600  # the loop has not refreshed for an hour
    assert value(m, "gpuwatchd_up") == 0


def test_names_follow_prometheus_conventions() -> None:
    """gpuwatchd_ prefix everywhere; counters end in _total; times in seconds."""
    m = Metrics(status_document)
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


@pytest.fixture
def served() -> Iterator[tuple[Metrics, str]]:
    m = Metrics(status_document)
    m.refresh()
    host, port = m.serve("127.0.0.1:0")
    try:
        yield m, f"http://{host}:{port}/metrics"
    finally:
        m.close()


def test_served_over_http_on_the_configured_address(served: tuple[Metrics, str]) -> None:
    """GET /metrics on loopback answers the exposition format with our metrics only."""
    m, url = served
    assert url.startswith("http://127.0.0.1:")
    m.on_record(make_record("container_restarted", container="K", cause="persistence_off"))
    with urllib.request.urlopen(url, timeout=10) as answer:
        assert answer.status == 200
        text = answer.read().decode()
    assert 'gpuwatchd_restarts_total{cause="persistence_off",container="K"} 1.0' in text
    assert "gpuwatchd_up 1.0" in text
    assert "python_gc" not in text  # a dedicated registry: nothing from the global one


def test_close_stops_the_server(served: tuple[Metrics, str]) -> None:
    m, url = served
    m.close()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1):
                pass
        except OSError:
            return
        time.sleep(0.1)
    pytest.fail("the metrics server still answers after close()")


def test_an_address_in_use_raises_oserror(served: tuple[Metrics, str]) -> None:
    _m, url = served
    port = url.rsplit(":", 1)[1].split("/")[0]
    with pytest.raises(OSError):
        Metrics().serve(f"127.0.0.1:{port}")
