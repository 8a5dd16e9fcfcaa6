"""What gpuwatchd knows about one container, as data (read from ``docker inspect``
by :func:`gpuwatchd.core.docker_inspect.container_info`)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType


@dataclass(frozen=True)
class ContainerInfo:
    """What gpuwatchd needs to know about one container, from its inspect data."""

    id: str
    name: str
    status: str  #: created, running, paused, restarting, removing, exited, dead
    started_at: float  #: epoch seconds of the last start (0 when never started)
    labels: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    pid: int = 0
    uses_gpu: bool = False
    expects_nvidia_device: bool = False  #: it was given /dev/nvidia* or GPUs at creation
    log_driver: str = "json-file"
    image: str = ""  #: the image reference it was created from (``Config.Image``)
    paused: bool = False  #: State.Paused
    cgroup_parent: str = ""  #: HostConfig.CgroupParent ("" is Docker's default)
    #: The host path given as the container's /dev/nvidiactl with --device ("" when none).
    nvidiactl_on_host: str = ""

    @property
    def short_id(self) -> str:
        return self.id[:12]


#: How a container got its GPUs (read from ``docker inspect`` by
#: :func:`gpuwatchd.core.docker_inspect.gpu_methods`); the first three are
#: exposed to a daemon-reload under the systemd cgroup driver, CDI is not.
GPU_LEGACY_HOOK = "legacy_hook"  #: --gpus / DeviceRequests through the NVIDIA hook
GPU_NVIDIA_RUNTIME = "nvidia_runtime"  #: --runtime nvidia (or the default runtime)
GPU_DEVICE = "device"  #: plain --device /dev/nvidia*
GPU_CDI = "cdi"  #: CDI device names (nvidia.com/gpu=all)
AT_RISK_METHODS = frozenset({GPU_LEGACY_HOOK, GPU_NVIDIA_RUNTIME, GPU_DEVICE})
