"""``gpuwatchd diagnose``: the field report's investigation as facts and a verdict.

This module is pure: the facts are plain frozen dataclasses (gathered by
:mod:`gpuwatchd.diagnose.facts`), and :func:`diagnose` turns them into a
:class:`Diagnosis` without any I/O, so every rule is table-tested.

The vocabulary of a verdict's ``cause``: the :class:`~gpuwatchd.model.vocabulary.Cause`
values (``persistence_off``, ``device_access_lost``, ``driver_not_loaded``,
``version_mismatch``, ``gpu_lost``, ``unknown``) plus ``healthy``,
``probe_unavailable`` (no ``nvidia-smi`` to run inside), ``not_gpu`` (pattern
lines such as ER-05 while NVML works: likely a genuine tuner fault),
``not_running`` and, for the host, ``nvml_unavailable``,
``persistenced_no_persistence_mode`` and ``reload_risk``.

Exit status, from the one table (:class:`~gpuwatchd.exitcodes.ExitCode`):
1 when any problem was found (a container's or the host's, including a
misconfiguration that will break a container that works today); else 4 when
something could not be checked (Docker or host NVML unavailable, a container
not running or without ``nvidia-smi``); else 0. Prevention advice alone (a
host at risk from ``systemctl daemon-reload``) does not change the status.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from typing import Any

from gpuwatchd.compat import StrEnum
from gpuwatchd.core.device_access import AccessCheck, ReloadExposure, reload_exposure
from gpuwatchd.exitcodes import ExitCode
from gpuwatchd.model.state import HistoryEntry
from gpuwatchd.model.vocabulary import Cause, ProbeResult

#: A matching line counts against the application (``not_gpu``) only when it was
#: logged this long after the container's last start and after gpuwatchd's last
#: restart of it: the engine stamps StartedAt late, so the line that led to a
#: restart can carry a time just after the new start.
START_MARGIN = 2.0
#: gpuwatchd records a restart once the engine says it is done, a moment after
#: the new StartedAt; a restart recorded this long before the start still made it.
RESTART_SLACK = 5.0

#: What packaging/systemd ships, and where install.sh puts it.
DROPIN_SOURCE = "packaging/systemd/nvidia-persistenced.service.d/gpuwatchd-persistence-mode.conf"
DROPIN_TARGET = "/etc/systemd/system/nvidia-persistenced.service.d/gpuwatchd-persistence-mode.conf"
ONESHOT_SOURCE = "packaging/systemd/nvidia-persistence-mode.service"
ONESHOT_TARGET = "/etc/systemd/system/nvidia-persistence-mode.service"

#: NvmlFailure kinds that are a host fault in themselves (the host must be fixed).
HOST_FAULT_KINDS = {
    "driver_not_loaded": Cause.DRIVER_NOT_LOADED,
    "version_mismatch": Cause.VERSION_MISMATCH,
    "gpu_lost": Cause.GPU_LOST,
}
#: How a container got its GPUs; the first three are exposed to daemon-reload
#: under the systemd cgroup driver, CDI is not.
GPU_LEGACY_HOOK = "legacy_hook"  #: --gpus / DeviceRequests through the NVIDIA hook
GPU_NVIDIA_RUNTIME = "nvidia_runtime"  #: --runtime nvidia (or the default runtime)
GPU_DEVICE = "device"  #: plain --device /dev/nvidia*
GPU_CDI = "cdi"  #: CDI device names (nvidia.com/gpu=all)
AT_RISK_METHODS = frozenset({GPU_LEGACY_HOOK, GPU_NVIDIA_RUNTIME, GPU_DEVICE})


class Status(StrEnum):
    """The outcome of one check, and of the whole run."""

    HEALTHY = "healthy"
    PROBLEM = "problem"
    CANNOT_CHECK = "cannot_check"


# --------------------------------------------------------------------------
# Facts


@dataclass(frozen=True)
class GpuFact:
    """One GPU as the host's NVML sees it."""

    index: int
    uuid: str
    name: str
    persistence: bool


@dataclass(frozen=True)
class NvmlFacts:
    """The host's NVML: versions and GPUs, or why it failed (``failure``)."""

    driver_version: str | None = None
    gpus: tuple[GpuFact, ...] = ()
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
# The verdict


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


