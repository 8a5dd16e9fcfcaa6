"""Gather the facts ``gpuwatchd diagnose`` judges: blocking, read-only I/O.

Nothing here changes anything: it reads NVML, ``docker inspect``/``logs``/
``info``, runs the configured in-container probe (the same check as the
daemon), reads ``/proc`` and asks ``systemctl show``. Every reader degrades to
"unknown" (None) instead of raising, except :func:`gather`, which raises
:class:`~gpuwatchd.adapters.docker_engine.DockerUnavailable` never either: an engine that
does not answer becomes ``DockerFacts(available=False)``.

The places it reads are parameters, so tests can point them at a fake process
tree or a fake ``systemctl``.
"""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from gpuwatchd.adapters.device_check import device_access, scope_device_allow
from gpuwatchd.adapters.docker_engine import (
    ContainerInfo,
    DockerGateway,
    DockerUnavailable,
)
from gpuwatchd.adapters.journal_query import last_reload, open_journal
from gpuwatchd.adapters.state_file import read_state_file, state_path
from gpuwatchd.config import Config
from gpuwatchd.core.classify import classify_probe, summarize_output
from gpuwatchd.core.docker_inspect import container_info, gpu_methods, parse_docker_time
from gpuwatchd.diagnose.data import (
    ContainerFacts,
    DockerFacts,
    Facts,
    HistoryFacts,
    HostFacts,
    LogFacts,
    NvmlFacts,
    PersistencedFacts,
    ProbeFacts,
)
from gpuwatchd.diagnose.verdict import START_MARGIN
from gpuwatchd.model.state import MAX_HISTORY, HistoryEntry, PersistedState
from gpuwatchd.patterns import first_match
from gpuwatchd.text import one_line, text_or_none

PERSISTENCED = "nvidia-persistenced"
#: How far back the logs are read, and at most how many lines.
LOG_WINDOW = 24 * 3600.0
LOG_TAIL = 500
#: Where the NVIDIA user-space library lives on Debian/Ubuntu and RHEL-likes.
LIB_DIRS = ("usr/lib/x86_64-linux-gnu", "usr/lib64", "usr/lib/aarch64-linux-gnu", "usr/lib")
_LIB_VERSION = re.compile(r"^libnvidia-ml\.so\.(\d+\.\d+(?:\.\d+)?)$")
_MODULE_VERSION = re.compile(r"Kernel Module\s+(?:for \S+\s+)?(\d+\.\d+(?:\.\d+)?)")
_DRIVER_VERSION = re.compile(r"Driver Version:\s*(\d+\.\d+(?:\.\d+)?)")
#: A bound on the one external command run (systemctl show).
SYSTEMCTL_TIMEOUT = 5.0


# --------------------------------------------------------------------------
# nvidia-persistenced


def find_process(name: str, proc: Path = Path("/proc")) -> tuple[int, tuple[str, ...]] | None:
    """The lowest PID whose ``argv[0]`` base name (or ``comm``) is ``name``, with its argv."""
    found: list[tuple[int, tuple[str, ...]]] = []
    try:
        entries = list(proc.iterdir())
    except OSError:
        return None
    for entry in entries:
        if not entry.name.isdigit():
            continue
        try:
            raw = (entry / "cmdline").read_bytes()
        except OSError:
            continue  # gone meanwhile, or a kernel thread we may not read
        parts = raw.split(b"\0")
        if parts and not parts[-1]:
            parts.pop()  # the usual trailing NUL
        argv = tuple(a.decode(errors="replace") for a in parts)
        comm = ""
        with contextlib.suppress(OSError):
            comm = (entry / "comm").read_text().strip()
        # comm is cut at 15 characters: "nvidia-persiste".
        if (argv and os.path.basename(argv[0]) == name) or (comm and comm == name[:15]):
            found.append((int(entry.name), argv))
    return min(found) if found else None


def parse_exec_start(value: str) -> tuple[str, ...]:
    """The command line in ``systemctl show -p ExecStart`` output (``argv[]=... ;``)."""
    match = re.search(r"argv\[\]=(.*?) ;", value)
    return tuple(match.group(1).split()) if match else ()


