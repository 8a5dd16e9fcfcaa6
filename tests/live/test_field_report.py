"""The field report, end to end: persistence off, the driver idles, ER-05 appears.

The real daemon (a subprocess), the real engine (Docker, and Podman through its
Docker-compatible API), the real pynvml against the stand-in driver.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest
from docker.models.containers import Container

from tests.bench import ER05_LINE, ONAIR_LINE, log_lines, wait_for
from tests.bench.engines import Engine, on_every_engine
from tests.bench.gpu import GpuController
from tests.live.daemon_process import DaemonProcess

pytestmark = [pytest.mark.docker, pytest.mark.slow]


def started_at(container: Container) -> str:
    container.reload()
    return str(container.attrs["State"]["StartedAt"])


@on_every_engine
def test_persistence_off_idle_is_healed_once_and_stays_healed(
    engine: Engine,
    gpu: GpuController,
    make_container: Callable[..., Container],
    start_daemon: Callable[..., DaemonProcess],
    watched: dict[str, str],
) -> None:
    """Persistence re-enabled through NVML, one restart, NVML back, ER-05 gone,
    cause persistence_off; a later idle period no longer breaks it."""
    konomi = make_container("konomi", labels=watched)
    wait_for(lambda: ONAIR_LINE in "\n".join(log_lines(konomi)), 20, message="workload healthy")
    daemon = start_daemon()
    daemon.wait_for("watch_set_changed", container=konomi.name, timeout=20)
    # At start the daemon finds persistence off (host drift) and sets it.
    daemon.wait_for("gpu_persistence_enabled", timeout=20)
    assert gpu.persistence() == [True]
    # nvidia-persistenced --no-persistence-mode (or an operator) turns it off
    # again, and the driver idles before the next poll notices.
    gpu.set_persistence(False)
    first_start = started_at(konomi)
    gpu.clear_calls()

    assert gpu.idle_driver(), "persistence is off: idling must end the driver session"

    matched = daemon.wait_for("log_pattern_matched", container=konomi.name, timeout=20)
    restarted = daemon.wait_for("container_restarted", container=konomi.name, timeout=30)
    recovered = daemon.wait_for("container_recovered", container=konomi.name, timeout=60)
    assert restarted["cause"] == "persistence_off"
    assert recovered["container"] == konomi.name
    assert len(daemon.find("gpu_persistence_enabled")) >= 2
    assert gpu.persistence() == [True]
    sets = gpu.calls("nvmlDeviceSetPersistenceMode")
    assert sets and all(c.rc == 0 for c in sets)
    assert started_at(konomi) != first_start
    assert matched["container_id"] == konomi.id[:12]

    # NVML works inside again and the ER-05 lines stop.
    rc, out = konomi.exec_run(["nvidia-smi", "-L"])
    assert rc == 0, out
    restart_time = time.time()
    wait_for(lambda: ONAIR_LINE in "\n".join(log_lines(konomi, since=restart_time)), 20,
             message="workload healthy after the restart")

    # A later idle period changes nothing: persistence is on now.
    assert not gpu.idle_driver()
    time.sleep(3)
    assert ER05_LINE not in "\n".join(log_lines(konomi, since=restart_time))
    assert len(daemon.find("container_restarted", container=konomi.name)) == 1
