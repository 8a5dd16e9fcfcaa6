"""Hostile local users and hostile containers against the real daemon on the real engine.

Each test mounts one attack on an unprivileged surface (the metrics port, the
logs a container prints) and then checks that the watchdog still does its one
job: another watched container's fault is healed as usual.
"""

from __future__ import annotations

import contextlib
import os
import resource
import socket
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from docker.models.containers import Container

from tests.bench.gpu import GpuController
from tests.live.conftest import healthy
from tests.live.daemon_process import DaemonProcess
from tests.live.test_operator_tools import FAST, free_port, status

pytestmark = [pytest.mark.docker, pytest.mark.slow]

#: systemd's default soft limit on open files, which the daemon runs under.
SYSTEMD_SOFT_NOFILE = 1024
#: Idle connections a local user holds open: more than that limit.
FLOOD = 1100


@contextlib.contextmanager
def idle_connections(port: int, count: int, budget: float = 90.0) -> Iterator[list[socket.socket]]:
    """Up to ``count`` TCP connections to 127.0.0.1:port that never send a byte.

    Connected one after another, as an attacker would, until ``count`` are open or
    ``budget`` seconds have passed (a server that stops accepting stops the flood).
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < count + 256:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, count + 1024), hard))
    held: list[socket.socket] = []
    deadline = time.monotonic() + budget
    try:
        while len(held) < count and time.monotonic() < deadline:
            s = socket.socket()
            s.settimeout(0.2)
            try:
                s.connect(("127.0.0.1", port))
            except OSError:
                s.close()
                continue
            held.append(s)
        yield held
    finally:
        for s in held:
            s.close()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_a_metrics_port_flood_does_not_blind_the_watchdog(
    gpu: GpuController, make_container: Callable[..., Container],
    start_daemon: Callable[..., DaemonProcess], watched: dict[str, str],
) -> None:
    """1,100 idle connections to /metrics, the daemon at a soft limit of 1,024 files:
    a watched container's fault is healed, Docker and NVML stay available, status
    answers, and /metrics answers again once the flood is gone."""
    gpu.set_persistence(True)
    konomi = make_container("konomi", labels=watched)
    healthy(konomi)
    port = free_port()
    daemon = start_daemon({**FAST, "metrics": {"listen": f"127.0.0.1:{port}"}},
                          nofile=SYSTEMD_SOFT_NOFILE)
    daemon.wait_for("watch_set_changed", container=konomi.name, timeout=20)
    daemon.wait_for("daemon_started", timeout=20)

    with idle_connections(port, FLOOD) as held:
        assert len(held) > SYSTEMD_SOFT_NOFILE // 2, f"only {len(held)} connections opened"
        gpu.revoke_device_access(konomi)
        daemon.wait_for("container_restarted", container=konomi.name, timeout=30)
        daemon.wait_for("container_recovered", container=konomi.name, timeout=60)
        assert status(daemon)["docker_available"] is True
    assert not daemon.find("docker_unavailable"), daemon.summary()
    assert not daemon.find("nvml_unavailable"), daemon.summary()
    assert not daemon.find("internal_error"), daemon.summary()

    def scraped() -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
                return b"gpuwatchd_up 1.0" in r.read()
        except OSError:
            return False

    deadline = time.monotonic() + 30
    while not scraped():
        assert time.monotonic() < deadline, "/metrics does not answer after the flood"
        time.sleep(0.5)
    assert daemon.proc.poll() is None


def test_a_catastrophic_pattern_does_not_freeze_the_daemon(
    gpu: GpuController, make_container: Callable[..., Container],
    start_daemon: Callable[..., DaemonProcess], watched: dict[str, str],
) -> None:
    """``re:(a+)+$`` and a container printing the line that makes a backtracking engine
    run for hours: the line is matched or not in linear time, and another watched
    container's fault is healed as usual."""
    gpu.set_persistence(True)
    hostile_line = "a" * 34 + "!"
    script = f"while :; do echo '{hostile_line}'; sleep 0.2; done"
    hostile = make_container("konomi", labels=watched, entrypoint=["sh", "-c", script])
    konomi = make_container("konomi", labels=watched)
    healthy(konomi)
    daemon = start_daemon({**FAST, "logs": {"patterns": ["(ER-05)", "re:(a+)+$"]}})
    daemon.wait_for("watch_set_changed", container=hostile.name, timeout=20)
    daemon.wait_for("watch_set_changed", container=konomi.name, timeout=20)
    time.sleep(2)  # the hostile lines are being read
    gpu.revoke_device_access(konomi)
    daemon.wait_for("container_restarted", container=konomi.name, timeout=30)
    daemon.wait_for("container_recovered", container=konomi.name, timeout=60)
    assert status(daemon)["pid"] == daemon.proc.pid
    assert not daemon.find("internal_error"), daemon.summary()


def test_a_failed_accept_is_one_folded_record_not_a_traceback(
    start_daemon: Callable[..., DaemonProcess], tmp_path: Path,
) -> None:
    """The daemon out of file descriptors (its soft limit lowered to what it holds)
    while clients queue on the control socket: accept_failed records, folded, no
    traceback; once the limit is back, status answers."""
    daemon = start_daemon()
    daemon.wait_for("daemon_started", timeout=20)
    pid = daemon.proc.pid
    assert status(daemon)["pid"] == pid  # the control socket is up
    soft, hard = resource.prlimit(pid, resource.RLIMIT_NOFILE)
    path = str(tmp_path / "run" / "control.sock")
    clients: list[socket.socket] = []
    try:
        resource.prlimit(pid, resource.RLIMIT_NOFILE, (len(os.listdir(f"/proc/{pid}/fd")), hard))
        for _ in range(4):
            c = socket.socket(socket.AF_UNIX)
            c.connect(path)  # queued by the kernel; the daemon's accept() fails
            clients.append(c)
            time.sleep(0.7)
        daemon.wait_for("accept_failed", listener=path, timeout=20)
    finally:
        resource.prlimit(pid, resource.RLIMIT_NOFILE, (soft, hard))
        for c in clients:
            c.close()
    assert status(daemon)["pid"] == pid
    daemon.wait_for("accept_failed", listener=path, folded=True, timeout=20)
    assert len(daemon.find("accept_failed", listener=path)) == 2, daemon.summary()
    assert not [line for line in daemon.other_lines if "Traceback" in line]
    assert daemon.proc.poll() is None
