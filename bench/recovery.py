"""2. Time to recovery for the field report's fault: persistence off, the driver idles.

Per trial: a fresh konomi container in normal mode (``nvidia-smi -L`` every
second, ER-05 on failure), the daemon at its defaults (probe interval 60 s,
so detection comes from the log). The daemon enables persistence at start
(host drift), so the bench turns it off again once the daemon is up, then
idles the driver (the fault) and notes the time. Steps, each from the
previous one:

- ``er05_logged``: the workload's next encode task fails and it logs ER-05
  (the engine's receive time, ``docker logs --timestamps``): the workload's
  own cadence, not gpuwatchd's.
- ``detected``: ``log_pattern_matched``.
- ``confirmed``: ``probe_failed`` (the confirmation probe, a ``docker exec``).
- ``persistence_enabled``: ``gpu_persistence_enabled``.
- ``restarted``: ``container_restarted`` (``docker restart`` returned).
- ``verified``: ``container_recovered`` (a probe passed; the first one waits
  for ``probe.start_grace``, 5 s by default, after the new start).

The baseline is the container's own ``docker restart`` (the SDK call, same
image and mounts), measured separately.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

from bench.harness import Lab, engine_time, record_time
from tests.bench import ER05_LINE, ONAIR_LINE, wait_for_log

STEPS = ("er05_logged", "detected", "confirmed", "persistence_enabled", "restarted", "verified")


def restart_baseline(lab: Lab, times: int) -> list[float]:
    """Durations of ``docker restart`` of a konomi container (normal mode), seconds."""
    (c,) = lab.start_containers(1, prefix="rst")
    wait_for_log(c, ONAIR_LINE, 20)
    out = []
    for _ in range(times):
        t0 = time.monotonic()
        c.restart(timeout=30)
        out.append(time.monotonic() - t0)
        time.sleep(0.5)
    lab.remove([c])
    return out


def one_trial(lab: Lab, sections: dict[str, dict[str, Any]]) -> dict[str, Any]:
    lab.gpu.set_persistence(False)  # as in the field report; the daemon fixes it at start
    (c,) = lab.start_containers(1, prefix="rec")
    wait_for_log(c, ONAIR_LINE, 20)
    daemon = lab.start_daemon({**sections, "watch": lab.watch_names([c])})
    lab.wait_watched(daemon, [c], 30)
    daemon.wait_for("gpu_persistence_enabled", timeout=30)  # the start-up drift fix
    time.sleep(max(0.0, 5.5 - (time.time() - daemon.started)))  # past start_grace
    lab.gpu.set_persistence(False)
    fault = time.time()
    assert lab.gpu.idle_driver(), "persistence is off: idling must end the session"
    name = c.name
    matched = daemon.wait_for("log_pattern_matched", 30, container=name)
    confirmed = daemon.wait_for("probe_failed", 30, container=name)
    restarted = daemon.wait_for("container_restarted", 60, container=name)
    recovered = daemon.wait_for("container_recovered", 90, container=name)
    enabled = [t for t in daemon.times("gpu_persistence_enabled") if t >= fault]
    logged = engine_time(c, ER05_LINE, fault)
    lab.stop_daemon(daemon)
    lab.remove([c])
    marks = {
        "er05_logged": logged,
        "detected": record_time(matched),
        "confirmed": record_time(confirmed),
        "persistence_enabled": enabled[0] if enabled else None,
        "restarted": record_time(restarted),
        "verified": record_time(recovered),
    }
    steps: dict[str, Any] = {}
    prev = fault
    for step in STEPS:
        at = marks[step]
        steps[step] = None if at is None else round(at - prev, 3)
        prev = at if at is not None else prev
    steps["total"] = round(marks["verified"] - fault, 3) if marks["verified"] else None
    steps["fault_to_restarted"] = round(record_time(restarted) - fault, 3)
    steps["cause_persistence_off"] = restarted.get("cause") == "persistence_off"
    return steps


def measure(lab: Lab, trials: int, *, grace_variant: bool = True) -> dict[str, Any]:
    """``trials`` recoveries at the defaults (plus, with ``grace_variant``, one with
    ``probe.start_grace = 1s``) and the restart baseline; medians in seconds."""
    lab.say(f"recovery: {trials} trial(s) at the defaults, restart baseline")
    base = restart_baseline(lab, max(3, trials))
    runs = [one_trial(lab, {}) for _ in range(trials)]
    result: dict[str, Any] = {
        "trials": trials,
        "docker_restart_s": round(statistics.median(base), 3),
        "steps_s": {k: _median([r[k] for r in runs]) for k in (*STEPS, "fault_to_restarted")},
        "total_s": _median([r["total"] for r in runs]),
        "cause_persistence_off": all(r["cause_persistence_off"] for r in runs),
    }
    result["target_s"] = round(result["docker_restart_s"] + 2.0, 3)
    if grace_variant:
        short = one_trial(lab, {"probe": {"start_grace": "1s"}})
        result["start_grace_1s"] = {
            "steps_s": {k: short[k] for k in (*STEPS, "fault_to_restarted")},
            "total_s": short["total"],
        }
    lab.gpu.set_persistence(True)
    return result


def _median(values: list[float | None]) -> float | None:
    real = [v for v in values if v is not None]
    return round(statistics.median(real), 3) if real else None


__all__ = ["STEPS", "measure", "restart_baseline"]
