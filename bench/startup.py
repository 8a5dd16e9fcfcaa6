"""6. Start-up with watched containers, and the package's import time.

- ``ready``: exec of ``python -m gpuwatchd run`` → the ``READY=1`` datagram on
  a notify socket the bench owns (``NOTIFY_SOCKET``), as systemd sees it.
- ``all_watched``: → the last container's ``watch_set_changed``.
- ``first_round``: → every container has had a probe, i.e. its ``nvidia-smi
  -L`` ran to ``nvmlShutdown`` (the stand-in driver's call log, by container
  host name; the quiet containers never run nvidia-smi themselves).

What "first complete round" means here: each container's probe timer starts
at a random phase in ``[0, probe.interval)``, on purpose, so probes of many
containers never fire at once. At the default interval (60 s) the first
round therefore takes up to a minute *by design*; it is measured with
``probe.interval = 2s`` (the phase spread then ends at 2 s, and what is left
is the daemon's and the engine's own cost: 50 ``docker exec`` at most 8 at a
time).
"""

from __future__ import annotations

import re
import statistics
import subprocess
import sys
import time
from typing import Any

from bench.harness import QUIET, Lab

FIRST_ROUND_INTERVAL = 2.0


def measure(lab: Lab, containers: int) -> dict[str, Any]:
    """Start-up figures with ``containers`` watched (seconds from exec)."""
    cs = lab.start_containers(containers, environment=QUIET, prefix="up")
    lab.gpu.set_persistence(True)
    time.sleep(5.5)  # past start_grace, as on a host where the containers already ran
    hosts = {c.id[:12]: c.name for c in cs}
    lab.gpu.clear_calls()
    lab.say(f"start-up: {containers} containers")
    daemon = lab.start_daemon(
        {"watch": lab.watch_names(cs), "probe": {"interval": f"{FIRST_ROUND_INTERVAL:g}s"}},
        notify=True,
    )
    lab.wait_watched(daemon, cs, 60)
    watched_at = max(daemon.times("watch_set_changed"))
    deadline = time.monotonic() + 60
    first: dict[str, float] = {}
    while time.monotonic() < deadline and len(first) < len(hosts):
        for call in lab.gpu.calls("nvmlShutdown"):
            if call.host in hosts and call.host not in first:
                first[call.host] = call.time
        time.sleep(0.2)
    ready = daemon.notify.ready_at if daemon.notify else None
    started_rec = daemon.times("daemon_started")
    lab.stop_daemon(daemon)
    lab.remove(cs)
    t0 = daemon.started
    return {
        "containers": containers,
        "ready_s": round(ready - t0, 3) if ready else None,
        "daemon_started_record_s": round(started_rec[0] - t0, 3) if started_rec else None,
        "all_watched_s": round(watched_at - t0, 3),
        "first_round_s": round(max(first.values()) - t0, 3) if len(first) == len(hosts) else None,
        "first_round_probe_interval_s": FIRST_ROUND_INTERVAL,
        "probed_containers": len(first),
    }


_LINE = re.compile(r"import time:\s+(\d+)\s+\|\s+(\d+)\s+\|(\s*)(\S+)")


def import_time(runs: int = 5) -> dict[str, Any]:
    """``python -X importtime -c 'import gpuwatchd.daemon'``: the median total (top-level
    cumulative), the biggest modules, and the bare interpreter's wall time for scale."""
    totals: list[float] = []
    walls: list[float] = []
    bare: list[float] = []
    top: dict[str, int] = {}
    for _ in range(runs):
        t = time.monotonic()
        out = subprocess.run(
            [sys.executable, "-X", "importtime", "-c", "import gpuwatchd.daemon"],
            capture_output=True, text=True, check=True,
        )
        walls.append(time.monotonic() - t)
        total = 0
        for line in out.stderr.splitlines():
            m = _LINE.match(line)
            if m and len(m.group(3)) == 1:  # top level: one space before the name
                total += int(m.group(2))
                top[m.group(4)] = int(m.group(2))
        totals.append(total / 1e6)
        t = time.monotonic()
        subprocess.run([sys.executable, "-c", "pass"], check=True)
        bare.append(time.monotonic() - t)
    biggest = sorted(top.items(), key=lambda kv: -kv[1])[:5]
    return {
        "import_s": round(statistics.median(totals), 3),
        "process_wall_s": round(statistics.median(walls), 3),
        "bare_python_wall_s": round(statistics.median(bare), 3),
        "largest_top_level": {k: round(v / 1e6, 3) for k, v in biggest},
    }
