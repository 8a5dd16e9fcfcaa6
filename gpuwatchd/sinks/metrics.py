"""Prometheus metrics: ``/metrics`` on ``[metrics] listen`` (off by default).

Two sources, one dedicated :class:`~prometheus_client.CollectorRegistry` (never
the library's global one, so nothing else in the process leaks in):

- **Counters from records.** :meth:`Metrics.on_record` is a
  ``Daemon.record_listeners`` entry: every log match, restart (by cause),
  recovery, remediation failure, skip and give-up, persistence change and
  failed notification increments a ``_total`` counter.
- **Gauges from the daemon's status.** :meth:`Metrics.refresh` stores the
  daemon's :class:`~gpuwatchd.core.views.DaemonView` (taken on the event loop,
  where the core lives); :meth:`Metrics.refresh_forever` does it every second. A scrape only
  ever reads that stored snapshot.

The HTTP server runs on the daemon's event loop, not in threads: the port is
open to every local user, so it must not let one of them spend the daemon's
file descriptors or threads. At most :data:`MAX_CONNECTIONS` are served at a
time (one more is closed at once, and ``on_busy`` is told); a request must
arrive within :data:`REQUEST_TIMEOUT` and fit in :data:`MAX_REQUEST_HEAD`
bytes, and the answer must be taken within :data:`WRITE_TIMEOUT`. Every
connection is closed after one answer.

Names follow Prometheus conventions: the ``gpuwatchd_`` prefix, ``_total``
for counters, seconds and Unix timestamps in seconds.
"""

from __future__ import annotations

import asyncio
import gzip
import platform
import time
from collections.abc import Callable, Iterable

from prometheus_client import CollectorRegistry, Counter
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector

from gpuwatchd import __version__
from gpuwatchd.core.views import DaemonView
from gpuwatchd.model.records import Record, make_record
from gpuwatchd.model.vocabulary import ProbeResult

#: How often the gauges' snapshot is refreshed from the daemon.
REFRESH_INTERVAL = 1.0
#: Every probe result, for the enum-style ``gpuwatchd_container_probe_result``.
PROBE_RESULTS: tuple[str, ...] = tuple(r.value for r in ProbeResult)

#: Connections served at once; Prometheus scrapes one at a time.
MAX_CONNECTIONS = 8
#: Seconds a client has to send its whole request head.
REQUEST_TIMEOUT = 5.0
#: Seconds a client has to take the whole answer.
WRITE_TIMEOUT = 10.0
#: Bytes a request head may take (request line and headers).
MAX_REQUEST_HEAD = 8192

StatusSource = Callable[[], DaemonView]


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
        view = self._metrics.snapshot  # one reference read: the view is frozen
        build = GaugeMetricFamily(
            "gpuwatchd_build_info", "gpuwatchd's version (always 1)",
            labels=["version", "python"],
        )
        build.add_metric([__version__, platform.python_version()], 1.0)
        yield build
        up = GaugeMetricFamily(
            "gpuwatchd_up", "1 while the daemon's event loop answers (the snapshot is fresh)"
        )
        fresh = view is not None and time.time() - self._metrics.snapshot_at < 10 * REFRESH_INTERVAL
        up.add_metric([], _flag(fresh))
        yield up
        if view is None:
            return
        core = view.core
        yield _gauge("gpuwatchd_start_time_seconds",
                     "when the daemon started (Unix time)", time.time() - view.uptime)
        yield _gauge("gpuwatchd_dry_run", "1 in dry run: decisions are recorded, nothing changed",
                     _flag(view.dry_run))
        yield _gauge("gpuwatchd_docker_available", "1 while the Docker engine answers",
                     _flag(view.docker_available))
        yield _gauge("gpuwatchd_nvml_available", "1 while host NVML works",
                     _flag(view.nvml_available))
        yield _gauge("gpuwatchd_remediation_paused_all",
                     "1 while `gpuwatchd pause` holds remediation of every container",
                     _flag(core.paused_all))

        persistence = GaugeMetricFamily(
            "gpuwatchd_gpu_persistence_mode", "1 when the GPU's persistence mode is on",
            labels=["gpu", "uuid", "model"],
        )
        checked = GaugeMetricFamily(
            "gpuwatchd_gpu_last_checked_timestamp_seconds",
            "when the GPU's state was last read (Unix time)", labels=["gpu", "uuid"],
        )
        for gpu in core.gpus:
            index = str(gpu.index)
            persistence.add_metric([index, gpu.uuid, gpu.name], _flag(gpu.persistence))
            checked.add_metric([index, gpu.uuid], gpu.last_checked)
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
        action = GaugeMetricFamily(
            "gpuwatchd_container_action",
            "1 for what a proven fault gets (restart, or notify: never restarted), 0 for the other",
            labels=["container", "action"],
        )
        profile = GaugeMetricFamily(
            "gpuwatchd_container_profile_info",
            "always 1: the container's application profile (none: the global patterns)",
            labels=["container", "profile"],
        )
        for c in core.containers:
            name = c.name
            mode = c.action or "restart"
            for value in ("restart", "notify"):
                action.add_metric([name, value], 1.0 if value == mode else 0.0)
            profile.add_metric([name, c.profile or "none"], 1.0)
            last = None if c.last_probe_result is None else c.last_probe_result.value
            for value in PROBE_RESULTS:
                result.add_metric([name, value], 1.0 if value == last else 0.0)
            if c.last_probe_at is not None:
                probed.add_metric([name], c.last_probe_at)
            restarts.add_metric([name], float(c.restarts_in_window))
            given_up.add_metric([name], _flag(c.given_up_at is not None))
            paused.add_metric([name], _flag(c.paused))
        yield from (result, probed, restarts, given_up, paused, action, profile)

    def describe(self) -> Iterable[Metric]:
        # Describing would call collect(); nothing needs the names in advance.
        return ()


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    gauge = GaugeMetricFamily(name, documentation)
    gauge.add_metric([], value)
    return gauge


