"""4. Idle cost: watched, healthy, quiet containers at the default intervals.

Quiet konomi containers (one status line an hour, no nvidia-smi of their
own) are watched at the defaults: a probe per container every 60 s (random
phase), a GPU poll every 30 s. After every container is watched and the
start-up work has settled, the daemon's ``/proc`` is sampled at the start and
end of the window: CPU (utime + stime, % of one core), RSS, threads, open
descriptors. The same daemon with nothing to watch gives the base for the
thread and descriptor formula.
"""

from __future__ import annotations

import os
import socket
import time
from collections import Counter
from typing import Any

from bench.harness import QUIET, Daemon, Lab, dockerd_pid, safe_sample, usage_between

SETTLE = 8.0  #: seconds after the last container joined before the window opens


def _window(daemon: Daemon, seconds: float) -> dict[str, Any]:
    engine = dockerd_pid()
    a, ea = safe_sample(daemon.pid), safe_sample(engine)
    time.sleep(seconds)
    b, eb = safe_sample(daemon.pid), safe_sample(engine)
    return {"gpuwatchd": usage_between(daemon.pid, a, b), "dockerd": usage_between(engine, ea, eb)}


def measure(lab: Lab, containers: int, seconds: float) -> dict[str, Any]:
    """Idle cost with ``containers`` watched for ``seconds``, and with none."""
    lab.gpu.set_persistence(True)
    lab.say("idle: the daemon with nothing to watch")
    empty = lab.start_daemon({"watch": {"containers": [], "labels": ["gpuwatchd-bench.none=1"]}})
    empty.wait_for("daemon_started", 30)
    time.sleep(SETTLE)
    base = _window(empty, min(10.0, seconds))
    lab.stop_daemon(empty)

    cs = lab.start_containers(containers, environment=QUIET, prefix="idle")
    daemon = lab.start_daemon({"watch": lab.watch_names(cs)})
    lab.wait_watched(daemon, cs, 120)
    time.sleep(SETTLE)
    lab.say(f"idle: {containers} watched containers for {seconds:g}s")
    window_start = time.time()
    loaded = _window(daemon, seconds)
    kinds = fd_kinds(daemon.pid)
    probes = len([c for c in lab.gpu.calls("nvmlShutdown")
                  if c.host != socket.gethostname() and c.time >= window_start])
    lab.stop_daemon(daemon)
    lab.remove(cs)
    g, g0 = loaded["gpuwatchd"], base["gpuwatchd"]
    return {
        "containers": containers,
        "seconds": seconds,
        "gpuwatchd": g,
        "dockerd": loaded["dockerd"],
        "empty_gpuwatchd": g0,
        "threads_per_container": _per(g["threads"], g0["threads"], containers),
        "fds_per_container": _per(g["fds"], g0["fds"], containers),
        "fd_kinds": kinds,
        "probes_in_window": probes,
    }


def _per(loaded: int | None, base: int | None, n: int) -> float | None:
    if loaded is None or base is None or n == 0:
        return None
    return round((loaded - base) / n, 2)


def fd_kinds(pid: int) -> dict[str, int]:
    """Open descriptors by kind (socket, pipe, anon_inode:[eventpoll], file, ...)."""
    kinds: Counter[str] = Counter()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        kinds[target.split(":[")[0] if ":[" in target else
              target if target.startswith("anon_inode") else "file"] += 1
    return dict(kinds.most_common())
