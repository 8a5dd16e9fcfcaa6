"""What ``gpuwatchd diagnose`` works on and what it concludes, as data.

The facts are plain frozen dataclasses, gathered by :mod:`gpuwatchd.diagnose.facts`;
:func:`gpuwatchd.diagnose.verdict.diagnose` turns them into a :class:`Diagnosis`
and :mod:`gpuwatchd.diagnose.render` shows it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from gpuwatchd.compat import StrEnum
from gpuwatchd.core.device_access import AccessCheck
from gpuwatchd.exitcodes import ExitCode
from gpuwatchd.model.events import Gpu
from gpuwatchd.model.state import HistoryEntry
from gpuwatchd.model.vocabulary import ProbeResult


class Status(StrEnum):
    """The outcome of one check, and of the whole run."""

    HEALTHY = "healthy"
    PROBLEM = "problem"
    CANNOT_CHECK = "cannot_check"


@dataclass(frozen=True)
class NvmlFacts:
    """The host's NVML: versions and GPUs, or why it failed (``failure``)."""

    driver_version: str | None = None
    gpus: tuple[Gpu, ...] = ()
    failure: str | None = None  #: an NvmlFailure kind; None when NVML answered
    error: str | None = None  #: NVML's message for the failure


@dataclass(frozen=True)
class PersistencedFacts:
    """``nvidia-persistenced``: the running process and, under systemd, its unit."""

    running: bool = False
    pid: int | None = None
    argv: tuple[str, ...] = ()  #: the running process's command line
    unit_state: str | None = None  #: ActiveState; None without systemd (or no unit)
    unit_argv: tuple[str, ...] = ()  #: the unit's ExecStart command line

    @property
    def persistence_flag(self) -> bool | None:
        """The persistence mode it runs (or will start) with; None when not known.

        ``--no-persistence-mode`` is False; ``--persistence-mode`` or neither
        (the daemon's default) is True. The running process wins over the unit.
        """
        argv = self.argv if self.running else self.unit_argv
        if not argv:
            return None
        return persistence_flag(argv)


def persistence_flag(argv: Sequence[str]) -> bool:
    """Whether an ``nvidia-persistenced`` command line enables persistence mode (last flag wins)."""
    enabled = True
    for arg in argv[1:]:
        if arg == "--no-persistence-mode":
            enabled = False
        elif arg == "--persistence-mode":
            enabled = True
    return enabled


@dataclass(frozen=True)
class DockerFacts:
    """The engine's context: None fields when Docker did not answer."""

    available: bool = True
    error: str | None = None
    engine: str | None = None  #: "Docker" or "Podman"
    engine_version: str | None = None
    cgroup_driver: str | None = None  #: "systemd" or "cgroupfs"
    cgroup_version: str | None = None  #: "1" or "2"
    default_runtime: str | None = None


@dataclass(frozen=True)
class HostFacts:
    """Everything diagnose knows about the host."""

    nvml: NvmlFacts
    persistenced: PersistencedFacts
    docker: DockerFacts
    last_reload: float | None = None  #: epoch seconds of systemd's last daemon-reload
    kernel_module_version: str | None = None  #: /proc/driver/nvidia/version
    now: float = 0.0
    #: When the daemon last saw each GPU (by UUID) with persistence mode off, from
    #: its history; None when no daemon history holds it (none, or the journal only).
    gpu_last_disabled: Mapping[str, float] | None = None


@dataclass(frozen=True)
class LogFacts:
    """The container's recent log lines matched against its configured patterns."""

    patterns: tuple[str, ...] = ()
    scanned: int = 0  #: lines read
    matches: int = 0  #: matching lines among them
    matches_since_start: int = 0  #: of which since the container's last start
    last_line: str | None = None
    last_at: float | None = None
    error: str | None = None  #: why the logs could not be read
    match_times: tuple[float, ...] = ()  #: when each matching line was logged


@dataclass(frozen=True)
class ProbeFacts:
    """The in-container NVML check, classified as the daemon does."""

    command: tuple[str, ...]
    result: ProbeResult
    exit_code: int | None = None
    output: str = ""  #: one line worth showing
    driver_version: str | None = None  #: "Driver Version" when the output gives it


@dataclass(frozen=True)
class ContainerFacts:
    """Everything diagnose knows about one container."""

    name: str
    id: str
    status: str
    started_at: float
    gpu_methods: tuple[str, ...] = ()  #: GPU_LEGACY_HOOK, GPU_CDI, ...
    probe: ProbeFacts | None = None  #: None when not running (no probe ran)
    device_access_ok: bool | None = None  #: the device check's answer; None: cannot tell
    library_version: str | None = None  #: libnvidia-ml.so.VERSION inside
    logs: LogFacts = field(default_factory=LogFacts)
    device_check: AccessCheck | None = None  #: the kernel's answer and why (None: not asked)
    #: the scope's DeviceAllow= (systemd cgroup driver), None when it could not be read
    scope_device_allow: str | None = None
    #: What gpuwatchd did to it, oldest first (see :class:`HistoryFacts`).
    history: tuple[HistoryEntry, ...] = ()
    given_up_at: float | None = None  #: when gpuwatchd gave up on it, while it holds


@dataclass(frozen=True)
class HistoryFacts:
    """Where the daemon's history came from: ``daemon`` (asked on its control
    socket), ``state file`` (with the journal's records for containers the file
    has none of), ``journal`` (gpuwatchd's own records, when there is no state
    file), or ``none``; ``as_of`` is when it was current (the daemon's clock, the
    file's modification time, or the newest record)."""

    source: str = "none"
    where: str = ""
    as_of: float | None = None
    error: str | None = None  #: why no source could be read


@dataclass(frozen=True)
class Facts:
    """The whole input of :func:`diagnose`."""

    host: HostFacts
    containers: tuple[ContainerFacts, ...] = ()
    history: HistoryFacts = field(default_factory=HistoryFacts)


# --------------------------------------------------------------------------
# Conclusions


@dataclass(frozen=True)
class Verdict:
    """The most likely cause in one sentence, its evidence, and the fix."""

    cause: str
    status: Status
    summary: str
    evidence: tuple[str, ...] = ()
    fix_now: tuple[str, ...] = ()  #: commands that fix it now
    fix_for_good: tuple[str, ...] = ()  #: commands that keep it fixed
    advice: tuple[str, ...] = ()  #: prevention, even when healthy

    def to_json(self) -> dict[str, Any]:
        return {
            "cause": self.cause,
            "status": self.status.value,
            "summary": self.summary,
            "evidence": list(self.evidence),
            "fix_now": list(self.fix_now),
            "fix_for_good": list(self.fix_for_good),
            "advice": list(self.advice),
        }


@dataclass(frozen=True)
class ContainerReport:
    facts: ContainerFacts
    verdict: Verdict


@dataclass(frozen=True)
class Diagnosis:
    """The result: host findings, one verdict per container, the overall one."""

    facts: Facts
    host_findings: tuple[Verdict, ...]
    containers: tuple[ContainerReport, ...]
    verdict: Verdict  #: the one that matters most (shown first)
    status: Status

    @property
    def exit_code(self) -> ExitCode:
        return {
            Status.HEALTHY: ExitCode.OK,
            Status.PROBLEM: ExitCode.PROBLEM,
            Status.CANNOT_CHECK: ExitCode.CANNOT_CHECK,
        }[self.status]
