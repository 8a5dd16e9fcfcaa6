"""Finding a container's cgroup by reading the hierarchy, whatever the engine named it."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from gpuwatchd.adapters.device_check import container_scope, find_container_cgroup
from gpuwatchd.adapters.docker_engine import ContainerInfo

CID = "3f2a9c1d0b7e" + "0" * 52
OTHER = "9" * 64


@pytest.mark.parametrize(
    "layout",
    [
        f"/docker/{CID}",                                  # Docker, cgroupfs
        f"/system.slice/docker-{CID}.scope",               # Docker, systemd
        f"/libpod_parent/libpod-{CID}",                    # Podman, cgroupfs
        f"/machine.slice/libpod-{CID}.scope",              # Podman, systemd
        f"/gpu.slice/gpu-jobs.slice/docker-{CID}.scope",   # a --cgroup-parent slice
        f"/gpu/jobs/{CID}",                                # a --cgroup-parent path
    ],
)
def test_the_containers_cgroup_is_found_under_any_engines_layout(
    tmp_path: Path, layout: str
) -> None:
    (tmp_path / layout.lstrip("/") / "container").mkdir(parents=True)
    (tmp_path / "docker" / OTHER).mkdir(parents=True)
    (tmp_path / "system.slice" / "cron.service").mkdir(parents=True)
    assert find_container_cgroup(str(tmp_path), CID) == layout


def test_none_when_absent_or_the_id_is_short(tmp_path: Path) -> None:
    (tmp_path / "docker" / OTHER).mkdir(parents=True)
    assert find_container_cgroup(str(tmp_path), CID) is None
    (tmp_path / "docker" / CID).mkdir()
    assert find_container_cgroup(str(tmp_path), CID[:12]) is None
    assert find_container_cgroup(str(tmp_path / "missing"), CID) is None


@pytest.mark.parametrize(
    ("cgroup", "scope"),
    [
        (f"0::/system.slice/docker-{CID}.scope\n", f"docker-{CID}.scope"),
        (f"0::/machine.slice/libpod-{CID}.scope/container\n", f"libpod-{CID}.scope"),
        (f"11:devices:/machine.slice/libpod-{CID}.scope\n1:name=systemd:/x\n",
         f"libpod-{CID}.scope"),
        (f"0::/libpod_parent/libpod-{CID}\n", None),  # cgroupfs: no scope
        (f"0::/system.slice/docker-{OTHER}.scope\n", None),  # another container's
    ],
)
def test_the_scope_is_read_from_proc_whatever_the_engine(
    tmp_path: Path, cgroup: str, scope: str | None
) -> None:
    (tmp_path / "42").mkdir()
    (tmp_path / "42" / "cgroup").write_text(cgroup)
    info = ContainerInfo(id=CID, name="c", status="running", started_at=1, pid=42)
    assert container_scope(info, proc=tmp_path) == scope
    assert container_scope(replace(info, pid=0), proc=tmp_path) is None