def _persistence_fix_for_good() -> tuple[str, ...]:
    return (
        f"sudo install -D -m 644 {DROPIN_SOURCE} {DROPIN_TARGET}  # in gpuwatchd's source tree",
        f"sudo install -m 644 {ONESHOT_SOURCE} {ONESHOT_TARGET}",
        "sudo systemctl daemon-reload",
        "sudo systemctl restart nvidia-persistenced",
        "sudo systemctl enable --now nvidia-persistence-mode.service",
    )


#: Said with the fixes above: they need a daemon-reload, itself a risk on some hosts.
_RELOAD_CAVEAT = (
    "`sudo packaging/install.sh --with-host-fixes` installs the same two units; either way "
    "the daemon-reload can revoke GPU access in running containers under Docker's systemd "
    "cgroup driver: restart them afterwards"
)


def _device_access_prevention() -> tuple[str, ...]:
    return (
        "sudo nvidia-ctk system create-dev-char-symlinks --create-all",
        "sudo nvidia-ctk cdi generate --output=/etc/cdi/nvidia.yaml  "
        "# then run containers with --device nvidia.com/gpu=all (CDI)",
        '# or give Docker the cgroupfs driver: "exec-opts": ["native.cgroupdriver=cgroupfs"] '
        "in /etc/docker/daemon.json, then sudo systemctl restart docker",
    )


def _host_fault_fix(cause: Cause) -> tuple[tuple[str, ...], tuple[str, ...]]:
    if cause is Cause.DRIVER_NOT_LOADED:
        return ("sudo modprobe nvidia", "sudo reboot  # if modprobe fails"), (
            "# make sure the NVIDIA kernel module loads at boot (DKMS built for the "
            "running kernel)",
        )
    if cause is Cause.VERSION_MISMATCH:
        return ("sudo reboot",), ("# reboot after every NVIDIA driver upgrade",)
    return ("sudo reboot",), (
        "# check the card's power and seating (nvidia-smi -q; dmesg: Xid 79)",
    )


_HOST_FAULT_SENTENCE = {
    Cause.DRIVER_NOT_LOADED: "The NVIDIA kernel module is not loaded, so NVML fails everywhere.",
    Cause.VERSION_MISMATCH: "The NVIDIA driver was upgraded without a reboot: the loaded kernel "
    "module and the user-space library differ.",
    Cause.GPU_LOST: "A GPU fell off the bus: NVML reports it lost.",
}


def _when(epoch: float | None) -> str:
    if not epoch:
        return "unknown"
    when = datetime.fromtimestamp(epoch, timezone.utc)
    return when.isoformat(timespec="seconds").replace("+00:00", "Z")


def _gpu_list(gpus: Sequence[GpuFact]) -> str:
    return ", ".join(f"GPU {g.index} ({g.name})" for g in gpus)


