"""``gpuwatchd status`` for people: the daemon's status document as a few tables.

Pure functions of the document (``Daemon.status_document()``, as the control
socket returns it) and the current time, so they are tested without a daemon.
Fields the document lacks are shown as ``-``; nothing here raises for a
document from an older or newer daemon.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

NONE = "-"


def format_age(seconds: float) -> str:
    """``42s``, ``5m 3s``, ``2h 10m``, ``3d 4h``: an age or duration, two units at most."""
    total = max(0, int(seconds))
    days, rest = divmod(total, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d {hours}h"
    if hours:
        return f"{hours}h {minutes}m"
    if minutes:
        return f"{minutes}m {secs}s"
    return f"{secs}s"


def format_when(at: float | None, now: float) -> str:
    """``12s ago (14:03:07)``; local wall-clock time, with the date when not today."""
    if at is None:
        return "never"
    clock = _clock(at, now)
    delta = now - at
    if delta >= 0:
        return f"{format_age(delta)} ago ({clock})"
    return f"in {format_age(-delta)} ({clock})"


def format_until(until: float | None, now: float) -> str:
    """``until 15:00:00 (56m 53s left)``, or ``until resumed`` when it has no end."""
    if until is None:
        return "until resumed"
    return f"until {_clock(until, now)} ({format_age(until - now)} left)"


def _clock(at: float, now: float) -> str:
    """``at`` as local wall-clock time; with the date when not on ``now``'s day."""
    when = datetime.fromtimestamp(at)
    if when.date() == datetime.fromtimestamp(now).date():
        return when.strftime("%H:%M:%S")
    return when.strftime("%Y-%m-%d %H:%M")


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]

    def line(cells: Sequence[str]) -> str:
        return "  " + "  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip()
    return [line(headers), *(line(r) for r in rows)]


def _container_state(c: Mapping[str, Any], now: float) -> str:
    words = [str(c.get("state") or NONE)]
    if c.get("given_up_at") is not None:
        until = c.get("given_up_until")
        words.append("GIVEN UP" + (f" (re-armed {format_when(until, now)})" if until else "")
                     + ": run `gpuwatchd reset " + str(c.get("name")) + "` once fixed")
    if c.get("paused"):
        words.append("PAUSED " + format_until(c.get("paused_until"), now))
    if c.get("remediation"):
        cause = c.get("cause")
        words.append(f"remediating: {c['remediation']}" + (f" (cause {cause})" if cause else ""))
    if c.get("orchestrated"):
        words.append("orchestrated: never restarted")
    if c.get("action") == "notify":
        words.append("notify only: never restarted")
    return ", ".join(words)


def _profile_lines(containers: Sequence[Mapping[str, Any]]) -> list[str]:
    """Each container's profile and the patterns its log lines are matched against."""
    lines = ["", "Profiles and log patterns:"]
    for c in containers:
        patterns = ", ".join(json.dumps(p, ensure_ascii=False) for p in c.get("patterns") or ())
        lines.append(f"  {c.get('name') or NONE}: profile {c.get('profile') or NONE}, "
                     f"action {c.get('action') or 'restart'}; "
                     f"patterns: {patterns or 'none (probes only)'}")
    return lines


def degraded(doc: Mapping[str, Any]) -> list[str]:
    """The degraded conditions, one phrase each (empty when none)."""
    core: Mapping[str, Any] = doc.get("core") or {}
    out = []
    if doc.get("docker_available") is False or core.get("docker_unavailable"):
        error = core.get("docker_unavailable")
        out.append("Docker unavailable" + (f" ({error})" if error else ""))
    if doc.get("nvml_available") is False or core.get("nvml_unavailable"):
        reason = core.get("nvml_unavailable")
        out.append("host NVML unavailable" + (f" ({reason})" if reason else ""))
    return out


def render_status(doc: Mapping[str, Any], now: float) -> str:
    """The status document as text for a terminal (ends with a newline)."""
    core: Mapping[str, Any] = doc.get("core") or {}
    uptime = doc.get("uptime")
    mode = "DRY RUN (records decisions, changes nothing)" if doc.get("dry_run") else "active"
    lines = [
        f"gpuwatchd {doc.get('version', '?')} (pid {doc.get('pid', '?')}), "
        f"up {format_age(float(uptime)) if uptime is not None else NONE}, mode: {mode}",
    ]
    problems = degraded(doc)
    lines.append("degraded: " + "; ".join(problems) if problems else "degraded: no")
    engine: Mapping[str, Any] | None = doc.get("engine")
    if engine:  # the engine of the last connection (absent before the first)
        lines.append(f"engine: {engine.get('name', '?')} {engine.get('version', '?')} "
                     f"at {engine.get('host', '?')}")
    if core.get("paused_all"):
        lines.append("remediation PAUSED for every container "
                     + format_until(core.get("paused_all_until"), now))

    gpus: Sequence[Mapping[str, Any]] = core.get("gpus") or ()
    lines += ["", "GPUs:"]
    if gpus:
        lines += _table(
            ("GPU", "NAME", "UUID", "PERSISTENCE", "CHECKED"),
            [
                (
                    str(g.get("index", NONE)),
                    str(g.get("name") or NONE),
                    str(g.get("uuid") or NONE),
                    "on" if g.get("persistence") else "OFF",
                    format_when(g.get("last_checked"), now),
                )
                for g in gpus
            ],
        )
    else:
        lines.append("  none seen yet" if not problems else "  none (see degraded)")

    containers: Sequence[Mapping[str, Any]] = core.get("containers") or ()
    lines += ["", "Watched containers:"]
    if containers:
        lines += _table(
            ("CONTAINER", "LAST PROBE", "PROBED", "RESTARTS IN WINDOW", "STATE"),
            [
                (
                    str(c.get("name") or NONE),
                    str(c.get("last_probe_result") or NONE),
                    format_when(c.get("last_probe_at"), now),
                    str(c.get("restarts_in_window", NONE)),
                    _container_state(c, now),
                )
                for c in containers
            ],
        )
        lines += _profile_lines(containers)
    else:
        lines.append("  none (check [watch] in the configuration)")
    return "\n".join(lines) + "\n"


__all__ = ["degraded", "format_age", "format_until", "format_when", "render_status"]
