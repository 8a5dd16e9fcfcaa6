"""Prometheus metrics: ``/metrics`` on ``[metrics] listen`` (off by default).

Two sources, one dedicated :class:`~prometheus_client.CollectorRegistry` (never
the library's global one, so nothing else in the process leaks in):

- **Counters from records.** :meth:`Metrics.on_record` is a
  ``Daemon.record_listeners`` entry: every log match, restart (by cause),
  recovery, remediation failure, skip and give-up, persistence change and
  failed notification increments a ``_total`` counter.
- **Gauges from the daemon's status.** :meth:`Metrics.refresh` stores the
  daemon's ``status_document()`` (taken on the event loop, where the core
  lives); :meth:`Metrics.refresh_forever` does it every second. The HTTP
  server thread only ever reads that stored snapshot, so a scrape never
  touches the core from another thread.

Names follow Prometheus conventions: the ``gpuwatchd_`` prefix, ``_total``
for counters, seconds and Unix timestamps in seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import platform
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, start_http_server
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from gpuwatchd import __version__
from gpuwatchd.records import Record
from gpuwatchd.types import ProbeResult

#: How often the gauges' snapshot is refreshed from the daemon.
REFRESH_INTERVAL = 1.0
#: Every probe result, for the enum-style ``gpuwatchd_container_probe_result``.
PROBE_RESULTS: tuple[str, ...] = tuple(r.value for r in ProbeResult)

StatusSource = Callable[[], Mapping[str, Any]]


def parse_listen(listen: str) -> tuple[str, int]:
    """``"127.0.0.1:9100"`` → ``("127.0.0.1", 9100)``; ``"[::1]:9100"`` → ``("::1", 9100)``.

    The value has already been validated by the config loader.

    Raises:
        ValueError: when ``listen`` has no ``:PORT``.
    """
    host, sep, port = listen.rpartition(":")
    if not sep:
        raise ValueError(f"not HOST:PORT: {listen!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host, int(port)


def _flag(value: object) -> float:
    return 1.0 if value is True else 0.0


class _StatusCollector(Collector):
    """Gauges built at scrape time from the last stored status snapshot."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterable[Metric]:
        doc = self._metrics.snapshot  # one reference read: the snapshot is never mutated
        build = GaugeMetricFamily(
            "gpuwatchd_build_info", "gpuwatchd's version (always 1)",
            labels=["version", "python"],
        )
        build.add_metric([__version__, platform.python_version()], 1.0)
        yield build
        up = GaugeMetricFamily(
            "gpuwatchd_up", "1 while the daemon's event loop answers (the snapshot is fresh)"
        )
        fresh = doc is not None and time.time() - self._metrics.snapshot_at < 10 * REFRESH_INTERVAL
        up.add_metric([], _flag(fresh))
        yield up
        if doc is None:
            return
        core: Mapping[str, Any] = doc.get("core") or {}
        yield _gauge("gpuwatchd_start_time_seconds",
                     "when the daemon started (Unix time)",
                     time.time() - float(doc.get("uptime") or 0.0))
        yield _gauge("gpuwatchd_dry_run", "1 in dry run: decisions are recorded, nothing changed",
                     _flag(doc.get("dry_run")))
        yield _gauge("gpuwatchd_docker_available", "1 while the Docker engine answers",
                     _flag(doc.get("docker_available")))
        yield _gauge("gpuwatchd_nvml_available", "1 while host NVML works",
                     _flag(doc.get("nvml_available")))
        yield _gauge("gpuwatchd_remediation_paused_all",
                     "1 while `gpuwatchd pause` holds remediation of every container",
                     _flag(core.get("paused_all")))

        persistence = GaugeMetricFamily(
            "gpuwatchd_gpu_persistence_mode", "1 when the GPU's persistence mode is on",
            labels=["gpu", "uuid", "model"],
        )
        checked = GaugeMetricFamily(
            "gpuwatchd_gpu_last_checked_timestamp_seconds",
            "when the GPU's state was last read (Unix time)", labels=["gpu", "uuid"],
        )
        for gpu in core.get("gpus") or ():
            index, uuid = str(gpu.get("index")), str(gpu.get("uuid", ""))
            persistence.add_metric([index, uuid, str(gpu.get("name", ""))],
                                   _flag(gpu.get("persistence")))
            checked.add_metric([index, uuid], float(gpu.get("last_checked") or 0.0))
        yield persistence
        yield checked

        result = GaugeMetricFamily(
            "gpuwatchd_container_probe_result",
            "1 for the last in-container NVML check's result, 0 for the others",
            labels=["container", "result"],
        )
        probed = GaugeMetricFamily(
            "gpuwatchd_container_last_probe_timestamp_seconds",
            "when the container was last checked (Unix time)", labels=["container"],
        )
        restarts = GaugeMetricFamily(
            "gpuwatchd_container_restarts_in_window",
            "restarts within remediation.window (the budget used)", labels=["container"],
        )
        given_up = GaugeMetricFamily(
            "gpuwatchd_container_given_up",
            "1 while gpuwatchd has given up on the container", labels=["container"],
        )
        paused = GaugeMetricFamily(
            "gpuwatchd_container_paused",
            "1 while remediation of the container is paused", labels=["container"],
        )
        for c in core.get("containers") or ():
            name = str(c.get("name"))
            last = c.get("last_probe_result")
            for value in PROBE_RESULTS:
                result.add_metric([name, value], 1.0 if value == last else 0.0)
            if c.get("last_probe_at") is not None:
                probed.add_metric([name], float(c["last_probe_at"]))
            restarts.add_metric([name], float(c.get("restarts_in_window") or 0))
            given_up.add_metric([name], _flag(c.get("given_up_at") is not None))
            paused.add_metric([name], _flag(c.get("paused")))
        yield from (result, probed, restarts, given_up, paused)

    def describe(self) -> Iterable[Metric]:
        # Describing would call collect(); nothing needs the names in advance.
        return ()


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    gauge = GaugeMetricFamily(name, documentation)
    gauge.add_metric([], value)
    return gauge


