"""One container broken five times in a row: five restarts, each told in order;
a tuner-fault container is still spared.

The real daemon (a subprocess), the real Docker engine, the stand-in driver.
The probe interval is 60 s, so every fault is found from the log path. Each
fault is the field report's: persistence off, the driver idles, the workload
logs ER-05 until gpuwatchd sets persistence and restarts it.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import docker
import pytest
from docker.models.containers import Container

from tests.bench.gpu import GpuController
from tests.live.conftest import Sections, healthy, started_at
from tests.live.daemon_process import DaemonProcess

pytestmark = [pytest.mark.docker, pytest.mark.slow]

FAULTS = 5
REPEAT: Sections = {
    "probe": {"interval": "60s"},
    "remediation": {"cooldown": "1s", "max_restarts": 10, "window": "10m"},
}


def check_story(records: list[dict[str, object]], name: str) -> None:
    """Each restart is preceded, since the one before, by its log_pattern_matched and
    probe_failed, written unfolded; no summary stands for a single record."""
    mine = [r for r in records if r.get("container") == name or "gpu_uuid" in r]
    restarts = [i for i, r in enumerate(mine) if r["event"] == "container_restarted"]
    assert len(restarts) == FAULTS, [r["event"] for r in mine]
    previous = -1
    for k, at in enumerate(restarts, 1):
        story = mine[previous + 1:at]
        for cause in ("log_pattern_matched", "probe_failed"):
            found = [r for r in story if r["event"] == cause and not r.get("folded")]
            assert found, f"fault {k}: no {cause} before its container_restarted: " \
                          f"{[r['event'] for r in story]}"
        previous = at
    lone = [r for r in records if r.get("folded") and r.get("count", 1) == 1]
    assert not lone, lone


def test_five_faults_in_a_row_are_each_restarted_with_their_reasons_first(
    gpu: GpuController,
    make_container: Callable[..., Container],
    start_daemon: Callable[..., DaemonProcess],
    watched: dict[str, str],
) -> None:
    konomi = make_container("konomi", labels=watched)
    healthy(konomi)
    daemon = start_daemon(REPEAT)
    daemon.wait_for("watch_set_changed", container=konomi.name, timeout=20)
    daemon.wait_for("gpu_persistence_enabled", timeout=20)  # the start-up drift fix
    time.sleep(5.5)  # past start_grace of the container's first start
    for k in range(1, FAULTS + 1):
        gpu.set_persistence(False)
        assert gpu.idle_driver(), "persistence is off: idling must end the driver session"
        daemon.wait_for("container_recovered", timeout=60, count=k, container=konomi.name)
        time.sleep(6)  # the next fault about 6 s after the recovery
    assert not daemon.find("remediation_deferred", container=konomi.name)
    assert not daemon.find("remediation_failed", container=konomi.name)
    check_story(daemon.records, konomi.name)
    assert daemon.stop() == 0
    # What the shutdown flush wrote keeps the rules too.
    check_story(daemon.records, konomi.name)


def test_a_tuner_fault_container_costs_at_most_seven_probes_a_minute(
    gpu: GpuController,
    make_container: Callable[..., Container],
    start_daemon: Callable[..., DaemonProcess],
    watched: dict[str, str],
    docker_client: docker.DockerClient,
) -> None:
    """ER-05 every second while NVML works, for 60 s, with the same settings: at most
    7 probes (one timer probe, one confirmation per 10 s) and no restart."""
    gpu.set_persistence(True)
    tuner = make_container("konomi", mode="tuner_fault", labels=watched,
                           environment={"WORKLOAD_INTERVAL": "1"})
    before = started_at(tuner)
    since = int(time.time())
    daemon = start_daemon(REPEAT)
    daemon.wait_for("log_match_not_gpu", container=tuner.name, timeout=20)
    time.sleep(max(0.0, since + 61 - time.time()))
    execs = list(docker_client.events(
        since=since, until=since + 60, decode=True,
        filters={"container": tuner.id, "event": "exec_create"},
    ))
    assert 1 <= len(execs) <= 7, f"{len(execs)} probes in 60 s"
    assert not daemon.find("container_restarted")
    assert not daemon.find("probe_failed")
    assert started_at(tuner) == before
    matched = daemon.find("log_pattern_matched", container=tuner.name)
    assert sum(int(r.get("count", 1)) for r in matched) >= 40  # lines are reported, not dropped
