"""Configuration: the TOML file parsed into frozen dataclasses.

Every default lives here, in the dataclass fields; ``config.example.toml``
documents the same values. Loading validates everything at once so the daemon
never discovers a bad value at 3 a.m.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

from gpuwatchd.patterns import LogPattern

DEFAULT_CONFIG_PATH = Path("/etc/gpuwatchd/config.toml")


@dataclass(frozen=True)
class DaemonConfig:
    state_dir: Path = Path("/var/lib/gpuwatchd")
    runtime_dir: Path = Path("/run/gpuwatchd")  #: holds the control socket
    dry_run: bool = False


@dataclass(frozen=True)
class DockerConfig:
    host: str = ""  #: empty: DOCKER_HOST or the default socket
    timeout: float = 30.0  #: seconds, per API call


@dataclass(frozen=True)
class GpuConfig:
    poll_interval: float = 30.0
    enforce_persistence: bool = True


@dataclass(frozen=True)
class ProbeConfig:
    interval: float = 60.0
    timeout: float = 10.0
    start_grace: float = 5.0
    command: tuple[str, ...] = ("nvidia-smi", "-L")


@dataclass(frozen=True)
class LogsConfig:
    patterns: tuple[LogPattern, ...] = (LogPattern("(ER-05)"),)
    confirm_with_probe: bool = True


@dataclass(frozen=True)
class RemediationConfig:
    restart_timeout: float = 30.0  #: stop grace period given to Docker
    verify_timeout: float = 60.0
    cooldown: float = 120.0
    max_restarts: int = 3
    window: float = 3600.0


@dataclass(frozen=True)
class WatchConfig:
    containers: tuple[str, ...] = ()  #: names or IDs
    labels: tuple[str, ...] = ("gpuwatchd.watch=true",)
    all_gpu_containers: bool = False


@dataclass(frozen=True)
class NotifyConfig:
    command: tuple[str, ...] = ()  #: empty: no command
    webhook: str = ""  #: empty: no webhook
    timeout: float = 10.0


@dataclass(frozen=True)
class MetricsConfig:
    listen: str = ""  #: "127.0.0.1:PORT"; empty: metrics off


@dataclass(frozen=True)
class ContainerOverride:
    """Per-container settings from ``[containers.NAME]``; None means "inherit"."""

    patterns: tuple[LogPattern, ...] | None = None
    confirm_with_probe: bool | None = None
    probe_command: tuple[str, ...] | None = None
    probe_interval: float | None = None
    restart_timeout: float | None = None


@dataclass(frozen=True)
class ContainerSettings:
    """The effective settings for one container: overrides merged over the globals."""

    patterns: tuple[LogPattern, ...]
    confirm_with_probe: bool
    probe_command: tuple[str, ...]
    probe_interval: float
    restart_timeout: float


@dataclass(frozen=True)
class Config:
    daemon: DaemonConfig = field(default_factory=DaemonConfig)
    docker: DockerConfig = field(default_factory=DockerConfig)
    gpu: GpuConfig = field(default_factory=GpuConfig)
    probe: ProbeConfig = field(default_factory=ProbeConfig)
    logs: LogsConfig = field(default_factory=LogsConfig)
    remediation: RemediationConfig = field(default_factory=RemediationConfig)
    watch: WatchConfig = field(default_factory=WatchConfig)
    notify: NotifyConfig = field(default_factory=NotifyConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    containers: Mapping[str, ContainerOverride] = field(
        default_factory=lambda: MappingProxyType({})
    )
    source: Path | None = None  #: the file this was loaded from, if any

    def for_container(self, name: str) -> ContainerSettings:
        """Merge ``[containers.<name>]`` over the global settings."""
        o = self.containers.get(name, ContainerOverride())
        return ContainerSettings(
            patterns=self.logs.patterns if o.patterns is None else o.patterns,
            confirm_with_probe=(
                self.logs.confirm_with_probe
                if o.confirm_with_probe is None
                else o.confirm_with_probe
            ),
            probe_command=self.probe.command if o.probe_command is None else o.probe_command,
            probe_interval=self.probe.interval if o.probe_interval is None else o.probe_interval,
            restart_timeout=(
                self.remediation.restart_timeout
                if o.restart_timeout is None
                else o.restart_timeout
            ),
        )
