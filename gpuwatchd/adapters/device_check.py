"""Ask the kernel whether a container may still open its NVIDIA control node.

A helper process (:mod:`gpuwatchd.adapters.device_check_helper`, a program of its own)
joins the container's cgroup2 directory, and on v1 or hybrid hosts its devices
cgroup, then opens the container's ``/dev/nvidiactl``. Every device program
attached to the cgroup (runc's, and systemd's after a daemon-reload) and the
v1 device rules judge that open exactly as they judge the container's own, so
the answer holds on cgroup v1 and v2 alike; nothing inside the image is
needed. ``nsenter --cgroup`` would not do: it changes the cgroup namespace,
not the cgroup, and so reports "allowed" when access is lost.

Finding the container's cgroups: through its init process's
``/proc/<pid>/cgroup`` when that process is visible here (the ``pid`` from
``inspect`` is checked to belong to the container: in another PID namespace,
as in a container with the host's cgroup namespace, it may be another
process); otherwise from the container ID under this process's cgroup mounts
(:func:`find_container_cgroup`, whatever the engine), opening the host node
the container was given.

Bounded: the helper is killed after ``timeout`` and reaped, and a child
cgroup it made is removed afterwards whatever happened. It is never the
daemon that joins: only the helper's own process moves.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from gpuwatchd.adapters.docker_engine import ContainerInfo, device_access_ok
from gpuwatchd.core.device_access import (
    Access,
    AccessCheck,
    CgroupMounts,
    ProcCgroups,
    combine,
    frozen,
    parse_mountinfo,
    parse_proc_cgroup,
    verdict_for_open,
)

HELPER = Path(__file__).with_name("device_check_helper.py")
#: The helper needs a Python start and a few system calls; a wedged one is cut here.
DEFAULT_TIMEOUT = 5.0
CONTAINER_NODE = "dev/nvidiactl"
_serial = itertools.count(1)


@dataclass(frozen=True)
class Target:
    """Where the helper goes and what it opens."""

    cgroups: ProcCgroups
    root: str | None  #: the container's root (``/proc/<pid>/root``), or None: ``node`` is absolute
    node: str


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except OSError:
        return None


def locate(info: ContainerInfo, mounts: CgroupMounts, proc: Path = Path("/proc")) -> Target | None:
    """The container's cgroups and control node as seen from here; None when not found."""
    text = _read(proc / str(info.pid) / "cgroup") if info.pid > 0 else None
    if text is not None and info.id in text:
        return Target(parse_proc_cgroup(text), str(proc / str(info.pid) / "root"), CONTAINER_NODE)
    found = {
        kind: find_container_cgroup(mount, info.id) if mount is not None else None
        for kind, mount in (("unified", mounts.unified), ("devices", mounts.devices),
                            ("freezer", mounts.freezer))
    }
    if found["unified"] or found["devices"]:
        cgroups = ProcCgroups(found["unified"], found["devices"], found["freezer"])
        return Target(cgroups, None, info.nvidiactl_on_host or "/dev/nvidiactl")
    return None


def find_container_cgroup(mount: str, container_id: str, max_depth: int = 8) -> str | None:
    """The shallowest cgroup under ``mount`` whose directory name carries the
    container's full ID, relative to ``mount`` (``/docker/<id>``,
    ``/system.slice/docker-<id>.scope``, ``/libpod_parent/libpod-<id>``,
    ``/machine.slice/libpod-<id>.scope``, or under any cgroup parent); None
    when there is none.  Found by reading the hierarchy, never built from an
    engine's naming."""
    if len(container_id) < 32:
        return None  # a short ID could name another container's cgroup
    level = [Path(mount)]
    for _ in range(max_depth):
        below: list[Path] = []
        for directory in level:
            try:
                entries = list(os.scandir(directory))
            except OSError:
                continue
            for entry in entries:
                if not entry.is_dir(follow_symlinks=False):
                    continue
                if container_id in entry.name:
                    return "/" + str(Path(entry.path).relative_to(mount))
                below.append(Path(entry.path))
        if not below:
            return None
        level = below
    return None


