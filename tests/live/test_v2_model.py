"""The live daemon on a host with the cgroup v2 failure model: the kernel check never
turns a fault that is not lost device access into a restart."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest
from docker.models.containers import Container

from tests.bench.gpu import GpuController
from tests.live.conftest import healthy, started_at
from tests.live.daemon_process import DaemonProcess

pytestmark = [pytest.mark.docker, pytest.mark.slow]

FAST = {"probe": {"start_grace": "1s"}}


def test_tuner_only_er05_beside_a_v2_revoke_is_not_restarted(
    gpu: GpuController, make_container: Callable[..., Container],
    start_daemon: Callable[..., DaemonProcess], watched: dict[str, str],
) -> None:
    """A tuner fault (ER-05, NVML fine) next to a container whose access a v2 program
    revoked: only the revoked one is restarted, once, as device_access_lost (certain)."""
    gpu.set_persistence(True)
    tuner = make_container("konomi", mode="tuner_fault", labels=watched,
                           environment={"WORKLOAD_INTERVAL": "0.5"})
    konomi = make_container("konomi", labels=watched)
    healthy(konomi)
    tuner_start = started_at(tuner)
    daemon = start_daemon(FAST)
    daemon.wait_for("watch_set_changed", container=konomi.name, timeout=20)
    gpu.revoke_device_access_v2(konomi)
    restarted = daemon.wait_for("container_restarted", container=konomi.name, timeout=30)
    assert (restarted["cause"], restarted["confidence"]) == ("device_access_lost", "certain")
    daemon.wait_for("log_match_not_gpu", container=tuner.name, timeout=20)
    time.sleep(5)
    assert [r["container"] for r in daemon.find("container_restarted")] == [konomi.name]
    assert started_at(tuner) == tuner_start


def test_version_mismatch_with_a_v2_revoke_is_never_restarted(
    gpu: GpuController, make_container: Callable[..., Container],
    start_daemon: Callable[..., DaemonProcess], watched: dict[str, str],
) -> None:
    """Host NVML failing comes first: the kernel's refusal does not make it restartable."""
    gpu.set_persistence(True)
    konomi = make_container("konomi", labels=watched)
    healthy(konomi)
    before = started_at(konomi)
    daemon = start_daemon(FAST)
    daemon.wait_for("watch_set_changed", container=konomi.name, timeout=20)
    gpu.set_version_mismatch(True)
    gpu.revoke_device_access_v2(konomi)
    skipped = daemon.wait_for("remediation_skipped", container=konomi.name, timeout=30)
    assert skipped["cause"] == "version_mismatch"
    time.sleep(6)
    assert not daemon.find("container_restarted")
    assert started_at(konomi) == before