def persistenced_facts(
    proc: Path = Path("/proc"),
    systemctl: Sequence[str] = ("systemctl",),
    systemd_run_dir: Path = Path("/run/systemd/system"),
) -> PersistencedFacts:
    """Whether ``nvidia-persistenced`` runs, with which flags, and what its unit starts.

    The unit is asked about only when systemd is the init (``systemd_run_dir``
    exists, as ``sd_booted()`` checks); a failing ``systemctl`` leaves the unit
    fields unknown.
    """
    running = find_process(PERSISTENCED, proc)
    unit_state: str | None = None
    unit_argv: tuple[str, ...] = ()
    if systemd_run_dir.is_dir():
        try:
            shown = subprocess.run(
                [*systemctl, "show", f"{PERSISTENCED}.service",
                 "-p", "ExecStart", "-p", "ActiveState", "-p", "LoadState"],
                capture_output=True, text=True, timeout=SYSTEMCTL_TIMEOUT, check=False,
            )
        except (OSError, subprocess.SubprocessError):
            shown = None
        if shown is not None and shown.returncode == 0:
            props = dict(line.split("=", 1) for line in shown.stdout.splitlines() if "=" in line)
            if props.get("LoadState", "loaded") != "not-found":
                unit_state = props.get("ActiveState") or None
                unit_argv = parse_exec_start(props.get("ExecStart", ""))
    return PersistencedFacts(
        running=running is not None,
        pid=running[0] if running else None,
        argv=running[1] if running else (),
        unit_state=unit_state,
        unit_argv=unit_argv,
    )


# --------------------------------------------------------------------------
# Host readers


def kernel_module_version(proc: Path = Path("/proc")) -> str | None:
    """The loaded NVIDIA kernel module's version from ``/proc/driver/nvidia/version``."""
    try:
        text = (proc / "driver" / "nvidia" / "version").read_text()
    except OSError:
        return None
    match = _MODULE_VERSION.search(text)
    return match.group(1) if match else None


def library_version(root: Path) -> str | None:
    """The version in the name of the ``libnvidia-ml.so.VERSION`` under ``root``."""
    for lib_dir in LIB_DIRS:
        try:
            names = os.listdir(root / lib_dir)
        except OSError:
            continue
        for name in sorted(names):
            match = _LIB_VERSION.match(name)
            if match:
                return match.group(1)
    return None


def nvml_facts() -> NvmlFacts:
    """The host's NVML (through :class:`gpuwatchd.adapters.nvml.Nvml`), or why it failed."""
    try:
        from gpuwatchd.adapters.nvml import Nvml, NvmlError
    except ImportError as exc:  # pynvml missing: as good as no library
        return NvmlFacts(failure="library_missing", error=str(exc))
    try:
        info = Nvml().host_info()
    except NvmlError as exc:
        return NvmlFacts(failure=exc.kind, error=str(exc))
    return NvmlFacts(driver_version=info.driver_version, gpus=info.gpus)


def docker_facts(gateway: DockerGateway) -> DockerFacts:
    """Which engine answered, its version and cgroup driver, or why none answered."""
    try:
        engine = gateway.ping()
        info = gateway.info()
    except DockerUnavailable as exc:
        return DockerFacts(available=False, error=str(exc))
    return DockerFacts(
        engine=engine.name,
        engine_version=engine.version,
        cgroup_driver=text_or_none(info.get("CgroupDriver")),
        cgroup_version=text_or_none(info.get("CgroupVersion")),
        default_runtime=text_or_none(info.get("DefaultRuntime")),
    )


# --------------------------------------------------------------------------
# Containers


def scan_logs(raw: bytes, patterns: Sequence[Any], started_at: float) -> LogFacts:
    """Match timestamped ``docker logs`` output against the patterns (pure)."""
    scanned = matches = since = 0
    times: list[float] = []
    last_line: str | None = None
    last_at: float | None = None
    for line in raw.decode("utf-8", errors="replace").splitlines():
        stamp, _, text = line.partition(" ")
        scanned += 1
        if first_match(tuple(patterns), text) is None:
            continue
        matches += 1
        try:
            at = parse_docker_time(stamp)
        except ValueError:
            at = 0.0
        # The engine stamps StartedAt only after the process runs, so the line
        # that led to a restart can carry a time just after the new start: only
        # lines START_MARGIN past it belong to this run.
        if at > started_at + START_MARGIN:
            since += 1
        if at:
            times.append(at)
        last_line, last_at = text.strip()[:300], at or None
    return LogFacts(
        patterns=tuple(p.source for p in patterns), scanned=scanned, matches=matches,
        matches_since_start=since, last_line=last_line, last_at=last_at,
        match_times=tuple(times),
    )


