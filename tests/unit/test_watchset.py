"""The watch set: names, IDs, label selectors and the GPU heuristic."""

from __future__ import annotations

import time
from types import MappingProxyType

import pytest

from gpuwatchd.config import WatchConfig
from gpuwatchd.core.docker_inspect import container_info, parse_docker_time
from gpuwatchd.core.watchset import is_watched
from gpuwatchd.model.container import ContainerInfo

ID = "3f2a9c1b7d4e" + "0" * 52


def info(name: str = "KonomiTV", labels: dict[str, str] | None = None,
         uses_gpu: bool = False) -> ContainerInfo:
    return ContainerInfo(id=ID, name=name, status="running", started_at=1.0,
                         labels=MappingProxyType(labels or {}), uses_gpu=uses_gpu)


@pytest.mark.parametrize(
    ("watch", "container", "expected"),
    [
        (WatchConfig(), info(), False),
        (WatchConfig(), info(labels={"gpuwatchd.watch": "true"}), True),
        (WatchConfig(), info(labels={"gpuwatchd.watch": "false"}), False),
        (WatchConfig(labels=("gpu",)), info(labels={"gpu": "anything"}), True),
        (WatchConfig(containers=("KonomiTV",)), info(), True),
        (WatchConfig(containers=("/KonomiTV",)), info(), True),
        (WatchConfig(containers=("konomitv",)), info(), False),
        (WatchConfig(containers=(ID[:12],)), info(name="other"), True),
        (WatchConfig(containers=(ID[:11],)), info(name="other"), False),
        (WatchConfig(containers=(ID,)), info(name="other"), True),
        (WatchConfig(all_gpu_containers=True), info(uses_gpu=True), True),
        (WatchConfig(all_gpu_containers=True), info(uses_gpu=False), False),
        (WatchConfig(all_gpu_containers=False), info(uses_gpu=True), False),
    ],
)
def test_is_watched(watch: WatchConfig, container: ContainerInfo, expected: bool) -> None:
    """Each selector kind picks exactly the containers it names."""
    assert is_watched(container, watch) is expected


def attrs(host: dict[str, object] | None = None, env: list[str] | None = None,
          mounts: list[dict[str, object]] | None = None,
          annotations: dict[str, str] | None = None) -> dict[str, object]:
    return {
        "Id": ID,
        "Name": "/c",
        "State": {"Status": "running", "StartedAt": "2026-11-27T00:52:45.580931496Z", "Pid": 7},
        "HostConfig": host or {},
        "Config": {"Env": env or [], "Labels": None, "Annotations": annotations},
        "Mounts": mounts or [],
    }


def bind(destination: str) -> dict[str, object]:
    return {"Type": "bind", "Source": "/host" + destination, "Destination": destination}


#: How Podman 4.3's compat inspect shows a container given /dev/nvidiactl and
#: the NVIDIA libraries: no Devices, runtime "oci"; only the mounts tell.
PODMAN_COMPAT_GPU = attrs(
    host={"Devices": [], "Runtime": "oci"},
    mounts=[bind("/usr/lib/x86_64-linux-gnu/libnvidia-ml.so.1"), bind("/usr/bin/nvidia-smi")],
)


