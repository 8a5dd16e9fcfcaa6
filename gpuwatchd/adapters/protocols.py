"""What the daemon asks of the outside world, as Protocols.

The executor and the observers are written against these, not against the
concrete clients, so each can be driven by the in-memory fakes in
:mod:`gpuwatchd.adapters.fakes`. Every method blocks: callers run them on
worker threads (streams on their own threads), never on the event loop.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, Protocol

from gpuwatchd.adapters import device_check
from gpuwatchd.adapters.docker_engine import ContainerInfo, ExecOutcome
from gpuwatchd.core.device_access import AccessCheck
from gpuwatchd.core.docker_inspect import EngineVersion
from gpuwatchd.model.events import Gpu


class Stream(Protocol):
    """A long-lived engine stream: iterate on one thread, close from another."""

    def close(self) -> None: ...


class EventStreamPort(Stream, Protocol):
    def __iter__(self) -> Iterator[dict[str, Any]]: ...


class LogStreamPort(Stream, Protocol):
    def __iter__(self) -> Iterator[bytes]: ...


class DockerPort(Protocol):
    """The Docker (or Podman) engine (:class:`~gpuwatchd.adapters.docker_engine.DockerGateway`).

    Calls raise :class:`~gpuwatchd.adapters.docker_engine.DockerUnavailable`
    when the engine does not answer; ``restart`` and ``log_stream`` let the
    engine's own refusal (``docker.errors.APIError``, NotFound included) through.
    """

    def ping(self) -> EngineVersion: ...

    def info(self) -> dict[str, Any]: ...

    def list_containers(
        self, select: Callable[[ContainerInfo], bool] | None = None
    ) -> list[ContainerInfo]: ...

    def inspect(self, ref: str) -> ContainerInfo | None:
        """None only when the engine says the container does not exist (404)."""
        ...

    def restart(self, ref: str, stop_timeout: float) -> None: ...

    def exec_probe(self, ref: str, argv: tuple[str, ...], timeout: float) -> ExecOutcome: ...

    def log_stream(self, ref: str, since: float) -> LogStreamPort: ...

    def event_stream(self, since: float | None = None) -> EventStreamPort: ...

    def close(self) -> None: ...


class NvmlPort(Protocol):
    """The host's NVML (:class:`~gpuwatchd.adapters.nvml.Nvml`); calls raise
    :class:`~gpuwatchd.adapters.nvml.NvmlError`."""

    def read_gpus(self) -> tuple[Gpu, ...]: ...

    def set_persistence(self, index: int, enabled: bool = True) -> None: ...


class HostPort(Protocol):
    """The host's kernel and init: device access through the container's
    cgroups, and the ``DeviceAllow=`` of its systemd scope."""

    def device_access(self, info: ContainerInfo) -> AccessCheck: ...

    def scope_device_allow(self, info: ContainerInfo) -> str | None: ...


class Host:
    """The real host (:mod:`gpuwatchd.adapters.device_check`): ``/proc``, the
    cgroup hierarchy and ``systemctl``."""

    def device_access(self, info: ContainerInfo) -> AccessCheck:
        return device_check.device_access(info)

    def scope_device_allow(self, info: ContainerInfo) -> str | None:
        return device_check.scope_device_allow(info)