def container_facts(
    gateway: DockerGateway, config: Config, attrs: Mapping[str, Any],
    docker: DockerFacts, *, now: float, proc: Path = Path("/proc"),
) -> ContainerFacts:
    """Read one container: logs, the in-container NVML check, cgroup and versions.

    Raises:
        DockerUnavailable: the engine stopped answering.
    """
    info: ContainerInfo = container_info(attrs)
    settings = config.for_container(info.name, info.image)
    patterns = tuple(settings.patterns)
    try:
        raw = gateway.recent_logs(info.id, since=now - LOG_WINDOW, tail=LOG_TAIL)
        logs = scan_logs(raw, patterns, info.started_at)
    except DockerUnavailable:
        raise
    except Exception as exc:  # docker.errors.APIError: e.g. the "none" log driver
        logs = LogFacts(patterns=tuple(p.source for p in patterns), error=one_line(exc))
    probe: ProbeFacts | None = None
    if info.status == "running":
        outcome = gateway.exec_probe(info.id, settings.probe_command, config.probe.timeout)
        result = classify_probe(outcome.exit_code, outcome.output,
                                timed_out=outcome.timed_out, exec_error=outcome.exec_error)
        text = outcome.output.decode(errors="replace")
        excerpt = summarize_output(text) or (outcome.exec_error or "")
        version = _DRIVER_VERSION.search(text)
        probe = ProbeFacts(
            command=settings.probe_command, result=result, exit_code=outcome.exit_code,
            output=excerpt, driver_version=version.group(1) if version else None,
        )
    check = device_access(info, proc=proc) if info.status in ("running", "paused") else None
    allow = scope_device_allow(info, proc=proc) if docker.cgroup_driver == "systemd" else None
    lib = library_version(proc / str(info.pid) / "root") if info.pid > 0 else None
    return ContainerFacts(
        name=info.name, id=info.id, status=info.status, started_at=info.started_at,
        gpu_methods=gpu_methods(attrs, docker.default_runtime), probe=probe,
        device_access_ok=None if check is None else check.ok, device_check=check,
        scope_device_allow=allow, library_version=lib, logs=logs,
    )


# --------------------------------------------------------------------------
# What the daemon saw and did


@dataclass(frozen=True)
class History:
    """The daemon's history of every container, and where it came from."""

    facts: HistoryFacts
    entries: Mapping[str, tuple[HistoryEntry, ...]]
    given_up: Mapping[str, float]
    #: When the daemon last saw each GPU off; None when the source does not keep it.
    gpu_last_disabled: Mapping[str, float] | None = None


#: The records that say what gpuwatchd did, and the history event each one is.
JOURNAL_EVENTS = {
    "container_restarted": ("restarted", "GPUWATCHD_CONFIDENCE"),
    "container_recovered": ("recovered", "GPUWATCHD_RESULT"),
    "remediation_gave_up": ("gave_up", None),
}


def history_from_journal(entries: Sequence[Mapping[str, Any]]) -> dict[str, tuple[HistoryEntry,
                                                                                 ...]]:
    """What gpuwatchd's own journal records say it did (pure): dry-run records
    and records of other programs are left out; the newest MAX_HISTORY per
    container are kept, oldest first."""
    out: dict[str, list[HistoryEntry]] = {}
    for e in entries:
        kind = JOURNAL_EVENTS.get(str(e.get("GPUWATCHD_EVENT", "")))
        name = e.get("CONTAINER_NAME")
        stamp = getattr(e.get("__REALTIME_TIMESTAMP"), "timestamp", None)
        if kind is None or not name or e.get("SYSLOG_IDENTIFIER") != "gpuwatchd" \
                or e.get("GPUWATCHD_DRY_RUN") == "true" or stamp is None:
            continue
        event, detail_field = kind
        detail = e.get(detail_field) if detail_field else None
        out.setdefault(str(name), []).append(HistoryEntry(
            float(stamp()), event, str(e.get("GPUWATCHD_CAUSE") or "unknown"),
            None if detail is None else str(detail)[:64]))
    return {k: tuple(sorted(v, key=lambda h: h.at)[-MAX_HISTORY:]) for k, v in out.items()}


def journal_history(journal_path: str | None = None) -> dict[str, tuple[HistoryEntry, ...]]:
    """gpuwatchd's records in the system journal of the last LOG_WINDOW, as
    history; empty when the journal cannot be read. Never raises."""
    try:
        reader = open_journal(journal_path)
    except (ImportError, OSError):
        return {}
    try:
        try:
            reader.add_match(SYSLOG_IDENTIFIER="gpuwatchd")
            for event in JOURNAL_EVENTS:
                reader.add_match(GPUWATCHD_EVENT=event)
            reader.seek_realtime(time.time() - LOG_WINDOW)
            entries = [dict(e) for _, e in zip(range(10_000), reader, strict=False)]
        finally:
            reader.close()
    except OSError:
        return {}
    return history_from_journal(entries)


