"""The failure models against the real Docker engine, through the KonomiTV-like workload."""

from __future__ import annotations

import errno
import os
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from docker.models.containers import Container

from tests.bench import (
    ER05_LINE,
    ONAIR_LINE,
    ContainerFactory,
    GpuController,
    log_lines,
    wait_for,
)
from tests.bench.gpu import NVIDIA_MAJOR, NVIDIACTL_MINOR

pytestmark = pytest.mark.docker

TIMEOUT = 30


def exec_output(container: Container, *cmd: str) -> tuple[int, str]:
    """Runs ``cmd`` in the container (argv, no shell); returns (exit code, combined output)."""
    code, out = container.exec_run(list(cmd))
    return code, out.decode("utf-8", errors="replace")


def wait_lines(container: Container, start: int, count: int, line: str) -> list[str]:
    """Waits for ``count`` lines equal to ``line`` after line ``start``; returns the new lines."""

    def new_lines() -> list[str] | None:
        lines = log_lines(container)[start:]
        return lines if lines.count(line) >= count else None

    return wait_for(
        new_lines,
        TIMEOUT,
        interval=0.2,
        message=lambda: f"{count} x {line!r} in {container.name}: {log_lines(container)[-4:]}",
    )


def host_smi_ok(gpu: GpuController) -> bool:
    proc = subprocess.run(
        ["nvidia-smi", "-L"], env={**os.environ, **gpu.env()}, capture_output=True, check=False
    )
    return proc.returncode == 0


@pytest.fixture
def konomi(make_container: ContainerFactory) -> Container:
    """A running KonomiTV-like container that has logged one healthy encode task."""
    container = make_container("konomi", environment={"WORKLOAD_INTERVAL": "0.3"})
    wait_lines(container, 0, 1, ONAIR_LINE)
    return container


def test_idle_with_persistence_off_breaks_running_containers(
    gpu: GpuController, konomi: Container
) -> None:
    """Persistence off + idle: ER-05 in the log, Unknown Error in the container, host fine."""
    assert gpu.idle_driver() is True
    start = len(log_lines(konomi))
    wait_lines(konomi, start, 2, ER05_LINE)
    code, out = exec_output(konomi, "nvidia-smi", "-L")
    assert (code, out.strip()) == (255, "Failed to initialize NVML: Unknown Error")
    assert host_smi_ok(gpu)
    in_container = [c for c in gpu.calls("nvmlInitWithFlags") if c.host == konomi.id[:12]]
    assert in_container and in_container[-1].rc == 999


def test_idle_with_persistence_on_changes_nothing(gpu: GpuController, konomi: Container) -> None:
    """Persistence on: an idle leaves the container healthy."""
    gpu.set_persistence(True)
    start = len(log_lines(konomi))
    assert gpu.idle_driver() is False
    new = wait_lines(konomi, start, 3, ONAIR_LINE)
    assert ER05_LINE not in new
    assert exec_output(konomi, "nvidia-smi", "-L")[0] == 0


def test_recovers_after_persistence_on_and_restart(gpu: GpuController, konomi: Container) -> None:
    """Persistence on alone does not heal a broken container; a restart then does, for good."""
    gpu.idle_driver()
    wait_lines(konomi, len(log_lines(konomi)), 1, ER05_LINE)
    gpu.set_persistence(True)
    start = len(log_lines(konomi))
    wait_lines(konomi, start, 2, ER05_LINE)  # still broken: it holds the ended session
    konomi.restart(timeout=10)
    start = len(log_lines(konomi))
    wait_lines(konomi, start, 1, ONAIR_LINE)
    assert gpu.idle_driver() is False
    new = wait_lines(konomi, start, 3, ONAIR_LINE)
    assert ER05_LINE not in new


def test_restart_with_persistence_off_works_until_next_idle(
    gpu: GpuController, konomi: Container
) -> None:
    """A restart while persistence is still off heals only until the next idle."""
    gpu.idle_driver()
    wait_lines(konomi, len(log_lines(konomi)), 1, ER05_LINE)
    konomi.restart(timeout=10)
    wait_lines(konomi, len(log_lines(konomi)), 1, ONAIR_LINE)
    gpu.idle_driver()
    wait_lines(konomi, len(log_lines(konomi)), 1, ER05_LINE)