class Metrics:
    """gpuwatchd's metrics in their own registry; optionally served over HTTP.

    ``status`` returns the daemon's typed view (``DaemonStatus.view``); it is
    only ever called from :meth:`refresh`, on the event loop.
    """

    def __init__(self, status: StatusSource | None = None) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self._status = status
        self.snapshot: DaemonView | None = None
        self.snapshot_at = 0.0
        self._server: asyncio.AbstractServer | None = None
        self._on_busy: Callable[[], None] | None = None
        self._active = 0
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
        """Store a fresh status view (call on the event loop)."""
        if self._status is not None:
            self.snapshot = self._status()
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

    async def serve(self, listen: str, on_busy: Callable[[], None] | None = None,
                    ) -> tuple[str, int]:
        """Serve ``/metrics`` on ``listen`` (``HOST:PORT``) from the running event loop.

        Binds exactly the configured address. Returns the bound (host, port):
        port 0 picks a free one, for tests. ``on_busy`` is called (on the loop)
        each time a connection is turned away at :data:`MAX_CONNECTIONS`.

        Raises:
            OSError: the address cannot be bound (in use, not local, not allowed).
            ValueError: ``listen`` is not ``HOST:PORT``.
        """
        host, port = parse_listen(listen)
        self._on_busy = on_busy
        self._server = await asyncio.start_server(
            self._connection, host, port, limit=MAX_REQUEST_HEAD)
        bound = self._server.sockets[0].getsockname()
        return str(bound[0]), int(bound[1])

    def close(self) -> None:
        """Stop listening (returns at once); connections in progress end within their timeouts."""
        server, self._server = self._server, None
        if server is not None:
            server.close()

    @property
    def active_connections(self) -> int:
        """Connections being served now (at most :data:`MAX_CONNECTIONS`)."""
        return self._active

    async def _connection(self, reader: asyncio.StreamReader,
                          writer: asyncio.StreamWriter) -> None:
        if self._active >= MAX_CONNECTIONS:
            writer.transport.abort()
            if self._on_busy is not None:
                self._on_busy()
            return
        self._active += 1
        answered = False
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), REQUEST_TIMEOUT)
            # No write buffer: drain() returns once the kernel has every byte.
            writer.transport.set_write_buffer_limits(high=0)
            writer.write(self.answer(head))
            await asyncio.wait_for(writer.drain(), WRITE_TIMEOUT)
            answered = True
        except (asyncio.TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError,
                OSError):
            pass  # slow, oversized or gone: dropped without (the rest of) an answer
        finally:
            self._active -= 1
            if answered:
                writer.close()
            else:
                writer.transport.abort()

    def answer(self, head: bytes) -> bytes:
        """The whole HTTP/1.1 response to a request ``head`` (request line and headers)."""
        lines = head.decode("latin-1").split("\r\n")
        parts = lines[0].split(" ")
        if len(parts) != 3 or not parts[2].startswith("HTTP/"):
            return _response(400, "Bad Request", b"bad request\n")
        method, target = parts[0], parts[1].split("?", 1)[0]
        if method not in ("GET", "HEAD"):
            return _response(405, "Method Not Allowed", b"GET or HEAD only\n",
                             [("Allow", "GET, HEAD")])
        if target not in ("/metrics", "/"):
            return _response(404, "Not Found", b"try /metrics\n")
        headers = {}
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if sep:
                headers[name.strip().lower()] = value.strip()
        encoder, content_type = choose_encoder(headers.get("accept", ""))
        body = encoder(self.registry)
        extra = [("Content-Type", content_type)]
        if "gzip" in headers.get("accept-encoding", ""):
            body = gzip.compress(body)
            extra.append(("Content-Encoding", "gzip"))
        return _response(200, "OK", body, extra, head_only=method == "HEAD")


def _response(code: int, reason: str, body: bytes,
              headers: Iterable[tuple[str, str]] = (), *, head_only: bool = False) -> bytes:
    fields = [("Content-Length", str(len(body))), ("Connection", "close"), *headers]
    if not any(name == "Content-Type" for name, _ in fields):
        fields.append(("Content-Type", "text/plain; charset=utf-8"))
    text = f"HTTP/1.1 {code} {reason}\r\n" + "".join(f"{n}: {v}\r\n" for n, v in fields)
    return (text + "\r\n").encode("latin-1") + (b"" if head_only else body)


__all__ = [
    "MAX_CONNECTIONS", "MAX_REQUEST_HEAD", "PROBE_RESULTS", "REFRESH_INTERVAL",
    "REQUEST_TIMEOUT", "WRITE_TIMEOUT", "Metrics", "parse_listen",
]


async def start_metrics(listen: str, status: StatusSource,
                        record: Callable[[Record], None]) -> Metrics | None:
    """Serve metrics on ``listen``, recording ``metrics_busy`` for each connection
    turned away; None, with ``metrics_unavailable`` recorded, when the address
    cannot be bound: that costs the metrics, not the watchdog."""
    metrics = Metrics(status)
    try:
        await metrics.serve(listen, on_busy=lambda: record(make_record(
            "metrics_busy", listen=listen, limit=MAX_CONNECTIONS)))
    except (OSError, ValueError) as exc:
        record(make_record("metrics_unavailable", listen=listen, error=str(exc)))
        return None
    return metrics
