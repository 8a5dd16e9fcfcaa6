"""Reading device-cgroup evidence: cgroup v1 lists rules, v2 tells nothing."""

from __future__ import annotations

from pathlib import Path

import pytest

from gpuwatchd.adapters.docker_engine import ContainerInfo, device_access_ok, with_kernel_gpu_facts

CG = "/docker/abc"


def setup_tree(tmp_path: Path, cgroup_lines: str, rules: str | None) -> tuple[Path, Path]:
    proc = tmp_path / "proc"
    (proc / "42").mkdir(parents=True)
    (proc / "42" / "cgroup").write_text(cgroup_lines)
    root = tmp_path / "cgroup"
    if rules is not None:
        (root / "devices" / CG.lstrip("/")).mkdir(parents=True)
        (root / "devices" / CG.lstrip("/") / "devices.list").write_text(rules)
    return proc, root


V1 = f"12:pids:{CG}\n5:devices:{CG}\n1:name=systemd:{CG}\n"
GPU = ContainerInfo(id="abc", name="c", status="running", started_at=1, pid=42,
                    expects_nvidia_device=True)


@pytest.mark.parametrize(
    ("rules", "expected"),
    [
        ("c 1:3 rwm\nc 195:255 rwm\nc 195:0 rwm\n", True),
        ("c 1:3 rwm\nc 195:* rwm\n", True),
        ("a *:* rwm\n", True),
        ("c 1:3 rwm\nc 195:0 rwm\n", False),  # nvidiactl rule revoked
        ("c 195:255 m\n", False),  # mknod only: open is refused
        ("", False),
    ],
)
def test_cgroup_v1_rules(tmp_path: Path, rules: str, expected: bool) -> None:
    """The nvidiactl rule decides; a wildcard or privileged rule counts."""
    proc, root = setup_tree(tmp_path, V1, rules)
    assert device_access_ok(GPU, proc=proc, cgroup_root=root) is expected


def test_cgroup_v2_gives_no_evidence(tmp_path: Path) -> None:
    proc, root = setup_tree(tmp_path, f"0::{CG}\n", None)
    assert device_access_ok(GPU, proc=proc, cgroup_root=root) is None


def test_container_without_nvidia_devices_gives_no_evidence(tmp_path: Path) -> None:
    proc, root = setup_tree(tmp_path, V1, "c 1:3 rwm\n")
    plain = ContainerInfo(id="abc", name="c", status="running", started_at=1, pid=42)
    assert device_access_ok(plain, proc=proc, cgroup_root=root) is None


def test_device_node_in_the_container_counts_whatever_inspect_lists(tmp_path: Path) -> None:
    """Podman's compat inspect lists no devices: the node in the container's /dev tells."""
    proc, root = setup_tree(tmp_path, V1, "c 1:3 rwm\nc 195:0 rwm\n")
    listed_none = ContainerInfo(id="abc", name="c", status="running", started_at=1, pid=42)
    (proc / "42" / "root" / "dev").mkdir(parents=True)
    (proc / "42" / "root" / "dev" / "nvidiactl").touch()
    assert device_access_ok(listed_none, proc=proc, cgroup_root=root) is False
    (root / "devices" / CG.lstrip("/") / "devices.list").write_text("c 195:255 rwm\n")
    assert device_access_ok(listed_none, proc=proc, cgroup_root=root) is True


def test_cgroup_path_is_the_one_proc_names_for_any_engine(tmp_path: Path) -> None:
    """Podman's cgroupfs layout (libpod_parent/libpod-<id>) is read, never built."""
    libpod = "/libpod_parent/libpod-" + "ab" * 32
    proc = tmp_path / "proc"
    (proc / "42").mkdir(parents=True)
    (proc / "42" / "cgroup").write_text(f"5:devices:{libpod}\n0::{libpod}\n")
    root = tmp_path / "cgroup"
    (root / "devices" / libpod.lstrip("/")).mkdir(parents=True)
    (root / "devices" / libpod.lstrip("/") / "devices.list").write_text("c 195:0 rwm\n")
    assert device_access_ok(GPU, proc=proc, cgroup_root=root) is False


def test_gone_process_gives_no_evidence(tmp_path: Path) -> None:
    proc, root = setup_tree(tmp_path, V1, "c 195:255 rwm\n")
    gone = ContainerInfo(id="abc", name="c", status="running", started_at=1, pid=99,
                         expects_nvidia_device=True)
    assert device_access_ok(gone, proc=proc, cgroup_root=root) is None


def test_probe_kill_only_targets_a_process_of_the_container(tmp_path: Path) -> None:
    """A PID from the engine is killed only when its cgroup names the container."""
    from gpuwatchd.adapters.docker_engine import _pid_in_container

    proc, _ = setup_tree(tmp_path, "5:devices:/docker/" + "ab" * 32 + "\n", None)
    assert _pid_in_container(42, "ab" * 32, proc=proc)
    assert not _pid_in_container(42, "cd" * 32, proc=proc)  # another process
    assert not _pid_in_container(43, "ab" * 32, proc=proc)  # gone
    assert not _pid_in_container(42, "", proc=proc)


def kernel_tree(tmp_path: Path, cid: str, mounts: list[str], node: bool) -> Path:
    proc = tmp_path / "proc"
    (proc / "42" / "root" / "dev").mkdir(parents=True)
    (proc / "42" / "cgroup").write_text(f"5:devices:/libpod_parent/libpod-{cid}\n")
    (proc / "42" / "mountinfo").write_text("".join(
        f"{n} 1 0:{n} / {m} ro,nosuid - ext4 /dev/sda1 rw\n" for n, m in enumerate(mounts, 2)))
    if node:
        (proc / "42" / "root" / "dev" / "nvidiactl").touch()
    return proc


@pytest.mark.parametrize(
    ("mounts", "node", "uses_gpu", "expects"),
    [
        (["/", "/usr/lib/x86_64-linux-gnu/libnvidia-ml.so.1"], True, True, True),
        (["/", "/usr/lib/x86_64-linux-gnu/libnvidia-ml.so.1"], False, True, False),
        (["/", "/usr/bin/nvidia-smi"], False, True, False),
        (["/"], True, True, True),
        (["/", "/data"], False, False, False),
    ],
)
def test_kernel_facts_find_gpu_containers_inspect_does_not_show(
    tmp_path: Path, mounts: list[str], node: bool, uses_gpu: bool, expects: bool,
) -> None:
    """Podman's compat inspect (no devices, no CDI mounts): mounts and /dev tell."""
    cid = "ab" * 32
    proc = kernel_tree(tmp_path, cid, mounts, node)
    bare = ContainerInfo(id=cid, name="c", status="running", started_at=1, pid=42)
    found = with_kernel_gpu_facts(bare, proc=proc)
    assert (found.uses_gpu, found.expects_nvidia_device) == (uses_gpu, expects)


def test_kernel_facts_ignore_a_pid_that_is_not_the_containers(tmp_path: Path) -> None:
    proc = kernel_tree(tmp_path, "cd" * 32, ["/usr/bin/nvidia-smi"], True)
    bare = ContainerInfo(id="ab" * 32, name="c", status="running", started_at=1, pid=42)
    assert with_kernel_gpu_facts(bare, proc=proc) == bare
