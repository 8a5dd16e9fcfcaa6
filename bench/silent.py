"""3. Silent loss: NVML gone inside a container that logs nothing about it.

Quiet konomi containers (no nvidia-smi of their own, so no ER-05 ever) are
watched with a short probe interval. At random moments the bench revokes
each one's access to the NVIDIA device node (a cgroup v1 ``devices.deny``
rule, or a cgroup v2 device program: what a ``systemctl daemon-reload`` does
under the systemd cgroup driver): NVML
fails inside, nothing is printed. Only the timer's probe can find it.
Detection time is the ``probe_failed`` record minus the revoke time; it is
uniform over one interval plus the probe's own cost, so the figure to hold
against the target is the maximum (and max - interval: the overhead).

The host's persistence mode stays on, so no host-drift round of probes can
find the fault early.
"""

from __future__ import annotations

import random
import time
from typing import Any

from bench.harness import QUIET, Lab, record_time, summary_ms


def measure(lab: Lab, containers: int, interval: float, model: str = "v1") -> dict[str, Any]:
    """Revokes ``containers`` containers at random times within one ``interval``.

    ``model`` is how: ``v1`` (a ``devices.deny`` rule) or ``v2`` (a device
    program beside the container's own, as systemd's after a reload).
    """
    revoke = lab.gpu.revoke_device_access if model == "v1" else lab.gpu.revoke_device_access_v2
    cs = lab.start_containers(containers, environment=QUIET, prefix="sil")
    lab.gpu.set_persistence(True)
    daemon = lab.start_daemon(
        {"watch": lab.watch_names(cs), "probe": {"interval": f"{interval:g}s"}}
    )
    lab.wait_watched(daemon, cs, 60)
    # Every timer running, and past start_grace: one interval plus the grace.
    time.sleep(interval + 5.5)
    lab.say(f"silent loss ({model}): {containers} containers, probe interval {interval:g}s")
    order = list(cs)
    random.shuffle(order)
    offsets = sorted(random.uniform(0, interval) for _ in order)
    t0 = time.time()
    revoked: dict[str, float] = {}
    for c, off in zip(order, offsets, strict=True):
        time.sleep(max(0.0, t0 + off - time.time()))
        revoked[c.name] = time.time()
        revoke(c)
    detections: list[float] = []
    missed = 0
    for name, at in revoked.items():
        try:
            rec = daemon.wait_for("probe_failed", interval * 2 + 15, container=name)
        except AssertionError:
            missed += 1
            continue
        detections.append(record_time(rec) - at)
    lab.stop_daemon(daemon)
    lab.remove(cs)
    figures = summary_ms(detections)
    max_s = (figures["max_ms"] or 0) / 1000.0
    return {
        "model": model,
        "probe_interval_s": interval,
        "containers": containers,
        "missed": missed,
        **figures,
        "max_over_interval_ms": round((max_s - interval) * 1000.0, 1) if detections else None,
    }
