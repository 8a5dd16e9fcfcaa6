"""``gpuwatchd diagnose``: the verdict, a pure function of the facts.

:func:`diagnose` turns :class:`~gpuwatchd.diagnose.data.Facts` into a
:class:`~gpuwatchd.diagnose.data.Diagnosis` without any I/O, so every rule is
table-tested. A container's cause is the daemon's: :func:`container_evidence`
builds the cause rule's evidence and :func:`gpuwatchd.core.cause.cause_of`
decides; the advice comes from :mod:`gpuwatchd.model.advice`.

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
from dataclasses import replace

from gpuwatchd.core.cause import DeviceAccess, Evidence, cause_of
from gpuwatchd.core.device_access import ReloadExposure, reload_exposure
from gpuwatchd.diagnose.data import (
    ContainerFacts,
    ContainerReport,
    Diagnosis,
    Facts,
    HostFacts,
    ProbeFacts,
    Status,
    Verdict,
)
from gpuwatchd.diagnose.render import when as _when
from gpuwatchd.model.advice import (
    DEVICE_ACCESS_PREVENTION,
    HOST_CAUSE_ADVICE,
    PERSISTENCE_FIX_FOR_GOOD,
    PERSISTENCE_FIX_NOW,
    RELOAD_CAVEAT,
)
from gpuwatchd.model.container import AT_RISK_METHODS
from gpuwatchd.model.events import Gpu
from gpuwatchd.model.state import HistoryEntry
from gpuwatchd.model.vocabulary import HOST_CAUSES, Cause, Confidence, ProbeResult

#: A matching line counts against the application (``not_gpu``) only when it was
#: logged this long after the container's last start and after gpuwatchd's last
#: restart of it: the engine stamps StartedAt late, so the line that led to a
#: restart can carry a time just after the new start.
START_MARGIN = 2.0
#: gpuwatchd records a restart once the engine says it is done, a moment after
#: the new StartedAt; a restart recorded this long before the start still made it.
RESTART_SLACK = 5.0


def _host_verdict(cause: Cause, evidence: tuple[str, ...],
                  extra_fix: tuple[str, ...] = (), advice: tuple[str, ...] = ()) -> Verdict:
    a = HOST_CAUSE_ADVICE[cause]
    return Verdict(cause.value, Status.PROBLEM, a.summary, evidence,
                   (*a.fix_now, *extra_fix), a.fix_for_good, advice)


def _gpu_list(gpus: Sequence[Gpu]) -> str:
    return ", ".join(f"GPU {g.index} ({g.name})" for g in gpus)


def host_findings(
    host: HostFacts, containers: Sequence[ContainerFacts] = ()
) -> tuple[Verdict, ...]:
    """The host's own problems, risks and gaps, most important first."""
    found: list[Verdict] = []
    nvml = host.nvml
    host_cause = HOST_CAUSES.get(nvml.failure or "")
    if host_cause is not None:
        found.append(_host_verdict(host_cause, (f"host NVML: {nvml.error or nvml.failure}",)))
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
            (PERSISTENCE_FIX_NOW,),
            PERSISTENCE_FIX_FOR_GOOD, (RELOAD_CAVEAT,),
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
            (PERSISTENCE_FIX_NOW,),
            PERSISTENCE_FIX_FOR_GOOD, (RELOAD_CAVEAT,),
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
            advice=DEVICE_ACCESS_PREVENTION,
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
            advice=DEVICE_ACCESS_PREVENTION,
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
    out += [f"gpuwatchd saw persistence mode off on {uuid} at {_when(at)}, after the "
            f"container started ({_when(c.started_at)})"
            for uuid, at in _off_since(host, c).items()]
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
        good, extra = PERSISTENCE_FIX_FOR_GOOD, (RELOAD_CAVEAT,)
    elif restart.cause == Cause.DEVICE_ACCESS_LOST.value:
        good = DEVICE_ACCESS_PREVENTION
    summary += ". The cause stays on the host until it is fixed for good." if good else "."
    return Verdict("healed", Status.HEALTHY, summary, evidence, (), good,
                   tuple(dict.fromkeys((*extra, *advice))))


def container_evidence(host: HostFacts, c: ContainerFacts) -> Evidence:
    """The cause rule's evidence for container ``c`` (see :class:`~gpuwatchd.core.cause.Evidence`).

    GPUs off since the start come from the daemon's record of when each GPU was
    last seen with persistence mode off (``host.gpu_last_disabled``); GPUs off
    now from the host's NVML.
    """
    nvml = host.nvml
    known = nvml.failure is None and bool(nvml.gpus)
    return Evidence(
        host_nvml=nvml.failure,
        probe=c.probe.result if c.probe is not None else None,
        device_access=DeviceAccess.of(c.device_access_ok),
        off_since_start=None if host.gpu_last_disabled is None else bool(_off_since(host, c)),
        off_now=any(not g.persistence for g in nvml.gpus) if known else None,
        reload_since_start=host.last_reload is not None and host.last_reload >= c.started_at,
        at_risk=_exposure(host, c) is not ReloadExposure.NOT_EXPOSED,
    )


