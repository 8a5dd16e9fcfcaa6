"""1b. Repeated faults on ONE container: each heals as fast as the first.

One konomi container in normal mode (``nvidia-smi -L`` every second, ER-05
on failure) and a daemon with ``cooldown = "1s"``, ``max_restarts = 10`` in a
10-minute ``window`` and a 60 s probe interval, so every fault is found from
the log path. The fault is the field report's: persistence off, the driver
idles. After each recovery the bench waits about 6 s, then breaks the same
container again. Per fault, from the engine's receive time of the first ER-05
line after the fault (``docker logs --timestamps``):

- ``line_to_matched``: → ``log_pattern_matched``;
- ``line_to_restarted``: → ``container_restarted``;
- ``er05_lines``: how many ER-05 lines the workload logged before the restart.

Nothing is spread over other containers: whatever the core holds back for a
container that was just healed shows here.
"""

from __future__ import annotations

import statistics
import time
from datetime import datetime
from typing import Any

from docker.models.containers import Container

from bench.harness import Daemon, Lab, engine_time, record_time
from tests.bench import ER05_LINE, ONAIR_LINE, wait_for_log

SETTINGS: dict[str, dict[str, Any]] = {
    "probe": {"interval": "60s"},
    "remediation": {"cooldown": "1s", "max_restarts": 10, "window": "10m"},
}
#: Seconds between a recovery and the next fault.
AFTER_RECOVERY = 6.0
#: The first this many faults make the "repeated fault → restart" figure.
FIGURE_FAULTS = 5


def _lines_between(container: Container, text: str, since: float, until: float) -> int:
    raw: bytes = container.logs(timestamps=True, since=int(since) - 1, stdout=True, stderr=True)
    n = 0
    for line in raw.decode(errors="replace").splitlines():
        stamp, _, rest = line.partition(" ")
        if text not in rest:
            continue
        head, _, frac = stamp.rstrip("Z").partition(".")
        at = datetime.fromisoformat(f"{head}.{(frac + '000000')[:6]}+00:00").timestamp()
        if since <= at <= until:
            n += 1
    return n


def _first_after(daemon: Daemon, event: str, name: str, since: float, timeout: float) -> float:
    deadline = time.monotonic() + timeout
    while True:
        times = [t for t in daemon.times(event, container=name) if t >= since]
        if times:
            return times[0]
        if time.monotonic() > deadline:
            raise AssertionError(f"no {event} for {name} after the fault; {daemon.summary()}")
        time.sleep(0.05)


def one_fault(lab: Lab, daemon: Daemon, c: Container, k: int) -> dict[str, Any]:
    lab.gpu.set_persistence(False)
    fault = time.time()
    assert lab.gpu.idle_driver(), "persistence is off: idling must end the session"
    restarted = daemon.wait_for("container_restarted", 60, count=k, container=c.name)
    daemon.wait_for("container_recovered", 90, count=k, container=c.name)
    line = engine_time(c, ER05_LINE, fault)
    matched = _first_after(daemon, "log_pattern_matched", c.name, fault, 10)
    at_restart = record_time(restarted)
    return {
        "line_to_matched_s": None if line is None else round(matched - line, 3),
        "line_to_restarted_s": None if line is None else round(at_restart - line, 3),
        "fault_to_restarted_s": round(at_restart - fault, 3),
        "er05_lines": _lines_between(c, ER05_LINE, fault, at_restart),
    }


def measure(lab: Lab, faults: int) -> dict[str, Any]:
    """``faults`` faults in a row on one container; figures in seconds."""
    lab.say(f"latency: {faults} repeated faults on one container")
    lab.gpu.set_persistence(False)  # the daemon fixes it at start, as in the field report
    (c,) = lab.start_containers(1, prefix="rep")
    wait_for_log(c, ONAIR_LINE, 20)
    daemon = lab.start_daemon({**SETTINGS, "watch": lab.watch_names([c])})
    lab.wait_watched(daemon, [c], 30)
    daemon.wait_for("gpu_persistence_enabled", timeout=30)
    time.sleep(max(0.0, 5.5 - (time.time() - daemon.started)))  # past start_grace
    runs = []
    for k in range(1, faults + 1):
        runs.append(one_fault(lab, daemon, c, k))
        time.sleep(AFTER_RECOVERY)
    restarts = len(daemon.find("container_restarted", container=c.name))
    lab.stop_daemon(daemon)
    lab.remove([c])
    lab.gpu.set_persistence(True)
    first = [r["line_to_restarted_s"] for r in runs[:FIGURE_FAULTS]]
    matched = [r["line_to_matched_s"] for r in runs if r["line_to_matched_s"] is not None]
    return {
        "faults": faults,
        "restarts": restarts,
        "settings": "cooldown 1s, max_restarts 10 in 10m, probe interval 60s",
        "per_fault": runs,
        "restart_s": first,
        "restart_max_s": max((v for v in first if v is not None), default=None),
        "line_to_matched_median_s": (
            round(statistics.median(matched), 3) if matched else None
        ),
        "line_to_matched_max_s": max(matched, default=None),
    }


__all__ = ["measure"]