def host_findings(
    host: HostFacts, containers: Sequence[ContainerFacts] = ()
) -> tuple[Verdict, ...]:
    """The host's own problems, risks and gaps, most important first."""
    found: list[Verdict] = []
    nvml = host.nvml
    if nvml.failure in HOST_FAULT_KINDS:
        cause = HOST_FAULT_KINDS[nvml.failure]
        now, good = _host_fault_fix(cause)
        found.append(Verdict(
            cause.value, Status.PROBLEM, _HOST_FAULT_SENTENCE[cause],
            (f"host NVML: {nvml.error or nvml.failure}",), now, good,
        ))
    elif nvml.failure is not None:
        found.append(Verdict(
            "nvml_unavailable", Status.CANNOT_CHECK,
            "The host's NVML cannot be used, so persistence mode and the GPUs cannot be checked.",
            (f"host NVML: {nvml.failure}: {nvml.error or ''}".rstrip(": "),),
            advice=("run diagnose as root on a host with the NVIDIA driver installed",)
            if nvml.failure in ("no_permission", "library_missing") else (),
        ))
    off = [g for g in nvml.gpus if not g.persistence]
    if off:
        found.append(Verdict(
            Cause.PERSISTENCE_OFF.value, Status.PROBLEM,
            f"Persistence mode is off on {_gpu_list(off)}: when the GPU idles, the driver "
            "tears down its state and NVML fails inside running containers (the field report).",
            tuple(f"GPU {g.index} {g.uuid}: persistence mode Disabled" for g in off),
            ("sudo nvidia-smi -pm 1",),
            _persistence_fix_for_good(), (_RELOAD_CAVEAT,),
        ))
    pd = host.persistenced
    if pd.persistence_flag is False:
        where = (
            f"running (PID {pd.pid}): {' '.join(pd.argv)}" if pd.running
            else f"its unit ({pd.unit_state}) starts: {' '.join(pd.unit_argv)}"
        )
        found.append(Verdict(
            "persistenced_no_persistence_mode", Status.PROBLEM,
            "nvidia-persistenced runs with --no-persistence-mode: it keeps persistence mode "
            "off, the field report's culprit, even if it is on right now.",
            (f"nvidia-persistenced {where}",),
            ("sudo nvidia-smi -pm 1",),
            _persistence_fix_for_good(), (_RELOAD_CAVEAT,),
        ))
    docker = host.docker
    if not docker.available:
        found.append(Verdict(
            "docker_unavailable", Status.CANNOT_CHECK,
            "Docker did not answer, so no container could be checked.",
            (f"docker: {docker.error or 'unavailable'}",),
        ))
    exposed = sorted({
        f"{c.name} ({m})" for c in containers for m in c.gpu_methods if m in AT_RISK_METHODS
        if _exposure(host, c) is ReloadExposure.AT_RISK
    })
    doomed = sorted(
        c.name for c in containers
        if _exposure(host, c) is ReloadExposure.WILL_BREAK
    )
    if doomed:
        found.append(Verdict(
            "reload_will_break", Status.HEALTHY,
            "The next `systemctl daemon-reload` will revoke GPU access in "
            f"{', '.join(doomed)}: the scope's DeviceAllow= lacks the NVIDIA device nodes.",
            (
                f"docker: CgroupDriver systemd, cgroup v{docker.cgroup_version or '?'}",
                *(f"{c.name}: its scope has {c.scope_device_allow or 'DeviceAllow='}"
                  for c in containers if c.name in doomed),
                f"last systemd reload: {_when(host.last_reload)}",
            ),
            advice=_device_access_prevention(),
        ))
    elif docker.cgroup_driver == "systemd" and exposed:
        found.append(Verdict(
            "reload_risk", Status.HEALTHY,
            "Docker uses the systemd cgroup driver: a `systemctl daemon-reload` can revoke GPU "
            "device access in running containers that got their GPUs through the legacy hook "
            "or --device.",
            (
                f"docker: CgroupDriver systemd, cgroup v{docker.cgroup_version or '?'}",
                f"exposed: {', '.join(exposed)}",
                f"last systemd reload: {_when(host.last_reload)}",
            ),
            advice=_device_access_prevention(),
        ))
    return tuple(found)


def _probe_evidence(probe: ProbeFacts) -> str:
    shown = f": {probe.output!r}" if probe.output else ""
    code = "" if probe.exit_code is None else f", exit {probe.exit_code}"
    return f"`{' '.join(probe.command)}` inside: {probe.result.value}{code}{shown}"


def _log_evidence(c: ContainerFacts) -> list[str]:
    logs = c.logs
    if logs.error:
        return [f"logs: could not be read ({logs.error})"]
    if not logs.matches:
        return [f"logs: no line matched {', '.join(logs.patterns)} in the last {logs.scanned}"]
    text = (
        f"logs: {logs.matches} line(s) matched {', '.join(logs.patterns)} "
        f"({logs.matches_since_start} since the last start); last at {_when(logs.last_at)}"
    )
    if logs.last_line:
        text += f": {logs.last_line}"
    return [text]


def _history_evidence(c: ContainerFacts) -> list[str]:
    shown = [f"{e.event} at {_when(e.at)} ({e.cause}{', ' + e.detail if e.detail else ''})"
             for e in c.history[-3:]]
    return [f"gpuwatchd: {'; '.join(shown)}"] if shown else []


def _context_evidence(host: HostFacts, c: ContainerFacts) -> list[str]:
    out = _history_evidence(c)
    if c.device_check is not None and c.device_check.ok is not None:
        state = "still allowed" if c.device_check.ok else "access revoked"
        out.append(f"device access: /dev/nvidiactl {state}: {c.device_check.reason}")
    elif c.device_access_ok is True:
        out.append("device cgroup: /dev/nvidiactl still allowed")
    elif c.device_access_ok is False:
        out.append("device cgroup: /dev/nvidiactl access revoked (devices.list)")
    elif c.device_check is not None:
        out.append(f"device access: cannot tell: {c.device_check.reason}")
    if host.last_reload and host.last_reload >= c.started_at:
        out.append(f"systemd reloaded at {_when(host.last_reload)}, after the container started "
                   f"({_when(c.started_at)})")
    host_version = host.kernel_module_version or host.nvml.driver_version
    inside = c.library_version or (c.probe.driver_version if c.probe else None)
    if host_version and inside and host_version != inside:
        out.append(f"driver versions differ: host {host_version}, container library {inside}")
    return out