def _off_since(host: HostFacts, c: ContainerFacts) -> dict[str, float]:
    """GPU UUID -> when the daemon last saw it off, for those seen off since c started."""
    seen = host.gpu_last_disabled or {}
    return {uuid: at for uuid, at in sorted(seen.items()) if at >= c.started_at}


def _judge(host: HostFacts, c: ContainerFacts) -> Verdict:
    evidence = [*_log_evidence(c)]
    if c.probe is not None:
        evidence.insert(0, _probe_evidence(c.probe))
    evidence += _context_evidence(host, c)
    ev = tuple(evidence)
    restart = f"docker restart {c.name}"
    nvml = host.nvml
    e = container_evidence(host, c)
    advice = DEVICE_ACCESS_PREVENTION if e.at_risk else ()
    cause, confidence = cause_of(e)

    if not cause.restart_cures:
        return _host_verdict(cause, (f"host NVML: {nvml.error or nvml.failure}", *ev),
                             (restart,), advice)
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

    # The kernel's refusal is proof whatever the probe could show (rule 2 of cause_of).
    refused = cause is Cause.DEVICE_ACCESS_LOST and confidence is Confidence.CERTAIN
    if result is ProbeResult.PROBE_UNAVAILABLE:
        if refused:
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
        if refused:
            return _device_lost(c, ev, certain=True)
        return Verdict(
            Cause.UNKNOWN.value, Status.PROBLEM,
            f"`{' '.join(c.probe.command)}` hung inside {c.name}: NVML did not answer in time.",
            ev, (restart,), advice=advice,
        )

    # NVML fails inside: the cause rule decides, as the daemon's does.
    if cause is Cause.DEVICE_ACCESS_LOST:
        return _device_lost(c, ev, certain=confidence is Confidence.CERTAIN)
    if cause is Cause.PERSISTENCE_OFF:
        return _persistence_off(host, c, ev, advice)
    if result is not ProbeResult.NVML_UNKNOWN_ERROR:
        return Verdict(
            Cause.UNKNOWN.value, Status.PROBLEM,
            f"NVML inside {c.name} reports {result.value} while the host's NVML answers: the "
            "container's view of the driver is stale or differs from the host's (its library "
            "or device state); a restart gives it the host's again.",
            ev, (restart,), advice=advice,
        )
    return Verdict(
        Cause.UNKNOWN.value, Status.PROBLEM,
        f"NVML fails inside {c.name} and the evidence names no cause; a restart usually "
        "brings it back.", ev, (restart,), advice=advice,
    )


def _persistence_off(host: HostFacts, c: ContainerFacts, evidence: tuple[str, ...],
                     advice: tuple[str, ...]) -> Verdict:
    off = [g for g in host.nvml.gpus if not g.persistence]
    if off:
        where = f"persistence mode is off on {_gpu_list(off)}"
    else:
        seen = _off_since(host, c)
        names = {g.uuid: f"GPU {g.index} ({g.name})" for g in host.nvml.gpus}
        where = ("persistence mode was off on "
                 f"{', '.join(names.get(u, u) for u in seen)} after it started")
    return Verdict(
        Cause.PERSISTENCE_OFF.value, Status.PROBLEM,
        f"NVML fails inside {c.name} because {where}: the driver idled and tore down the "
        "state the container was started with (the field report's cause).",
        evidence, (PERSISTENCE_FIX_NOW, f"docker restart {c.name}"),
        PERSISTENCE_FIX_FOR_GOOD, (RELOAD_CAVEAT, *advice),
    )


def _device_lost(c: ContainerFacts, evidence: tuple[str, ...], *, certain: bool) -> Verdict:
    how = ("the kernel no longer lets its processes open the NVIDIA device nodes (its device "
           "cgroup refuses them)" if certain
           else "most likely its GPU device access was revoked (systemd daemon-reload under "
           "the systemd cgroup driver; cgroup v2 does not show the rules)")
    return Verdict(
        Cause.DEVICE_ACCESS_LOST.value, Status.PROBLEM,
        f"NVML fails inside {c.name} because {how}; a restart restores it.",
        evidence, (f"docker restart {c.name}",), DEVICE_ACCESS_PREVENTION,
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


