"""Faults survived at shutdown: the real daemon, SIGTERM during a notification storm
with a webhook and an Apprise URL whose servers answer one byte at a time, and
commands that ignore SIGTERM and leave children, ends within the unit's
TimeoutStopSec and leaves no process behind."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.bench import wait_for
from tests.bench.gpu import GpuController
from tests.faults.hostile import HostileServer, alive, pids_in, trickle
from tests.faults.test_notify_bounds import STUBBORN
from tests.live.daemon_process import DaemonProcess

UNIT = Path(__file__).resolve().parents[2] / "packaging" / "systemd" / "gpuwatchd.service"


def timeout_stop_sec() -> float:
    """The shipped unit's TimeoutStopSec, in seconds."""
    match = re.search(r"^TimeoutStopSec=(\d+)s$", UNIT.read_text(), re.MULTILINE)
    assert match, "TimeoutStopSec=<n>s not found in the unit"
    return float(match.group(1))


@pytest.mark.docker
@pytest.mark.slow
@pytest.mark.timeout(300)
def test_sigterm_during_a_notification_storm_ends_in_time_with_no_orphans(
    gpu: GpuController, start_daemon: Callable[..., DaemonProcess], tmp_path: Path
) -> None:
    """16 GPUs whose persistence mode cannot be set: 16 gpu_persistence_set_failed
    records at once, each notified by a command that ignores SIGTERM and starts a
    child, and by a webhook and an Apprise URL whose servers answer one byte every
    0.5 s."""
    limit = timeout_stop_sec()
    pids = tmp_path / "pids"
    pids.mkdir()
    command = tmp_path / "stubborn.py"
    command.write_text(STUBBORN)
    webhook = HostileServer(trickle())
    apprise_target = HostileServer(trickle())
    try:
        gpu.set_gpu_count(16)
        gpu.set_persistence(False)
        gpu.set_set_permitted(False)
        daemon = start_daemon({
            "gpu": {"poll_interval": "1s"},
            "remediation": {"cooldown": "1s"},
            "notify": {"command": [sys.executable, str(command), str(pids)],
                       "webhook": f"{webhook.url}/hook",
                       "urls": [f"ntfy://127.0.0.1:{apprise_target.port}/gpu"],
                       "timeout": "60s"},
        })
        daemon.wait_for("gpu_persistence_set_failed", count=16, timeout=60)
        wait_for(lambda: len(pids_in(pids)) >= 2 and webhook.connections >= 1
                 and apprise_target.connections >= 1, 60,
                 message="notifications under way")

        started = time.monotonic()
        daemon.signal(signal.SIGTERM)
        try:
            rc = daemon.proc.wait(limit)
        except subprocess.TimeoutExpired:
            pytest.fail(f"still running {limit:g}s (TimeoutStopSec) after SIGTERM; "
                        f"{daemon.summary()}")
        took = time.monotonic() - started
        print(f"stopped {took:.1f}s after SIGTERM (TimeoutStopSec={limit:g}s), "
              f"{len(pids_in(pids))} notification processes started")
        assert rc == 0, daemon.other_lines[-20:]
        daemon.wait_for("daemon_stopping", timeout=5)
        stopped = [r for r in daemon.find("notify_failed")
                   if "gpuwatchd is stopping" in str(r.get("error"))]
        assert stopped, daemon.summary()
        wait_for(lambda: not any(alive(p) for p in pids_in(pids)), 10,
                 message="no notification process left behind")
        wait_for(webhook.client_gone.is_set, 10, message="the webhook connection closed")
        wait_for(apprise_target.client_gone.is_set, 10,
                 message="the Apprise delivery's connection closed")
        assert not [line for line in daemon.other_lines if "Traceback" in line]
    finally:
        webhook.close()
        apprise_target.close()