def _exposure(host: HostFacts, c: ContainerFacts) -> ReloadExposure:
    return reload_exposure(host.docker.cgroup_driver, c.gpu_methods, c.scope_device_allow)


def container_verdict(host: HostFacts, c: ContainerFacts) -> Verdict:
    """The most likely cause for one container, its evidence and its fix; see the module doc.

    What gpuwatchd did to the container (``c.history``) is evidence too: a start
    that gpuwatchd's own restart explains, with NVML working now, is ``healed``
    (healthy, with the lasting fixes for the cause it healed), and a give-up in
    force is named, with ``gpuwatchd reset``, whatever the verdict.
    """
    verdict = _judge(host, c)
    if c.given_up_at is None:
        return verdict
    cause = next((e.cause for e in reversed(c.history) if e.event == "gave_up"), "unknown")
    reset = f"gpuwatchd reset {c.name}"
    return replace(
        verdict,
        summary=f"{verdict.summary} gpuwatchd gave up on {c.name} at {_when(c.given_up_at)} "
        f"({cause}) and restarts it no more until `{reset}`, once the host is fixed.",
        fix_now=(*verdict.fix_now, f"{reset}  # after fixing the cause"),
    )


def unexplained_matches(c: ContainerFacts) -> int:
    """Matching lines logged after the container's last start and after gpuwatchd's
    last restart of it, each plus :data:`START_MARGIN`: the lines a tuner or the
    application itself must answer for."""
    if not c.logs.match_times:
        return c.logs.matches_since_start
    restarts = [e.at for e in c.history if e.event == "restarted"]
    floor = max([c.started_at, *restarts]) + START_MARGIN
    return sum(1 for t in c.logs.match_times if t > floor)


def healing_restart(c: ContainerFacts) -> HistoryEntry | None:
    """gpuwatchd's restart that made the container's current run, if one did."""
    for e in reversed(c.history):
        if e.event == "restarted":
            return e if e.at >= c.started_at - RESTART_SLACK else None
    return None


def _healed(host: HostFacts, c: ContainerFacts, restart: HistoryEntry,
            evidence: tuple[str, ...], advice: tuple[str, ...]) -> Verdict:
    confidence = f" ({restart.detail})" if restart.detail else ""
    summary = (f"NVML works now inside {c.name}; gpuwatchd restarted it at "
               f"{_when(restart.at)} for {restart.cause}{confidence}")
    good: tuple[str, ...] = ()
    extra: tuple[str, ...] = ()
    if restart.cause == Cause.PERSISTENCE_OFF.value:
        off = [g for g in host.nvml.gpus if not g.persistence]
        if off:
            summary += f"; persistence mode is off again on {_gpu_list(off)}"
        elif host.nvml.gpus:
            summary += "; persistence mode is on"
        good, extra = _persistence_fix_for_good(), (_RELOAD_CAVEAT,)
    elif restart.cause == Cause.DEVICE_ACCESS_LOST.value:
        good = _device_access_prevention()
    summary += ". The cause stays on the host until it is fixed for good." if good else "."
    return Verdict("healed", Status.HEALTHY, summary, evidence, (), good,
                   tuple(dict.fromkeys((*extra, *advice))))