def daemon_history(config: Config, journal_path: str | None = None) -> History:
    """Ask the running daemon (its control socket); without one, read its state
    file, without moving or changing anything, and gpuwatchd's records in the
    journal for the containers the file has no history of. Never raises."""
    from gpuwatchd.observers.control import ControlError, NoDaemon, request

    runtime = config.daemon.runtime_dir
    try:
        doc = request(runtime, {"command": "history"}, timeout=5.0)
        state = PersistedState.from_json(doc["state"])
        return History(HistoryFacts("daemon", str(runtime), float(doc["now"])),
                       state.history, state.given_up, state.gpu_last_disabled)
    except (NoDaemon, ControlError, OSError, KeyError, TypeError, ValueError) as exc:
        daemon_error = one_line(exc)
    path = state_path(config.daemon.state_dir)
    journal = journal_history(journal_path)
    try:
        state, mtime = read_state_file(path)
    except FileNotFoundError:
        problem = f"no daemon answered ({daemon_error}) and no state file at {path}"
    except (OSError, ValueError) as exc:
        problem = f"no daemon answered ({daemon_error}); state file {path}: {one_line(exc)}"
    else:
        merged = {**journal, **state.history}
        return History(HistoryFacts("state file", str(path), mtime), merged, state.given_up,
                       state.gpu_last_disabled)
    if journal:
        newest = max(e.at for entries in journal.values() for e in entries)
        return History(HistoryFacts("journal", "gpuwatchd's records", newest), journal, {})
    return History(HistoryFacts(error=problem), {}, {})


# --------------------------------------------------------------------------
# Everything


@dataclass(frozen=True)
class Sources:
    """Where the host readers look; tests point them at fakes."""

    proc: Path = Path("/proc")
    systemctl: tuple[str, ...] = ("systemctl",)
    systemd_run_dir: Path = Path("/run/systemd/system")
    journal_path: str | None = None


class NoSuchContainer(Exception):
    """A container named on the command line does not exist (``names`` lists them)."""

    def __init__(self, names: Sequence[str]) -> None:
        super().__init__(", ".join(names))
        self.names = tuple(names)


def gather(
    config: Config,
    names: Sequence[str] = (),
    *,
    gateway: DockerGateway | None = None,
    sources: Sources = Sources(),
) -> Facts:
    """Gather every fact for ``names`` (default: every watched container).

    Raises:
        NoSuchContainer: a named container does not exist (checked before any probe).
    """
    from gpuwatchd.core.watchset import is_watched

    now = time.time()
    host = HostFacts(
        nvml=nvml_facts(),
        persistenced=persistenced_facts(sources.proc, sources.systemctl,
                                        sources.systemd_run_dir),
        docker=DockerFacts(available=False, error="not asked"),
        last_reload=last_reload(sources.journal_path),
        kernel_module_version=kernel_module_version(sources.proc),
        now=now,
    )
    own = gateway is None
    try:
        if gateway is None:
            gateway = DockerGateway(config.docker.host, timeout=config.docker.timeout)
    except Exception as exc:  # docker.errors.DockerException: a bad DOCKER_HOST
        return Facts(_with_docker(host, DockerFacts(available=False, error=one_line(exc))))
    try:
        docker = docker_facts(gateway)
        host = _with_docker(host, docker)
        if not docker.available:
            return Facts(host)
        try:
            if names:
                found = [(n, gateway.inspect_attrs(n)) for n in names]
                missing = [n for n, a in found if a is None]
                if missing:
                    raise NoSuchContainer(missing)
                targets = [a for _, a in found if a is not None]
            else:
                targets = []
                for info in gateway.list_containers():
                    if is_watched(info, config.watch):
                        attrs = gateway.inspect_attrs(info.id)
                        if attrs is not None:
                            targets.append(attrs)
            containers = tuple(
                container_facts(gateway, config, a, docker, now=now, proc=sources.proc)
                for a in targets
            )
        except DockerUnavailable as exc:
            return Facts(_with_docker(host, DockerFacts(available=False, error=str(exc))))
        history = daemon_history(config, sources.journal_path)
        containers = tuple(
            replace(c, history=history.entries.get(c.name, ()),
                    given_up_at=_in_force(history.given_up.get(c.name), config, now))
            for c in containers
        )
        host = replace(host, gpu_last_disabled=history.gpu_last_disabled)
        return Facts(host, containers, history.facts)
    finally:
        if own and gateway is not None:
            gateway.close()


def _in_force(given_up_at: float | None, config: Config, now: float) -> float | None:
    """A give-up holds for one window (a stopped daemon has not re-armed it yet)."""
    if given_up_at is None or given_up_at + config.remediation.window <= now:
        return None
    return given_up_at


def _with_docker(host: HostFacts, docker: DockerFacts) -> HostFacts:
    return replace(host, docker=docker)
