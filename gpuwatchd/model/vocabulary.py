"""Shared vocabulary: what a probe can find and what a fault can be caused by.

These names are part of the public record catalogue (the ``result`` and
``cause`` fields), so they never change meaning.
"""

from collections.abc import Mapping
from types import MappingProxyType

from gpuwatchd.compat import StrEnum

#: Labels of containers an orchestrator owns: gpuwatchd never restarts them itself.
ORCHESTRATOR_LABEL_PREFIXES = ("com.docker.swarm.", "io.kubernetes.")


class ProbeResult(StrEnum):
    """Outcome of one in-container NVML check (``docker exec <c> nvidia-smi``)."""

    OK = "ok"
    NVML_UNKNOWN_ERROR = "nvml_unknown_error"  #: "Failed to initialize NVML: Unknown Error"
    DRIVER_NOT_LOADED = "driver_not_loaded"  #: "couldn't communicate with the NVIDIA driver"
    VERSION_MISMATCH = "version_mismatch"  #: "Driver/library version mismatch"
    GPU_LOST = "gpu_lost"  #: "GPU is lost" / "fallen off the bus"
    TIMEOUT = "timeout"  #: the probe did not finish within probe.timeout and was killed
    PROBE_UNAVAILABLE = "probe_unavailable"  #: no nvidia-smi in the container (126/127)
    NOT_RUNNING = "not_running"  #: the container was not running when probed

    @property
    def is_gpu_fault(self) -> bool:
        """True when the result proves NVML does not work inside the container."""
        return self in _GPU_FAULTS


_GPU_FAULTS = frozenset(
    {
        ProbeResult.NVML_UNKNOWN_ERROR,
        ProbeResult.DRIVER_NOT_LOADED,
        ProbeResult.VERSION_MISMATCH,
        ProbeResult.GPU_LOST,
    }
)


class Cause(StrEnum):
    """Why NVML stopped working in a container, decided from evidence."""

    VERSION_MISMATCH = "version_mismatch"  #: driver upgraded without reboot: reboot
    GPU_LOST = "gpu_lost"  #: the GPU fell off the bus: reboot / reseat
    DRIVER_NOT_LOADED = "driver_not_loaded"  #: the kernel module is gone: reload it
    DEVICE_ACCESS_LOST = "device_access_lost"  #: cgroup device rule revoked (daemon-reload)
    PERSISTENCE_OFF = "persistence_off"  #: driver idled with persistence mode off
    UNKNOWN = "unknown"

    @property
    def restart_cures(self) -> bool:
        """False for causes no container restart can cure (the host must be fixed)."""
        return self not in HOST_CAUSES.values()


#: The host causes, by the host NVML failure that proves each (an ``NvmlFailure``
#: value). The one table of them: a container restart cures none.
HOST_CAUSES: Mapping[str, Cause] = MappingProxyType({
    "version_mismatch": Cause.VERSION_MISMATCH,
    "gpu_lost": Cause.GPU_LOST,
    "driver_not_loaded": Cause.DRIVER_NOT_LOADED,
})


class Confidence(StrEnum):
    """How sure the cause is: ``certain`` from direct evidence, ``probable`` from inference."""

    CERTAIN = "certain"
    PROBABLE = "probable"