def _judge(host: HostFacts, c: ContainerFacts) -> Verdict:
    evidence = [*_log_evidence(c)]
    if c.probe is not None:
        evidence.insert(0, _probe_evidence(c.probe))
    evidence += _context_evidence(host, c)
    ev = tuple(evidence)
    restart = f"docker restart {c.name}"
    nvml = host.nvml
    off = [g for g in nvml.gpus if not g.persistence]
    at_risk = _exposure(host, c) is not ReloadExposure.NOT_EXPOSED
    advice = _device_access_prevention() if at_risk else ()

    if nvml.failure in HOST_FAULT_KINDS:
        cause = HOST_FAULT_KINDS[nvml.failure]
        now, good = _host_fault_fix(cause)
        return Verdict(cause.value, Status.PROBLEM, _HOST_FAULT_SENTENCE[cause],
                       (f"host NVML: {nvml.error or nvml.failure}", *ev),
                       (*now, restart), good, advice)
    if c.status != "running" or c.probe is None or c.probe.result is ProbeResult.NOT_RUNNING:
        return Verdict("not_running", Status.CANNOT_CHECK,
                       f"{c.name} is {c.status}: NVML inside cannot be checked.", ev,
                       advice=advice)
    result = c.probe.result

    if result is ProbeResult.OK:
        unexplained = unexplained_matches(c)
        if unexplained:
            return Verdict(
                "not_gpu", Status.PROBLEM,
                f"NVML works inside {c.name}, yet it logged {unexplained} matching line(s) "
                "since it started that no gpuwatchd restart explains: likely a genuine tuner "
                "or application fault, not the GPU.", ev,
                advice=(f"look at the tuner backend and the application's own log: "
                        f"docker logs --tail 100 {c.name}", *advice),
            )
        healer = healing_restart(c)
        if healer is not None:
            return _healed(host, c, healer, ev, advice)
        return Verdict("healthy", Status.HEALTHY, f"NVML works inside {c.name}.", ev,
                       advice=advice)

    if result is ProbeResult.PROBE_UNAVAILABLE:
        if c.device_access_ok is False:
            return _device_lost(c, ev, certain=True)
        return Verdict(
            "probe_unavailable", Status.CANNOT_CHECK,
            f"{c.name} has no `{c.probe.command[0]}` to run, so NVML inside cannot be checked.",
            ev, advice=(
                f'set probe_command for it in [containers."{c.name}"] (any command that exits '
                "0 only when NVML works), or bind-mount nvidia-smi",
                *advice,
            ),
        )

    if result is ProbeResult.TIMEOUT:
        return Verdict(
            Cause.UNKNOWN.value, Status.PROBLEM,
            f"`{' '.join(c.probe.command)}` hung inside {c.name}: NVML did not answer in time.",
            ev, (restart,), advice=advice,
        )

    # The probe proves NVML fails inside while the host's NVML works (or is unknown).
    if result in (ProbeResult.VERSION_MISMATCH, ProbeResult.DRIVER_NOT_LOADED,
                  ProbeResult.GPU_LOST):
        cause = {
            ProbeResult.VERSION_MISMATCH: Cause.VERSION_MISMATCH,
            ProbeResult.DRIVER_NOT_LOADED: Cause.DRIVER_NOT_LOADED,
            ProbeResult.GPU_LOST: Cause.GPU_LOST,
        }[result]
        if cause is Cause.DRIVER_NOT_LOADED and c.device_access_ok is False:
            return _device_lost(c, ev, certain=True)
        now, good = _host_fault_fix(cause)
        return Verdict(
            cause.value, Status.PROBLEM,
            f"NVML inside {c.name} reports {result.value} while the host's NVML answers: the "
            "container sees a different driver than the host runs.",
            ev, (restart, *now), good, advice,
        )

    # NVML_UNKNOWN_ERROR: the field report's symptom. Direct evidence first.
    if c.device_access_ok is False:
        return _device_lost(c, ev, certain=True)
    if off:
        return Verdict(
            Cause.PERSISTENCE_OFF.value, Status.PROBLEM,
            f"NVML fails inside {c.name} because persistence mode is off on {_gpu_list(off)}: "
            "the driver idled and tore down the state the container was started with "
            "(the field report's cause).",
            ev, ("sudo nvidia-smi -pm 1", restart),
            _persistence_fix_for_good(), (_RELOAD_CAVEAT, *advice),
        )
    reloaded = host.last_reload is not None and host.last_reload >= c.started_at
    if c.device_access_ok is None and (reloaded or at_risk):
        return _device_lost(c, ev, certain=False)
    return Verdict(
        Cause.UNKNOWN.value, Status.PROBLEM,
        f"NVML fails inside {c.name} and the evidence names no cause; a restart usually "
        "brings it back.", ev, (restart,), advice=advice,
    )


def _device_lost(c: ContainerFacts, evidence: tuple[str, ...], *, certain: bool) -> Verdict:
    how = ("the kernel no longer lets its processes open the NVIDIA device nodes (its device "
           "cgroup refuses them)" if certain
           else "most likely its GPU device access was revoked (systemd daemon-reload under "
           "the systemd cgroup driver; cgroup v2 does not show the rules)")
    return Verdict(
        Cause.DEVICE_ACCESS_LOST.value, Status.PROBLEM,
        f"NVML fails inside {c.name} because {how}; a restart restores it.",
        evidence, (f"docker restart {c.name}",), _device_access_prevention(),
    )