def kernel_check(
    info: ContainerInfo, *, timeout: float = DEFAULT_TIMEOUT, proc: Path = Path("/proc")
) -> AccessCheck:
    """Asks the kernel, through the helper, whether the container may open its control node."""
    if not info.expects_nvidia_device:
        return AccessCheck(Access.CANNOT_TELL, "it was given no NVIDIA device")
    if info.status not in ("running", "paused"):
        return AccessCheck(Access.CANNOT_TELL, f"it is {info.status}")
    mounts = parse_mountinfo(_read(proc / "self" / "mountinfo") or "")
    target = locate(info, mounts, proc)
    if target is None:
        return AccessCheck(Access.CANNOT_TELL, "its cgroups were not found")
    cg = target.cgroups
    v1_state = v2_freeze = None
    if mounts.freezer and cg.freezer:
        v1_state = _read(Path(mounts.freezer, cg.freezer.lstrip("/"), "freezer.state"))
    if mounts.unified and cg.unified:
        v2_freeze = _read(Path(mounts.unified, cg.unified.lstrip("/"), "cgroup.freeze"))
    if frozen(info.paused or info.status == "paused", v1_state, v2_freeze):
        return AccessCheck(Access.CANNOT_TELL, "it is paused: joining its cgroups would freeze")
    child = f"gpuwatchd-device-check.{os.getpid()}.{next(_serial)}"
    argv = [sys.executable, "-I", "-S", str(HELPER), "--child", child, "--node", target.node]
    if target.root is not None:
        argv += ["--root", target.root]
    if mounts.unified and cg.unified:
        argv += ["--cgroup2-mount", mounts.unified, "--cgroup2", cg.unified]
    if mounts.devices and cg.devices:
        argv += ["--devices-mount", mounts.devices, "--devices", cg.devices]
    try:
        return _run(argv, timeout)
    finally:
        if mounts.unified and cg.unified:
            with contextlib.suppress(OSError):
                os.rmdir(Path(mounts.unified, cg.unified.lstrip("/"), child))


def _run(argv: list[str], timeout: float) -> AccessCheck:
    try:
        proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            close_fds=True, start_new_session=True,
        )
    except OSError as exc:
        return AccessCheck(Access.CANNOT_TELL, f"the helper did not start: {exc.strerror}")
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.communicate(timeout=1.0)
        return AccessCheck(Access.CANNOT_TELL, f"the helper did not answer within {timeout:g}s")
    try:
        answer = json.loads(out.decode(errors="replace").strip().splitlines()[-1])
        stage, err_no = str(answer["stage"]), answer["errno"]
    except (ValueError, IndexError, KeyError, TypeError):
        lines = err.decode(errors="replace").strip().splitlines()
        detail = lines[-1:] or [f"exit {proc.returncode}"]
        return AccessCheck(Access.CANNOT_TELL, f"the helper failed: {detail[0][:200]}")
    if stage == "join":
        name = os.strerror(int(err_no)) if isinstance(err_no, int) else "unknown error"
        return AccessCheck(Access.CANNOT_TELL, f"its cgroups could not be joined ({name})")
    return verdict_for_open(int(err_no) if isinstance(err_no, int) else None)


def container_scope(info: ContainerInfo, proc: Path = Path("/proc")) -> str | None:
    """The systemd scope unit of the container (``docker-<id>.scope``,
    ``libpod-<id>.scope``), as its init process's ``/proc/<pid>/cgroup`` names
    it; None when that process is not visible or sits in no such scope."""
    text = _read(proc / str(info.pid) / "cgroup") if info.pid > 0 else None
    if not text or not info.id or info.id not in text:
        return None
    for line in text.splitlines():
        for part in reversed(line.split(":", 2)[-1].split("/")):
            if part.endswith(".scope") and info.id in part:
                return part
    return None


def scope_device_allow(
    info: ContainerInfo,
    systemctl: Sequence[str] = ("systemctl",),
    systemd_run_dir: Path = Path("/run/systemd/system"),
    timeout: float = 5.0,
    proc: Path = Path("/proc"),
) -> str | None:
    """The ``DeviceAllow=`` of the container's scope (:func:`container_scope`), from systemctl.

    None when it cannot be read: systemd is not the init, the container has no
    scope (the cgroupfs driver makes none) or it is not active, or
    ``systemctl`` fails.
    """
    scope = container_scope(info, proc)
    if scope is None or not systemd_run_dir.is_dir():
        return None
    try:
        shown = subprocess.run(
            [*systemctl, "show", scope,
             "-p", "DeviceAllow", "-p", "ActiveState"],
            capture_output=True, text=True, timeout=timeout, check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    if shown.returncode != 0:
        return None
    lines = shown.stdout.splitlines()
    if "ActiveState=active" not in lines:
        return None
    # systemd prints one DeviceAllow= line per entry.
    return "\n".join(line for line in lines if line.startswith("DeviceAllow=")) or "DeviceAllow="


def device_access(
    info: ContainerInfo, *, timeout: float = DEFAULT_TIMEOUT, proc: Path = Path("/proc")
) -> AccessCheck:
    """The kernel's answer, with cgroup v1's ``devices.list`` as the second opinion."""
    kernel = kernel_check(info, timeout=timeout, proc=proc)
    return combine(kernel, device_access_ok(info, proc=proc))
