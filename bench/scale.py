"""5. Scale: many watched containers logging fast, ER-05 injected at random.

The flood is written from the host into each container's stdout pipe
(``/proc/<pid>/fd/1``), ten batches a second, so the containers themselves
cost nothing and the offered load is exact; a write the pipe refuses (the
engine not reading fast enough) is counted as engine back-pressure, never
waited for. ER-05 lines go to distinct random containers at random moments
(one per container per level: see :mod:`bench.latency` on the confirmation
window).

Per level (containers x lines/s), from a fresh daemon watching exactly those
containers:

- ``missed``: injected ER-05 lines with no ``log_pattern_matched`` record;
- ``lag``: record time - write time (median, p95, p99), split into the
  engine's part (write → the engine's receive timestamp of that line,
  ``docker logs --timestamps``) and gpuwatchd's (receive → record);
- CPU (% of one core) and RSS of gpuwatchd, of dockerd (read from ``/proc``
  only), and of this bench process (the writer), over the flood window.

``fs.inotify.max_user_instances`` is raised for the run (dockerd's json-file
follower takes one inotify instance per ``docker logs -f``) and restored.
"""

from __future__ import annotations

import contextlib
import os
import random
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from docker.models.containers import Container

from bench.harness import (
    FLOOD_LINE,
    QUIET,
    Injector,
    Lab,
    dockerd_pid,
    engine_time,
    record_time,
    safe_sample,
    summary_ms,
    usage_between,
)
from tests.bench import ER05_LINE

INOTIFY = Path("/proc/sys/fs/inotify/max_user_instances")
BATCHES_PER_S = 10
#: A level breaks when any of these hold.
BREAK_LAG_P99_S = 1.0


@contextlib.contextmanager
def inotify_instances(at_least: int) -> Iterator[int | None]:
    """Raises fs.inotify.max_user_instances to ``at_least`` for the block, then restores it.

    Yields the old value (None when it could not be read or written: the run
    goes on and the report says so).
    """
    try:
        old = int(INOTIFY.read_text())
    except OSError:
        yield None
        return
    changed = False
    if old < at_least:
        try:
            INOTIFY.write_text(str(at_least))
            changed = True
        except OSError:
            yield None
            return
    try:
        yield old
    finally:
        if changed:
            with contextlib.suppress(OSError):
                INOTIFY.write_text(str(old))


class Flood:
    """Writes ``rate`` lines/s into each container from one thread, in batches."""

    def __init__(self, injector: Injector, names: Sequence[str], rate: int) -> None:
        self.injector = injector
        self.names = list(names)
        self.per_batch = max(1, rate // BATCHES_PER_S)
        self.late_batches = 0  #: batches this writer itself could not send on time
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="flood", daemon=True)
        self._lock = threading.Lock()

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)

    def inject(self, name: str) -> float | None:
        """Writes ER-05 into ``name`` (between two batches, never inside one)."""
        with self._lock:
            return self.injector.er05(name)

    def _run(self) -> None:
        period = 1.0 / BATCHES_PER_S
        frame = 0
        next_at = time.monotonic()
        while not self._stop.is_set():
            batch = "".join(FLOOD_LINE % (frame + i) + "\n" for i in range(self.per_batch))
            frame += self.per_batch
            with self._lock:
                for name in self.names:
                    self.injector.write(name, batch)
            next_at += period
            delay = next_at - time.monotonic()
            if delay > 0:
                self._stop.wait(delay)
            else:
                self.late_batches += 1
                next_at = time.monotonic()


