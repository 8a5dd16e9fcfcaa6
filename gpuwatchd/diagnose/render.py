"""``gpuwatchd diagnose`` output: the diagnosis as text for people, or as one JSON document."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from gpuwatchd.diagnose.data import ContainerReport, Diagnosis, HistoryFacts, Status, Verdict


def when(epoch: float | None) -> str:
    """``epoch`` as ISO 8601 UTC to the second; ``unknown`` for none."""
    if not epoch:
        return "unknown"
    stamp = datetime.fromtimestamp(epoch, timezone.utc)
    return stamp.isoformat(timespec="seconds").replace("+00:00", "Z")


def _json_time(epoch: float | None) -> str | None:
    return when(epoch) if epoch else None


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
        out.append(f"  GPUs given by: {methods}; started {when(c.started_at)}")
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
    out.append(f"  last systemd reload: {when(host.last_reload)}")
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