def test_revoked_device_access_then_restart(gpu: GpuController, konomi: Container) -> None:
    """Revoked device access: EPERM on the node, Unknown Error, ER-05; a restart alone heals."""
    code, out = exec_output(konomi, "head", "-c1", "/dev/nvidiactl")
    assert "No such device or address" in out  # present, no real driver behind it
    gpu.revoke_device_access(konomi)
    code, out = exec_output(konomi, "head", "-c1", "/dev/nvidiactl")
    assert code != 0 and "Operation not permitted" in out
    code, out = exec_output(konomi, "nvidia-smi", "-L")
    assert (code, out.strip()) == (255, "Failed to initialize NVML: Unknown Error")
    wait_lines(konomi, len(log_lines(konomi)), 1, ER05_LINE)
    assert host_smi_ok(gpu)
    konomi.restart(timeout=10)
    wait_lines(konomi, len(log_lines(konomi)), 1, ONAIR_LINE)
    assert "No such device or address" in exec_output(konomi, "head", "-c1", "/dev/nvidiactl")[1]
    assert exec_output(konomi, "nvidia-smi", "-L")[0] == 0


def devices_list(container: Container) -> str:
    """The container's cgroup v1 ``devices.list`` (these machines are hybrid)."""
    pid = int(container.attrs["State"]["Pid"])
    for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        if "devices" in controllers.split(","):
            return Path(f"/sys/fs/cgroup/devices{path}/devices.list").read_text()
    raise AssertionError(f"{container.name} has no v1 devices cgroup")


def test_v2_revoked_device_access_then_restart(gpu: GpuController, konomi: Container) -> None:
    """The cgroup v2 model: a second device program denies major 195 beside runc's.

    EPERM on the node while /dev/null works, Unknown Error, ER-05; the host
    and the v1 devices.list are untouched; a restart alone heals.
    """
    assert "No such device or address" in exec_output(konomi, "head", "-c1", "/dev/nvidiactl")[1]
    gpu.revoke_device_access_v2(konomi)
    assert gpu.v2_denials(konomi) == 1
    code, out = exec_output(konomi, "head", "-c1", "/dev/nvidiactl")
    assert code != 0 and "Operation not permitted" in out
    assert exec_output(konomi, "head", "-c1", "/dev/null") == (0, "")
    code, out = exec_output(konomi, "nvidia-smi", "-L")
    assert (code, out.strip()) == (255, "Failed to initialize NVML: Unknown Error")
    wait_lines(konomi, len(log_lines(konomi)), 1, ER05_LINE)
    assert f"c {NVIDIA_MAJOR}:{NVIDIACTL_MINOR} rwm" in devices_list(konomi)
    assert host_smi_ok(gpu)
    with pytest.raises(OSError) as exc:  # the host reaches the node as before: no driver behind
        os.open(gpu.device_node, os.O_RDONLY)
    assert exc.value.errno == errno.ENXIO
    konomi.restart(timeout=10)
    wait_lines(konomi, len(log_lines(konomi)), 1, ONAIR_LINE)
    assert gpu.v2_denials(konomi) == 0
    assert "No such device or address" in exec_output(konomi, "head", "-c1", "/dev/nvidiactl")[1]
    assert exec_output(konomi, "nvidia-smi", "-L")[0] == 0


def test_v2_restore_detaches_every_denial(gpu: GpuController, konomi: Container) -> None:
    """Cleanup without a restart: detach removes each program the bench attached, and only once."""
    gpu.revoke_device_access_v2(konomi)
    gpu.revoke_device_access_v2(konomi)
    assert gpu.v2_denials(konomi) == 2
    assert gpu.restore_device_access_v2(konomi) == 2
    assert gpu.restore_device_access_v2(konomi) == 0
    assert "No such device or address" in exec_output(konomi, "head", "-c1", "/dev/nvidiactl")[1]