_RANK = {Status.PROBLEM: 0, Status.CANNOT_CHECK: 1, Status.HEALTHY: 2}


def diagnose(facts: Facts) -> Diagnosis:
    """The verdicts for ``facts``. Pure: no I/O, never raises for well-formed facts."""
    findings = host_findings(facts.host, facts.containers)
    reports = tuple(ContainerReport(c, container_verdict(facts.host, c))
                    for c in facts.containers)
    verdicts = [r.verdict for r in reports] + list(findings)
    status = min((v.status for v in verdicts), key=_RANK.__getitem__, default=Status.HEALTHY)
    # The first container verdict of the worst status; the host's when no container has it.
    top = next((v for v in verdicts if v.status is status and v.cause != "reload_risk"), None)
    if top is None:
        if facts.containers:
            summary = "Every container checked is healthy."
        else:
            summary = "No container to check; the host is healthy."
        top = Verdict("healthy", Status.HEALTHY, summary)
    return Diagnosis(facts, findings, reports, top, status)


# --------------------------------------------------------------------------
# Output


def _json_time(epoch: float | None) -> str | None:
    return _when(epoch) if epoch else None


def to_json(d: Diagnosis) -> dict[str, Any]:
    """The diagnosis as one JSON-ready document (times in ISO 8601 UTC)."""
    host = d.facts.host
    return {
        "status": d.status.value,
        "exit_status": int(d.exit_code),
        "verdict": d.verdict.to_json(),
        "host": {
            "driver_version": host.nvml.driver_version,
            "kernel_module_version": host.kernel_module_version,
            "nvml_failure": host.nvml.failure,
            "nvml_error": host.nvml.error,
            "gpus": [{"index": g.index, "uuid": g.uuid, "name": g.name,
                      "persistence": g.persistence} for g in host.nvml.gpus],
            "persistenced": {
                "running": host.persistenced.running,
                "pid": host.persistenced.pid,
                "argv": list(host.persistenced.argv),
                "unit_state": host.persistenced.unit_state,
                "unit_argv": list(host.persistenced.unit_argv),
                "persistence_mode": host.persistenced.persistence_flag,
            },
            "docker": {
                "available": host.docker.available,
                "error": host.docker.error,
                "engine": host.docker.engine,
                "engine_version": host.docker.engine_version,
                "cgroup_driver": host.docker.cgroup_driver,
                "cgroup_version": host.docker.cgroup_version,
                "default_runtime": host.docker.default_runtime,
            },
            "last_systemd_reload": _json_time(host.last_reload),
            "findings": [f.to_json() for f in d.host_findings],
        },
        "history": {
            "source": d.facts.history.source,
            "where": d.facts.history.where or None,
            "as_of": _json_time(d.facts.history.as_of),
            "error": d.facts.history.error,
        },
        "containers": [_container_json(r) for r in d.containers],
    }


def _container_json(r: ContainerReport) -> dict[str, Any]:
    c = r.facts
    probe = c.probe
    return {
        "name": c.name,
        "id": c.id[:12],
        "status": c.status,
        "started_at": _json_time(c.started_at),
        "verdict": r.verdict.to_json(),
        "gpu_methods": list(c.gpu_methods),
        "probe": None if probe is None else {
            "command": list(probe.command),
            "result": probe.result.value,
            "exit_code": probe.exit_code,
            "output": probe.output,
        },
        "device_access_ok": c.device_access_ok,
        "device_check": None if c.device_check is None else {
            "access": c.device_check.access.value, "reason": c.device_check.reason,
        },
        "scope_device_allow": c.scope_device_allow,
        "library_version": c.library_version,
        "logs": {
            "patterns": list(c.logs.patterns),
            "scanned": c.logs.scanned,
            "matches": c.logs.matches,
            "matches_since_start": c.logs.matches_since_start,
            "last_line": c.logs.last_line,
            "last_at": _json_time(c.logs.last_at),
            "error": c.logs.error,
        },
        "history": [{**e.to_json(), "at": _json_time(e.at)} for e in c.history],
        "given_up_at": _json_time(c.given_up_at),
    }


