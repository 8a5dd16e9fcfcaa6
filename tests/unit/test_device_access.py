"""Reading device-cgroup evidence: cgroup v1 lists rules, v2 tells nothing."""

from __future__ import annotations

from pathlib import Path

import pytest

from gpuwatchd.docker_io import ContainerInfo, device_access_ok

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


def test_gone_process_gives_no_evidence(tmp_path: Path) -> None:
    proc, root = setup_tree(tmp_path, V1, "c 195:255 rwm\n")
    gone = ContainerInfo(id="abc", name="c", status="running", started_at=1, pid=99,
                         expects_nvidia_device=True)
    assert device_access_ok(gone, proc=proc, cgroup_root=root) is None


def test_probe_kill_only_targets_a_process_of_the_container(tmp_path: Path) -> None:
    """A PID from the engine is killed only when its cgroup names the container."""
    from gpuwatchd.docker_io import _pid_in_container

    proc, _ = setup_tree(tmp_path, "5:devices:/docker/" + "ab" * 32 + "\n", None)
    assert _pid_in_container(42, "ab" * 32, proc=proc)
    assert not _pid_in_container(42, "cd" * 32, proc=proc)  # another process
    assert not _pid_in_container(43, "ab" * 32, proc=proc)  # gone
    assert not _pid_in_container(42, "", proc=proc)