@pytest.mark.parametrize(
    ("setup", "text", "status"),
    [
        (
            lambda g: g.set_driver_loaded(False),
            "NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver.",
            9,
        ),
        (
            lambda g: g.set_version_mismatch(True),
            "Failed to initialize NVML: Driver/library version mismatch",
            18,
        ),
        (lambda g: g.set_gpu_lost(True), "Unable to determine the device handle for GPU0", 15),
    ],
    ids=["driver-not-loaded", "version-mismatch", "gpu-lost"],
)
def test_host_faults_reach_containers_too(
    gpu: GpuController,
    konomi: Container,
    setup: Callable[[GpuController], None],
    text: str,
    status: int,
) -> None:
    """Host-side faults fail the host and the container alike; the workload logs ER-05."""
    setup(gpu)
    code, out = exec_output(konomi, "nvidia-smi", "-L")
    assert code == status and out.startswith(text)
    assert not host_smi_ok(gpu)
    wait_lines(konomi, len(log_lines(konomi)), 1, ER05_LINE)


def test_containers_see_live_state_and_cannot_set(gpu: GpuController, konomi: Container) -> None:
    """The state directory mount shows changes live; setting from a container is refused."""
    gpu.set_gpu_count(3)
    code, out = exec_output(konomi, "nvidia-smi", "-L")
    assert code == 0 and len(out.splitlines()) == 3
    code, out = exec_output(konomi, "nvidia-smi", "-pm", "1")
    assert code == 4 and "Insufficient Permissions" in out
    assert gpu.persistence() == [False, False, False]


def test_probe_hang_hangs_only_exec_probes(gpu: GpuController, konomi: Container) -> None:
    """With the probe-hang knob, `docker exec nvidia-smi` hangs; the workload and host don't."""
    gpu.set_probe_hang(True)
    with pytest.raises(subprocess.TimeoutExpired):
        subprocess.run(
            ["docker", "exec", konomi.id, "nvidia-smi", "-L"], capture_output=True, timeout=2
        )
    wait_lines(konomi, len(log_lines(konomi)), 2, ONAIR_LINE)
    assert host_smi_ok(gpu)


def test_tuner_fault_logs_er05_while_nvml_works(make_container: ContainerFactory) -> None:
    """tuner_fault mode: ER-05 lines although NVML works in the container."""
    container = make_container(mode="tuner_fault", environment={"WORKLOAD_INTERVAL": "0.3"})
    wait_lines(container, 0, 2, ER05_LINE)
    assert exec_output(container, "nvidia-smi", "-L")[0] == 0


def test_history_mode_logs_er05_then_runs_healthy(make_container: ContainerFactory) -> None:
    """history mode: a few ER-05 lines first, then only healthy lines."""
    container = make_container(mode="history", environment={"WORKLOAD_INTERVAL": "0.2"})
    lines = wait_lines(container, 0, 2, ONAIR_LINE)
    first_ok = lines.index(ONAIR_LINE)
    assert lines[1:first_ok] == [ER05_LINE] * 3
    assert ER05_LINE not in lines[first_ok:]


def test_nosmi_image_has_no_nvidia_smi(make_container: ContainerFactory) -> None:
    """The nosmi image logs healthy lines and has no nvidia-smi to exec."""
    container = make_container("nosmi", environment={"WORKLOAD_INTERVAL": "0.3"})
    wait_lines(container, 0, 1, ONAIR_LINE)
    code, out = exec_output(container, "nvidia-smi", "-L")
    assert code in (126, 127) and "nvidia-smi" in out


def test_stop_is_prompt_via_sigterm_trap(make_container: ContainerFactory) -> None:
    """The workload handles SIGTERM as PID 1: it exits 0, not 137 from SIGKILL."""
    container = make_container(environment={"WORKLOAD_INTERVAL": "5"})
    wait_lines(container, 0, 1, ONAIR_LINE)
    container.stop(timeout=30)
    container.reload()
    assert container.attrs["State"]["ExitCode"] == 0
    assert "[Status: Offline]" in log_lines(container)[-1]


def test_containers_run_without_network(konomi: Container) -> None:
    """Bench containers always run with --network none."""
    konomi.reload()
    assert konomi.attrs["HostConfig"]["NetworkMode"] == "none"