def run_level(
    lab: Lab, pool: Sequence[Container], containers: int, rate: int, seconds: float,
    injections: int,
) -> dict[str, Any]:
    """One level: a fresh daemon watching ``containers`` of ``pool`` under a flood."""
    cs = list(pool[:containers])
    daemon = lab.start_daemon({"watch": lab.watch_names(cs)})
    lab.wait_watched(daemon, cs, 180)
    time.sleep(6.0)  # followers attached, start-up settled, past start_grace
    lab.say(f"scale: {containers} containers x {rate} lines/s for {seconds:g}s")
    injector = Injector()
    for c in cs:
        injector.open(c)
    flood = Flood(injector, [c.name for c in cs], rate)
    targets = random.sample(cs, min(injections, len(cs)))
    offsets = sorted(random.uniform(1.0, max(1.5, seconds - 2.0)) for _ in targets)
    engine = dockerd_pid()
    me = os.getpid()
    a, ea, ma = safe_sample(daemon.pid), safe_sample(engine), safe_sample(me)
    flood.start()
    t0 = time.time()
    sent: list[tuple[Container, float]] = []
    for c, off in zip(targets, offsets, strict=True):
        time.sleep(max(0.0, t0 + off - time.time()))
        at = flood.inject(c.name)
        if at is not None:
            sent.append((c, at))
    time.sleep(max(0.0, t0 + seconds - time.time()))
    b, eb, mb = safe_sample(daemon.pid), safe_sample(engine), safe_sample(me)
    flood.stop()
    wall = time.time() - t0
    lines = injector.lines
    refused = injector.backpressure
    injector.close()
    lags: list[float] = []
    engine_lags: list[float] = []
    daemon_lags: list[float] = []
    missed = 0
    for c, at in sent:
        try:
            rec = daemon.wait_for("log_pattern_matched", 20, container=c.name)
        except AssertionError:
            missed += 1
            continue
        got = record_time(rec)
        lags.append(got - at)
        received = engine_time(c, ER05_LINE, at)
        if received is not None:
            engine_lags.append(received - at)
            daemon_lags.append(got - received)
    alive = daemon.proc.poll() is None
    lab.stop_daemon(daemon)
    lag = summary_ms(lags)
    result = {
        "containers": containers,
        "lines_per_s_each": rate,
        "offered_lines_per_s": containers * rate,
        "written_lines_per_s": round(lines / wall),
        "engine_refused_writes": refused,
        "writer_late_batches": flood.late_batches,
        "injected": len(sent),
        "missed": missed,
        "lag": lag,
        "engine_lag": summary_ms(engine_lags),
        "gpuwatchd_lag": summary_ms(daemon_lags),
        "gpuwatchd": usage_between(daemon.pid, a, b),
        "dockerd": usage_between(engine, ea, eb),
        "bench_writer": usage_between(me, ma, mb),
        "daemon_alive": alive,
    }
    p99 = lag["p99_ms"]
    result["ok"] = bool(
        alive and missed == 0 and refused == 0 and len(sent) > 0
        and p99 is not None and p99 <= BREAK_LAG_P99_S * 1000
    )
    return result


def limit_of(level: dict[str, Any]) -> str:
    """Names what broke a level: the engine or gpuwatchd (from where the lag and CPU are)."""
    if level["ok"]:
        return "none"
    if level["missed"] and level["daemon_alive"] is False:
        return "gpuwatchd (daemon died)"
    e99 = level["engine_lag"]["p99_ms"] or 0.0
    g99 = level["gpuwatchd_lag"]["p99_ms"] or 0.0
    if level["engine_refused_writes"] or e99 > g99:
        return "engine (dockerd)"
    # Inside the daemon's process: BENCHMARKS.md shows (py-spy) that this is
    # the docker SDK's per-line stream decoding, not gpuwatchd's matching.
    return "gpuwatchd process"


def measure(
    lab: Lab, levels: Sequence[tuple[int, int]], seconds: float, injections: int
) -> dict[str, Any]:
    """Runs each (containers, lines/s) level in order, stopping after the first that breaks."""
    biggest = max(n for n, _ in levels)
    with inotify_instances(max(1024, biggest * 4)) as old:
        pool = lab.start_containers(biggest, environment=QUIET, prefix="sc", parallel=6)
        results = []
        broke = None
        for n, rate in levels:
            level = run_level(lab, pool, n, rate, seconds, injections)
            level["limit"] = limit_of(level)
            results.append(level)
            if not level["ok"]:
                broke = f"{n}x{rate}"
                break
        lab.remove(pool, parallel=6)
    return {
        "inotify_max_user_instances_was": old,
        "seconds_per_level": seconds,
        "levels": results,
        "first_broken_level": broke,
        "largest_ok_level": next(
            (f"{r['containers']}x{r['lines_per_s_each']}" for r in reversed(results) if r["ok"]),
            None,
        ),
    }
