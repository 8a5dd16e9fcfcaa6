"""One daemon per runtime directory: a second `gpuwatchd run` on the same config is
refused and the first keeps its control socket. No Docker engine is needed: the
daemons run degraded against a socket that does not exist."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gpuwatchd.exitcodes import ExitCode
from tests.bench import wait_for
from tests.live.daemon_process import DaemonProcess


def status(daemon: DaemonProcess) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "gpuwatchd", "status", "--json",
           "--config", str(daemon.config_path)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)


def answering_pid(daemon: DaemonProcess) -> Any:
    proc = status(daemon)
    return json.loads(proc.stdout)["pid"] if proc.returncode == 0 else None


def test_a_second_daemon_is_refused_and_the_first_keeps_answering(
    start_daemon: Callable[..., DaemonProcess], tmp_path: Path
) -> None:
    """The second exits 2 with one line naming the first's pid; the first still answers
    `gpuwatchd status`; once the first has stopped, a new daemon starts."""
    no_docker = {"DOCKER_HOST": f"unix://{tmp_path}/no-docker.sock"}
    first = start_daemon(env=no_docker)
    first.wait_for("daemon_started", timeout=30)
    wait_for(lambda: answering_pid(first) == first.proc.pid, 30, 0.5,
             message="the first daemon answers on its control socket")

    second = start_daemon(env=no_docker)
    try:
        rc: int | None = second.proc.wait(20)
    except subprocess.TimeoutExpired:
        rc = None
    second.stop()
    assert rc == ExitCode.USAGE, f"second daemon: rc={rc}, records: {second.summary()}"
    assert second.records == []
    assert second.other_lines == [
        f"gpuwatchd: another gpuwatchd (pid {first.proc.pid}) is running "
        f"with runtime_dir {tmp_path / 'run'}"
    ]

    assert first.proc.poll() is None
    assert answering_pid(first) == first.proc.pid
    assert (tmp_path / "run" / "control.sock").exists()

    assert first.stop() == 0
    third = start_daemon(env=no_docker)
    third.wait_for("daemon_started", timeout=30)
    wait_for(lambda: answering_pid(third) == third.proc.pid, 30, 0.5,
             message="a new daemon answers once the first has stopped")
