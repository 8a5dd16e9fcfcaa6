"""Read-only views of the core for ``gpuwatchd status`` and metrics."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from gpuwatchd.compat import StrEnum
from gpuwatchd.core.base import Phase
from gpuwatchd.model.events import ContainerState
from gpuwatchd.model.vocabulary import Cause, ProbeResult


@dataclass(frozen=True)
class GpuView:
    """A :class:`~gpuwatchd.model.events.Gpu` as the status view shows it: its
    fields plus when it was last read and last seen with persistence off."""

    index: int
    uuid: str
    name: str
    persistence: bool
    last_checked: float  #: when the last snapshot was read
    last_seen_disabled: float | None


@dataclass(frozen=True)
class ContainerView:
    name: str
    id: str
    state: ContainerState
    orchestrated: bool
    last_probe_result: ProbeResult | None
    last_probe_at: float | None
    restarts_in_window: int
    given_up_at: float | None
    given_up_until: float | None
    paused: bool
    paused_until: float | None  #: None with ``paused``: until resumed
    remediation: Phase | None
    cause: Cause | None  #: of the remediation under way
    profile: str | None = None
    action: str = "restart"
    patterns: tuple[str, ...] = ()


@dataclass(frozen=True)
class CoreView:
    dry_run: bool
    gpus: tuple[GpuView, ...]
    containers: tuple[ContainerView, ...]
    nvml_unavailable: str | None  #: an NvmlFailure value while host NVML is down
    docker_unavailable: str | None  #: the error while Docker is down
    paused_all: bool
    paused_all_until: float | None

    def to_json(self) -> dict[str, Any]:
        """This view as plain JSON-ready data (enums as their values)."""
        return {k: _plain(v) for k, v in asdict(self).items()}


@dataclass(frozen=True)
class DaemonView:
    """The running daemon as metrics read it: the core's view plus the few
    fields only the daemon knows. ``None`` availability: not known yet."""

    uptime: float  #: seconds since the daemon started, when the view was taken
    dry_run: bool  #: as configured
    docker_available: bool | None
    nvml_available: bool | None
    core: CoreView


def _plain(value: object) -> object:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, StrEnum):
        return value.value
    return value
