"""Faults survived: host NVML hangs from the very first call.

Made for real: the stand-in driver's nvmlInit sleeps for longer than the test.
The daemon must stop pinging systemd's watchdog (so systemd restarts it) once
no GPU poll has come back within its bound, first poll included.
"""

from __future__ import annotations

import shutil
import socket
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.bench.gpu import GpuController
from tests.live.daemon_process import DaemonProcess

pytestmark = [pytest.mark.docker, pytest.mark.slow]

#: The daemon's bound for a GPU poll to come back: poll_interval * 2 + 60 s.
POLL_INTERVAL = 1.0
BOUND = POLL_INTERVAL * 2 + 60.0


@pytest.fixture
def notify_socket() -> Iterator[tuple[str, list[tuple[float, str]]]]:
    """A NOTIFY_SOCKET to hand the daemon, and every datagram it sent (when, text)."""
    folder = tempfile.mkdtemp(prefix="gwd-notify-")  # short: AF_UNIX paths are limited
    path = str(Path(folder) / "notify")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(0.2)
    received: list[tuple[float, str]] = []
    stop = threading.Event()

    def read() -> None:
        while not stop.is_set():
            try:
                received.append((time.monotonic(), sock.recv(4096).decode()))
            except TimeoutError:
                continue
            except OSError:
                return

    thread = threading.Thread(target=read, daemon=True)
    thread.start()
    yield path, received
    stop.set()
    thread.join(5)
    sock.close()
    shutil.rmtree(folder, ignore_errors=True)


def test_nvml_hanging_from_the_first_call_stops_the_watchdog_ping(
    gpu: GpuController, start_daemon: Callable[..., DaemonProcess],
    notify_socket: tuple[str, list[tuple[float, str]]],
) -> None:
    path, received = notify_socket
    gpu.set_init_delay(15 * 60 * 1000)  # every nvmlInit: longer than this test
    started = time.monotonic()
    daemon = start_daemon({"gpu": {"poll_interval": POLL_INTERVAL}},
                          env={"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "3000000"})
    daemon.wait_for("daemon_started", timeout=20)
    time.sleep(BOUND + 15)
    pings = [at - started for at, text in received if "WATCHDOG=1" in text]
    assert any("READY=1" in text for _, text in received)
    assert pings, "the watchdog was never pinged"
    # No GPU poll ever came back: past the bound (and a ping period), no ping.
    late = [at for at in pings if at > BOUND + 5]
    assert late == [], f"pinged {len(late)} times after the bound"
    # SIGTERM still ends it, the NVML call stuck in its worker notwithstanding.
    assert daemon.stop(timeout=30) == 0, "the daemon needed SIGKILL"
    gpu.set_init_delay(0)