@pytest.mark.parametrize(
    ("data", "uses_gpu"),
    [
        (attrs(), False),
        (attrs(host={"Runtime": "nvidia"}), True),
        (attrs(host={"DeviceRequests": [{"Driver": "", "Capabilities": [["gpu"]]}]}), True),
        (attrs(host={"Devices": [{"PathInContainer": "/dev/nvidiactl"}]}), True),
        (attrs(env=["NVIDIA_VISIBLE_DEVICES=all"]), True),
        (attrs(env=["NVIDIA_VISIBLE_DEVICES=void"]), False),
        (attrs(env=["NVIDIA_VISIBLE_DEVICES=none"]), False),
        (attrs(env=["NVIDIA_VISIBLE_DEVICES="]), False),
        (PODMAN_COMPAT_GPU, True),
        (attrs(mounts=[bind("/usr/lib64/libcuda.so.1")]), True),
        (attrs(host={"Binds": ["/usr/lib/libnvidia-ml.so.535.1:/usr/lib/libnvidia-ml.so.1:ro"]}),
         True),
        (attrs(mounts=[bind("/data"), bind("/usr/lib/libssl.so.3")]), False),
        # CDI: Docker's device request, Podman's device name, the annotations.
        (attrs(host={"DeviceRequests": [{"Driver": "cdi", "DeviceIDs": ["nvidia.com/gpu=all"]}]}),
         True),
        (attrs(host={"Devices": [{"PathOnHost": "nvidia.com/gpu=0", "PathInContainer": ""}]}),
         True),
        (attrs(annotations={"cdi.k8s.io/nvidia-gpu": "nvidia.com/gpu=all"}), True),
        (attrs(host={"Annotations": {"cdi.k8s.io/gpu": "nvidia.com/gpu=0"}}), True),
        (attrs(annotations={"cdi.k8s.io/fpga": "vendor.com/fpga=0"}), False),
        (attrs(host={"Devices": [{"PathOnHost": "/dev/fuse", "PathInContainer": "/dev/fuse"}]}),
         False),
    ],
)
def test_gpu_heuristic(data: dict[str, object], uses_gpu: bool) -> None:
    """all_gpu_containers recognises every way a container is given GPUs."""
    assert container_info(data).uses_gpu is uses_gpu


@pytest.mark.parametrize(
    ("data", "expects"),
    [
        (attrs(host={"Devices": [{"PathInContainer": "/dev/nvidiactl"}]}), True),
        (attrs(host={"DeviceRequests": [{"Driver": "cdi", "DeviceIDs": ["nvidia.com/gpu=0"]}]}),
         True),
        (attrs(annotations={"cdi.k8s.io/nvidia-gpu": "nvidia.com/gpu=all"}), True),
        # Mounts or the variable alone do not say a device node was given.
        (PODMAN_COMPAT_GPU, False),
        (attrs(env=["NVIDIA_VISIBLE_DEVICES=all"]), False),
    ],
)
def test_nvidia_device_expected_from_devices_requests_and_cdi(
    data: dict[str, object], expects: bool
) -> None:
    assert container_info(data).expects_nvidia_device is expects


def test_inspect_times_parse_to_epoch_with_fraction() -> None:
    parsed = container_info(attrs())
    assert parsed.started_at == pytest.approx(1795740765.580931, abs=1e-5)
    assert parsed.name == "c" and parsed.pid == 7 and parsed.short_id == ID[:12]


#: 2026-11-27T00:52:45.580931496Z as engines write it: Docker in UTC, Podman in
#: its host's local time with the offset.
SAME_INSTANT = [
    "2026-11-27T00:52:45.580931496Z",
    "2026-11-27T09:52:45.580931496+09:00",  # Podman on a host in Asia/Tokyo
    "2026-11-26T19:52:45.580931496-05:00",
    "2026-11-27T00:52:45.580931496+00:00",
]


@pytest.mark.parametrize("stamp", SAME_INSTANT)
def test_inspect_times_with_offsets_are_the_same_instant(
    stamp: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An offset shifts the instant; the daemon's own time zone never does."""
    monkeypatch.setenv("TZ", "Asia/Tokyo")
    time.tzset()
    try:
        assert parse_docker_time(stamp) == pytest.approx(1795740765.580931, abs=1e-5)
    finally:
        monkeypatch.undo()
        time.tzset()


@pytest.mark.parametrize(
    ("stamp", "expected"),
    [
        ("2026-11-27T09:52:45+09:00", 1795740765.0),
        ("2026-11-27T00:52:45Z", 1795740765.0),
        ("2026-11-27T09:52:45.5+09:00", 1795740765.5),
        ("0001-01-01T00:00:00Z", 0.0),
        ("", 0.0),
    ],
)
def test_inspect_times_without_fraction_or_unset(stamp: str, expected: float) -> None:
    assert parse_docker_time(stamp) == pytest.approx(expected, abs=1e-6)