def history_source(h: HistoryFacts, now: float) -> str:
    """Where the daemon's history came from, and how old it is, in words."""
    if h.source == "daemon":
        return f"from the running daemon (control socket in {h.where})"
    if h.source == "journal" and h.as_of is not None:
        newest = _age(max(0.0, now - h.as_of))
        return (f"from gpuwatchd's records in the journal, the newest {newest} old "
                "(no daemon answered, no state file)")
    if h.source == "state file" and h.as_of is not None:
        age = max(0.0, now - h.as_of)
        return f"from the state file {h.where}, written {_age(age)} ago (no daemon answered)"
    return f"none ({h.error or 'not read'})"


def _age(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


_HEADLINE = {
    Status.HEALTHY: "healthy",
    Status.PROBLEM: "problem found",
    Status.CANNOT_CHECK: "could not check everything",
}


def _verdict_lines(v: Verdict, indent: str, *, summary: bool = True,
                   fixes: bool = True) -> list[str]:
    out = [f"{indent}{v.summary}"] if summary else []
    sections = [("evidence", v.evidence)]
    if fixes:
        sections += [("fix now", v.fix_now), ("fix for good", v.fix_for_good)]
    sections.append(("advice", v.advice))
    for title, items in sections:
        if items:
            out.append(f"{indent}{title}:")
            mark = "- " if title == "evidence" else "$ " if title.startswith("fix") else "* "
            out += [f"{indent}  {mark}{item}" for item in items]
    return out


def render_text(d: Diagnosis) -> str:
    """The diagnosis for people: the verdict first, then a section per container and the host.

    A summary or a set of fixes already printed is not printed again.
    """
    top = d.verdict
    out = [f"gpuwatchd diagnose: {_HEADLINE[d.status]} (exit {int(d.exit_code)})",
           f"verdict: {top.cause}: {top.summary}"]
    shown_fixes = set()
    for r in d.containers:
        c, v = r.facts, r.verdict
        out += ["", f"== {c.name} ({c.id[:12]}, {c.status}): {v.cause}"]
        out += _verdict_lines(v, "  ", summary=v.summary != top.summary)
        shown_fixes.add((v.fix_now, v.fix_for_good))
        methods = ", ".join(c.gpu_methods) or "none seen"
        out.append(f"  GPUs given by: {methods}; started {_when(c.started_at)}")
    host = d.facts.host
    out += ["", "== host"]
    nvml = host.nvml
    if nvml.failure:
        out.append(f"  NVML: {nvml.failure} ({nvml.error or 'no message'})")
    else:
        out.append(f"  driver {nvml.driver_version or 'unknown'}")
        for g in nvml.gpus:
            mode = "Enabled" if g.persistence else "Disabled"
            out.append(f"  GPU {g.index} {g.name} {g.uuid}: persistence mode {mode}")
    pd = host.persistenced
    if pd.running:
        out.append(f"  nvidia-persistenced: running (PID {pd.pid}): {' '.join(pd.argv)}")
    elif pd.unit_state is not None:
        unit = " ".join(pd.unit_argv) or "no ExecStart"
        out.append(f"  nvidia-persistenced: not running; unit {pd.unit_state}: {unit}")
    else:
        out.append("  nvidia-persistenced: not running")
    dk = host.docker
    if dk.available:
        out.append(f"  engine: {dk.engine or '?'} {dk.engine_version or '?'}, "
                   f"cgroup driver {dk.cgroup_driver}, cgroup v{dk.cgroup_version}")
        if not d.containers:
            out.append("  no container to examine (none named, none watched: see [watch])")
    else:
        out.append(f"  docker: unavailable ({dk.error})")
    out.append(f"  last systemd reload: {_when(host.last_reload)}")
    out.append(f"  gpuwatchd history: {history_source(d.facts.history, host.now)}")
    for f in d.host_findings:
        out.append(f"  -- {f.cause} ({f.status.value})")
        seen = (f.fix_now, f.fix_for_good) in shown_fixes or (
            # The same fix for good, printed above with a container's fix now.
            bool(f.fix_for_good) and any(f.fix_for_good == good for _, good in shown_fixes)
        )
        out += _verdict_lines(f, "     ", summary=f.summary != top.summary, fixes=not seen)
        if seen:
            out.append("     fix: as above")
        shown_fixes.add((f.fix_now, f.fix_for_good))
    return "\n".join(out) + "\n"
