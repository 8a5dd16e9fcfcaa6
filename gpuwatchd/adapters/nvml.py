"""The host's GPUs, through NVML (``pynvml`` from nvidia-ml-py), as blocking calls.

Each query opens its own NVML session and closes it again: a daemon that kept
NVML initialised would itself hold the driver awake and so hide the very drift
it is meant to report. All calls are serialised by one lock because pynvml's
init/shutdown pair is process-global.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TypeVar

import pynvml

from gpuwatchd.model.events import Gpu, GpuSnapshot, NvmlFailure, NvmlUnavailable

T = TypeVar("T")

#: NVML return codes that name a host condition (pynvml.NVML_ERROR_*).
_KINDS = {
    pynvml.NVML_ERROR_DRIVER_NOT_LOADED: "driver_not_loaded",
    pynvml.NVML_ERROR_LIB_RM_VERSION_MISMATCH: "version_mismatch",
    pynvml.NVML_ERROR_GPU_IS_LOST: "gpu_lost",
    pynvml.NVML_ERROR_LIBRARY_NOT_FOUND: "library_missing",
    pynvml.NVML_ERROR_NO_PERMISSION: "no_permission",
}


class NvmlError(Exception):
    """An NVML call failed; ``kind`` names the condition for records and causes.

    ``kind`` is one of driver_not_loaded, version_mismatch, gpu_lost,
    library_missing, no_permission or unknown.
    """

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


@dataclass(frozen=True)
class HostInfo:
    driver_version: str
    nvml_version: str
    cuda_version: int
    gpus: tuple[Gpu, ...]


def _text(value: bytes | str) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else value


def _error(exc: pynvml.NVMLError) -> NvmlError:
    code = getattr(exc, "value", None)
    kind = _KINDS.get(code, "unknown") if isinstance(code, int) else "unknown"
    return NvmlError(kind, str(exc))


class Nvml:
    """Blocking NVML access for one process (thread-safe, one call at a time)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()

    @contextmanager
    def _session(self) -> Iterator[None]:
        try:
            pynvml.nvmlInit()
        except pynvml.NVMLError as exc:
            raise _error(exc) from exc
        try:
            yield
        finally:
            # Nothing useful to do on failure: the next session initialises afresh.
            with contextlib.suppress(pynvml.NVMLError):
                pynvml.nvmlShutdown()

    def _call(self, fn: Callable[[], T]) -> T:
        with self._lock, self._session():
            try:
                return fn()
            except pynvml.NVMLError as exc:
                raise _error(exc) from exc

    def read_gpus(self) -> tuple[Gpu, ...]:
        """Every GPU's index, UUID, name and persistence mode.

        Raises:
            NvmlError: NVML could not be loaded or initialised, or a query failed.
        """
        return self._call(self._read_gpus)

    def host_info(self) -> HostInfo:
        """Driver, NVML and CUDA versions plus every GPU (for ``diagnose``)."""

        def read() -> HostInfo:
            return HostInfo(
                driver_version=_text(pynvml.nvmlSystemGetDriverVersion()),
                nvml_version=_text(pynvml.nvmlSystemGetNVMLVersion()),
                cuda_version=int(pynvml.nvmlSystemGetCudaDriverVersion()),
                gpus=self._read_gpus(),
            )

        return self._call(read)

    def set_persistence(self, index: int, enabled: bool = True) -> None:
        """Set one GPU's persistence mode (what ``nvidia-smi -i N -pm 1`` does).

        Raises:
            NvmlError: with kind ``no_permission`` when not run as root.
        """

        def apply() -> None:
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            mode = pynvml.NVML_FEATURE_ENABLED if enabled else pynvml.NVML_FEATURE_DISABLED
            pynvml.nvmlDeviceSetPersistenceMode(handle, mode)

        self._call(apply)

    @staticmethod
    def _read_gpus() -> tuple[Gpu, ...]:
        gpus = []
        for index in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            gpus.append(
                Gpu(
                    index=index,
                    uuid=_text(pynvml.nvmlDeviceGetUUID(handle)),
                    name=_text(pynvml.nvmlDeviceGetName(handle)),
                    persistence=(
                        pynvml.nvmlDeviceGetPersistenceMode(handle) == pynvml.NVML_FEATURE_ENABLED
                    ),
                )
            )
        return tuple(gpus)


def gpu_reading(read_gpus: Callable[[], tuple[Gpu, ...]]) -> GpuSnapshot | NvmlUnavailable:
    """One reading of the host's GPUs as the core's event (blocking): every GPU,
    or why NVML could not be read."""
    try:
        gpus = read_gpus()
    except NvmlError as exc:
        reason = (NvmlFailure(exc.kind) if exc.kind in NvmlFailure.__members__.values()
                  else NvmlFailure.UNKNOWN)
        return NvmlUnavailable(reason, str(exc))
    return GpuSnapshot(gpus)