class Metrics:
    """gpuwatchd's metrics in their own registry; optionally served over HTTP.

    ``status`` returns the daemon's status document (``Daemon.status_document``);
    it is only ever called from :meth:`refresh`, on the event loop.
    """

    def __init__(self, status: StatusSource | None = None) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self._status = status
        self.snapshot: Mapping[str, Any] | None = None
        self.snapshot_at = 0.0
        self._server: WSGIServer | None = None
        self._thread: threading.Thread | None = None
        r = self.registry
        self.log_matches = Counter(
            "gpuwatchd_log_matches", "log lines that matched a configured pattern",
            ["container"], registry=r)
        self.restarts = Counter(
            "gpuwatchd_restarts", "container restarts (dry run: restarts decided)",
            ["container", "cause"], registry=r)
        self.recoveries = Counter(
            "gpuwatchd_recoveries", "containers verified working after a restart",
            ["container", "result"], registry=r)
        self.remediation_failures = Counter(
            "gpuwatchd_remediation_failures",
            "restarts that failed or did not verify within verify_timeout",
            ["container"], registry=r)
        self.remediation_skips = Counter(
            "gpuwatchd_remediation_skipped",
            "faults found but not remediated (host cause, paused, orchestrated, …)",
            ["container", "reason"], registry=r)
        self.give_ups = Counter(
            "gpuwatchd_remediation_give_ups", "containers given up on (restart budget spent)",
            ["container"], registry=r)
        self.persistence_enabled = Counter(
            "gpuwatchd_persistence_enabled", "times gpuwatchd enabled a GPU's persistence mode",
            ["gpu"], registry=r)
        self.persistence_set_failures = Counter(
            "gpuwatchd_persistence_set_failures", "failures to enable persistence mode",
            ["gpu"], registry=r)
        self.notify_failures = Counter(
            "gpuwatchd_notify_failures", "notifications that could not be delivered",
            registry=r)
        r.register(_StatusCollector(self))

    # -- counters -------------------------------------------------------------------

    def on_record(self, record: Record) -> None:
        """Count ``record`` (a ``Daemon.record_listeners`` entry; cheap, never blocks).

        A folded summary record stands for ``count`` occurrences.
        """
        count = record.get("count")
        n = float(count) if isinstance(count, int) and not isinstance(count, bool) else 1.0
        container = str(record.get("container") or "")
        event = record.event
        if event == "log_pattern_matched":
            self.log_matches.labels(container).inc(n)
        elif event == "container_restarted":
            self.restarts.labels(container, str(record.get("cause") or "unknown")).inc(n)
        elif event == "container_recovered":
            self.recoveries.labels(container, str(record.get("result") or "")).inc(n)
        elif event == "remediation_failed":
            self.remediation_failures.labels(container).inc(n)
        elif event == "remediation_skipped":
            self.remediation_skips.labels(container, str(record.get("reason") or "")).inc(n)
        elif event == "remediation_gave_up":
            # Its count is the restarts that did not cure it, not give-ups.
            self.give_ups.labels(container).inc()
        elif event == "gpu_persistence_enabled":
            self.persistence_enabled.labels(str(record.get("gpu_index"))).inc(n)
        elif event == "gpu_persistence_set_failed":
            self.persistence_set_failures.labels(str(record.get("gpu_index"))).inc(n)
        elif event == "notify_failed":
            self.notify_failures.inc(n)

    # -- gauges -----------------------------------------------------------------------

    def refresh(self) -> None:
        """Store a fresh status snapshot (call on the event loop)."""
        if self._status is not None:
            self.snapshot = dict(self._status())
            self.snapshot_at = time.time()

    async def refresh_forever(self) -> None:
        """Refresh every :data:`REFRESH_INTERVAL` seconds; stops the server when cancelled."""
        try:
            while True:
                self.refresh()
                await asyncio.sleep(REFRESH_INTERVAL)
        finally:
            self.close()

    # -- the HTTP server ----------------------------------------------------------------

    def serve(self, listen: str) -> tuple[str, int]:
        """Serve ``/metrics`` on ``listen`` (``HOST:PORT``) from a daemon thread.

        Binds exactly the configured address. Returns the bound (host, port):
        port 0 picks a free one, for tests.

        Raises:
            OSError: the address cannot be bound (in use, not local, not allowed).
            ValueError: ``listen`` is not ``HOST:PORT``.
        """
        host, port = parse_listen(listen)
        server, thread = start_http_server(port, addr=host, registry=self.registry)
        self._server, self._thread = server, thread
        bound = server.server_address
        return str(bound[0]), int(bound[1])

    def close(self) -> None:
        """Stop the HTTP server, if any (returns at once; the thread ends within 0.5 s)."""
        server, self._server = self._server, None
        if server is None:
            return

        def stop() -> None:
            # shutdown() waits for serve_forever's next poll: never on the loop.
            with contextlib.suppress(OSError):
                server.shutdown()
                server.server_close()

        threading.Thread(target=stop, name="metrics-stop", daemon=True).start()


__all__ = ["PROBE_RESULTS", "REFRESH_INTERVAL", "Metrics", "parse_listen"]
