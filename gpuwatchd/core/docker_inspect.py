"""What ``docker inspect``, ``docker ps`` and ``GET /version`` answers mean, as
pure rules: the container's facts, how it was given GPUs, the engine's name and
version, and the engine's timestamps. The Docker adapter
(:mod:`gpuwatchd.adapters.docker_engine`) fetches the data; ``diagnose`` reads
it through the same rules.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from types import MappingProxyType
from typing import Any

from gpuwatchd.model.container import (
    GPU_CDI,
    GPU_DEVICE,
    GPU_LEGACY_HOOK,
    GPU_NVIDIA_RUNTIME,
    ContainerInfo,
)


@dataclass(frozen=True)
class EngineVersion:
    """Which engine answers on the socket, and its version."""

    name: str  #: "Docker" or "Podman"
    version: str

    def __str__(self) -> str:
        return f"{self.name} {self.version}"


def engine_version(doc: Mapping[str, Any]) -> EngineVersion:
    """The engine named by a ``GET /version`` answer.

    Podman's compat API lists a ``Podman Engine`` component (its ``Version``
    at the top level is the Docker API level it emulates); Docker's is ``Engine``.
    """
    for component in doc.get("Components") or []:
        if isinstance(component, Mapping) and "podman" in str(component.get("Name", "")).lower():
            return EngineVersion("Podman", str(component.get("Version") or "unknown"))
    return EngineVersion("Docker", str(doc.get("Version") or "unknown"))


def parse_docker_time(value: str | None) -> float:
    """An engine's RFC 3339 timestamp (nanoseconds; ``Z`` or an offset) to epoch seconds.

    Docker writes UTC (``Z``); Podman writes its host's local time with the
    offset (``+09:00``).  0 for unset.

    Raises:
        ValueError: when ``value`` is not such a timestamp.
    """
    if not value or value.startswith("0001-01-01"):
        return 0.0
    # The date and time are the first 19 characters; fraction and zone follow.
    head, rest = value[:19], value[19:]
    frac = ""
    if rest.startswith("."):
        digits = len(rest) - len(rest[1:].lstrip("0123456789"))
        frac, rest = rest[1:digits], rest[digits:]
    zone = "+00:00" if rest in ("Z", "z", "") else rest
    seconds = datetime.fromisoformat(head + zone).timestamp()
    return seconds + (float("0." + frac) if frac else 0.0)


def _env_value(env: list[str] | None, key: str) -> str | None:
    for item in env or ():
        name, _, value = item.partition("=")
        if name == key:
            return value
    return None


#: File names (prefixes) of what the NVIDIA container toolkit or a CDI spec
#: mounts into a GPU container.
NVIDIA_MOUNT_PREFIXES = ("libnvidia-ml.so", "libcuda.so", "nvidia-smi")
#: The CDI kind prefix of NVIDIA devices (``nvidia.com/gpu=all``).
NVIDIA_CDI_PREFIX = "nvidia.com/"
#: Annotation keys that carry CDI device names (Docker's and Podman's).
CDI_ANNOTATION_PREFIX = "cdi.k8s.io/"


def is_nvidia_mount(destination: str) -> bool:
    """Whether a mount destination is one of the NVIDIA libraries or tools."""
    return destination.rsplit("/", 1)[-1].startswith(NVIDIA_MOUNT_PREFIXES)


def _mount_destinations(attrs: Mapping[str, Any], host: Mapping[str, Any]) -> list[str]:
    out = [str(m.get("Destination", "")) for m in (attrs.get("Mounts") or [])
           if isinstance(m, Mapping)]
    for bind in host.get("Binds") or []:
        parts = str(bind).split(":")
        if len(parts) >= 2:
            out.append(parts[1])
    return out


def _cdi_names(host: Mapping[str, Any], config: Mapping[str, Any]) -> list[str]:
    """CDI device names from device requests, device entries and annotations."""
    names: list[str] = []
    for req in host.get("DeviceRequests") or []:
        if req.get("Driver") == "cdi":
            names += [str(d) for d in req.get("DeviceIDs") or []]
    names += [str(d.get("PathOnHost", "")) for d in host.get("Devices") or []]
    for notes in (config.get("Annotations"), host.get("Annotations")):
        for key, value in (notes or {}).items():
            if str(key).startswith(CDI_ANNOTATION_PREFIX):
                names += [v.strip() for v in str(value).split(",")]
    return [n for n in names if n.startswith(NVIDIA_CDI_PREFIX)]


def _visible(value: str | None) -> bool:
    """Whether ``NVIDIA_VISIBLE_DEVICES`` asks for any GPU."""
    return value is not None and value.strip().lower() not in ("", "void", "none")


def gpu_methods(attrs: Mapping[str, Any], default_runtime: str | None = None) -> tuple[str, ...]:
    """How the container was given NVIDIA GPUs, from ``docker inspect`` data: the one
    rule, for the daemon (:func:`container_info`) and ``diagnose``.

    ``cdi``: CDI device names (a CDI device request, NVIDIA device entries or
    annotations); ``legacy_hook``: a GPU device request (``--gpus``); ``nvidia_runtime``:
    ``--runtime nvidia``, or the engine's ``default_runtime`` being nvidia for a
    container that names no runtime and asks for GPUs in ``NVIDIA_VISIBLE_DEVICES``;
    ``device``: ``--device /dev/nvidia*``.
    """
    host = attrs.get("HostConfig") or {}
    config = attrs.get("Config") or {}
    methods: list[str] = []
    for req in host.get("DeviceRequests") or []:
        gpu_caps = any("gpu" in caps for caps in (req.get("Capabilities") or []))
        nvidia_ids = any(str(i).startswith(NVIDIA_CDI_PREFIX) for i in req.get("DeviceIDs") or [])
        if req.get("Driver") == "cdi" or nvidia_ids:
            if gpu_caps or nvidia_ids:
                methods.append(GPU_CDI)
        elif gpu_caps or req.get("Driver") == "nvidia":
            methods.append(GPU_LEGACY_HOOK)
    if _cdi_names(host, config):
        methods.append(GPU_CDI)
    runtime = host.get("Runtime") or default_runtime
    visible = _env_value(config.get("Env"), "NVIDIA_VISIBLE_DEVICES")
    if host.get("Runtime") == "nvidia" or (runtime == "nvidia" and _visible(visible)):
        methods.append(GPU_NVIDIA_RUNTIME)
    if any(str(d.get("PathInContainer", "")).startswith("/dev/nvidia")
           for d in host.get("Devices") or []):
        methods.append(GPU_DEVICE)
    return tuple(dict.fromkeys(methods))


def container_info(attrs: Mapping[str, Any]) -> ContainerInfo:
    """Build a :class:`ContainerInfo` from ``docker inspect`` data.

    A container uses a GPU when it was given NVIDIA devices (device entries,
    GPU or CDI device requests, CDI annotations, the nvidia runtime), a
    non-void ``NVIDIA_VISIBLE_DEVICES``, or the NVIDIA libraries as mounts.
    Podman's compat inspect lists none of the devices:
    :meth:`gpuwatchd.adapters.docker_engine.DockerGateway.inspect` adds what the
    kernel shows of the running container.
    """
    state = attrs.get("State") or {}
    host = attrs.get("HostConfig") or {}
    config = attrs.get("Config") or {}
    status = str(state.get("Status", "unknown"))
    if state.get("Restarting"):
        status = "restarting"
    devices = host.get("Devices") or []
    visible = _env_value(config.get("Env"), "NVIDIA_VISIBLE_DEVICES")
    nvidia_mounts = any(is_nvidia_mount(d) for d in _mount_destinations(attrs, host))
    expects_device = bool(gpu_methods(attrs))
    uses_gpu = expects_device or _visible(visible) or nvidia_mounts
    return ContainerInfo(
        id=str(attrs["Id"]),
        name=str(attrs.get("Name", "")).lstrip("/"),
        status=status,
        started_at=parse_docker_time(state.get("StartedAt")),
        labels=MappingProxyType(dict(config.get("Labels") or {})),
        pid=int(state.get("Pid") or 0),
        uses_gpu=uses_gpu,
        expects_nvidia_device=expects_device,
        log_driver=str((host.get("LogConfig") or {}).get("Type", "json-file")),
        image=str(config.get("Image") or ""),
        paused=bool(state.get("Paused")),
        cgroup_parent=str(host.get("CgroupParent") or ""),
        nvidiactl_on_host=next(
            (str(d.get("PathOnHost", "")) for d in devices
             if d.get("PathInContainer") == "/dev/nvidiactl"), ""),
    )


def summary_info(summary: Mapping[str, Any]) -> ContainerInfo:
    """A partial :class:`ContainerInfo` from ``docker ps`` data (no start time, no GPU details)."""
    names = summary.get("Names") or [""]
    return ContainerInfo(
        id=str(summary["Id"]),
        name=str(names[0]).lstrip("/"),
        status=str(summary.get("State", "unknown")),
        started_at=0.0,
        labels=MappingProxyType(dict(summary.get("Labels") or {})),
        image=str(summary.get("Image") or ""),
    )
