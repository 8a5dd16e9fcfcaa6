"""The device-access check against the real kernel and the real engine.

The helper joins a bench container's cgroups for real and opens its
``/dev/nvidiactl``; the failure models revoke access for real (a v1
``devices.deny`` rule, or a v2 device program beside the container's own).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest
from docker.models.containers import Container

from gpuwatchd.adapters.device_check import device_access, kernel_check
from gpuwatchd.adapters.docker_engine import ContainerInfo
from gpuwatchd.core.device_access import Access, parse_mountinfo, parse_proc_cgroup
from gpuwatchd.core.docker_inspect import container_info
from tests.bench import ER05_LINE, ContainerFactory, GpuController, wait_for_log
from tests.bench.engines import Engine, on_every_engine

pytestmark = pytest.mark.docker

#: The two ways the bench revokes device access: cgroup v1 rules, cgroup v2 programs.
REVOKERS: dict[str, Callable[[GpuController, Container], None]] = {
    "v1": GpuController.revoke_device_access,
    "v2": GpuController.revoke_device_access_v2,
}


def info_of(container: Container) -> ContainerInfo:
    container.reload()
    return container_info(container.attrs)


def cgroup_dirs(container: Container) -> list[Path]:
    """The container's cgroup2 and v1 devices directories on this host."""
    info = info_of(container)
    cg = parse_proc_cgroup(Path(f"/proc/{info.pid}/cgroup").read_text())
    mounts = parse_mountinfo(Path("/proc/self/mountinfo").read_text())
    assert mounts.unified and cg.unified and mounts.devices and cg.devices
    return [
        Path(mounts.unified, cg.unified.lstrip("/")),
        Path(mounts.devices, cg.devices.lstrip("/")),
    ]


def members(container: Container) -> list[set[int]]:
    dirs = cgroup_dirs(container)
    return [{int(p) for p in (d / "cgroup.procs").read_text().split()} for d in dirs]


@pytest.fixture
def konomi(make_container: ContainerFactory) -> Container:
    container = make_container("konomi", environment={"WORKLOAD_INTERVAL": "0.5"})
    return container


def helpers_in(container: Container) -> list[int]:
    """Processes in the container's cgroups that are a device-check helper."""
    found = []
    for pid in set().union(*members(container)):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue  # the workload's own short-lived processes come and go
        if b"device_check_helper" in cmdline:
            found.append(pid)
    return found


def test_healthy_container_is_allowed_and_nothing_is_left_behind(konomi: Container) -> None:
    check = kernel_check(info_of(konomi))
    assert check.access is Access.ALLOWED, check
    assert "ENXIO" in check.reason  # the bench node has no driver behind it
    assert helpers_in(konomi) == []  # the helper is gone from the container's cgroups
    for d in cgroup_dirs(konomi):
        assert not [p for p in d.iterdir() if p.name.startswith("gpuwatchd-device-check")]


@pytest.mark.parametrize("model", sorted(REVOKERS))
def test_revoked_access_is_lost(gpu: GpuController, konomi: Container, model: str) -> None:
    REVOKERS[model](gpu, konomi)
    check = device_access(info_of(konomi))
    assert check.access is Access.LOST, check
    assert "EPERM" in check.reason
    konomi.restart(timeout=10)
    assert kernel_check(info_of(konomi)).access is Access.ALLOWED


def test_field_report_fault_is_allowed(gpu: GpuController, konomi: Container) -> None:
    """Persistence off and the driver idled: NVML fails inside, but the device is reachable."""
    assert gpu.idle_driver()
    wait_for_log(konomi, ER05_LINE, 30)
    check = device_access(info_of(konomi))
    assert check.access is Access.ALLOWED, check


def test_paused_container_cannot_tell_without_joining(
    gpu: GpuController, konomi: Container
) -> None:
    gpu.revoke_device_access_v2(konomi)
    konomi.pause()
    try:
        before = members(konomi)  # frozen: nothing comes or goes now
        started = time.monotonic()
        check = kernel_check(info_of(konomi), timeout=5.0)
        assert check.access is Access.CANNOT_TELL, check
        assert "paused" in check.reason
        assert time.monotonic() - started < 5.0  # decided before any helper ran
        assert members(konomi) == before
    finally:
        konomi.unpause()
    assert kernel_check(info_of(konomi)).access is Access.LOST


def test_container_without_nvidia_device_cannot_tell(make_container: ContainerFactory) -> None:
    plain = make_container("konomi", gpu=False)
    assert kernel_check(info_of(plain)).access is Access.CANNOT_TELL


@on_every_engine
@pytest.mark.parametrize("model", sorted(REVOKERS))
def test_without_a_visible_pid_the_cgroup_is_found_by_id_on_every_engine(
    engine: Engine, gpu: GpuController, make_container: ContainerFactory, model: str,
) -> None:
    """As from another PID namespace (the PID means nothing): the container's cgroup
    (Docker's /docker/<id>, Podman's /libpod_parent/libpod-<id>) is found by its ID
    and the host node opened from inside it.  The bench's node stands where a real
    host has /dev/nvidiactl."""
    box = make_container("konomi", environment={"WORKLOAD_INTERVAL": "0.5"})
    blind = replace(info_of(box), pid=0, expects_nvidia_device=True,
                    nvidiactl_on_host=str(gpu.device_node))
    assert kernel_check(blind).access is Access.ALLOWED
    REVOKERS[model](gpu, box)
    check = kernel_check(blind)
    assert check.access is Access.LOST, check
