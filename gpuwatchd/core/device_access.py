"""Whether a container may still open its NVIDIA device nodes: the pure decisions.

The kernel is asked by a helper process that joins the container's cgroups and
opens the container's ``/dev/nvidiactl`` (see :mod:`gpuwatchd.adapters.device_check`);
this module decides everything around it without I/O:

- where the container's cgroups are (:func:`parse_proc_cgroup`,
  :func:`parse_mountinfo`);
- whether it may be joined at all: a paused or frozen container gives
  "cannot tell" before anything joins it (:func:`frozen`), because a process
  that joins a frozen cgroup freezes too;
- what the open's outcome means (:func:`verdict_for_open`), and how it weighs
  against cgroup v1's ``devices.list`` (:func:`combine`);
- whether the next ``systemctl daemon-reload`` will revoke a container's
  access, from its scope's ``DeviceAllow=`` (:func:`reload_exposure`).
"""

from __future__ import annotations

import errno
from collections.abc import Iterable
from dataclasses import dataclass

from gpuwatchd.compat import StrEnum
from gpuwatchd.model.container import AT_RISK_METHODS

#: NVIDIA's character major (/dev/nvidia0.., /dev/nvidiactl) and nvidiactl's minor.
NVIDIA_MAJOR = 195
NVIDIACTL_MINOR = 255


class Access(StrEnum):
    """The kernel's answer to "may this container open its NVIDIA control node?"."""

    ALLOWED = "allowed"
    LOST = "lost"
    CANNOT_TELL = "cannot_tell"


@dataclass(frozen=True)
class AccessCheck:
    """One check's answer and why, in words fit for a record or ``diagnose``."""

    access: Access
    reason: str

    @property
    def ok(self) -> bool | None:
        """True allowed, False lost, None cannot tell (the cause rule's evidence)."""
        if self.access is Access.CANNOT_TELL:
            return None
        return self.access is Access.ALLOWED


@dataclass(frozen=True)
class ProcCgroups:
    """A process's cgroup paths (relative to each hierarchy's root), from ``/proc/<pid>/cgroup``."""

    unified: str | None = None  #: the ``0::`` line (cgroup v2)
    devices: str | None = None  #: the v1 devices controller
    freezer: str | None = None  #: the v1 freezer controller


def parse_proc_cgroup(text: str) -> ProcCgroups:
    """Parses ``/proc/<pid>/cgroup``; lines it does not understand are skipped."""
    unified = devices = freezer = None
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3 or not parts[2].startswith("/"):
            continue
        hid, controllers, path = parts
        if hid == "0" and controllers == "":
            unified = path
        names = controllers.split(",")
        if "devices" in names:
            devices = path
        if "freezer" in names:
            freezer = path
    return ProcCgroups(unified, devices, freezer)


@dataclass(frozen=True)
class CgroupMounts:
    """Where this process sees each hierarchy mounted (None: not mounted here)."""

    unified: str | None = None
    devices: str | None = None
    freezer: str | None = None


def parse_mountinfo(text: str) -> CgroupMounts:
    """Parses ``/proc/self/mountinfo`` for the cgroup2 mount and the v1 devices and freezer mounts.

    Only mounts of a hierarchy's root (field 4 is ``/``) count: a bind mount
    of a sub-cgroup would put paths from ``/proc/<pid>/cgroup`` in the wrong place.
    """
    unified = devices = freezer = None
    for line in text.splitlines():
        head, sep, tail = line.partition(" - ")
        fields, extra = head.split(), tail.split()
        if not sep or len(fields) < 5 or len(extra) < 3 or fields[3] != "/":
            continue
        point = fields[4].replace("\\040", " ")
        fstype, options = extra[0], extra[2].split(",")
        if fstype == "cgroup2" and unified is None:
            unified = point
        elif fstype == "cgroup":
            if "devices" in options and devices is None:
                devices = point
            if "freezer" in options and freezer is None:
                freezer = point
    return CgroupMounts(unified, devices, freezer)


def frozen(paused: bool, v1_freezer_state: str | None, v2_freeze: str | None) -> bool:
    """Whether the container is, or is becoming, frozen: its cgroups must not be joined.

    ``paused`` is Docker's ``State.Paused`` (or status ``paused``);
    ``v1_freezer_state`` the v1 ``freezer.state`` (THAWED, FREEZING, FROZEN);
    ``v2_freeze`` the cgroup2 ``cgroup.freeze`` (``0`` or ``1``). None: not read.
    """
    if paused:
        return True
    if v1_freezer_state is not None and v1_freezer_state.strip() not in ("", "THAWED"):
        return True
    return v2_freeze is not None and v2_freeze.strip() == "1"


def verdict_for_open(err: int | None) -> AccessCheck:
    """What the helper's open of the control node from inside the container's cgroups means.

    ``err`` is the open's errno, None when it succeeded. EPERM is the device
    cgroup (v1 rule or v2 program) refusing: access is lost. Success, ENXIO
    (a node with no driver behind it) and EIO (the driver refusing on its own)
    got past the device cgroup: allowed. Anything else (no node, a file
    permission, a symbolic link refused) cannot tell.
    """
    if err is None:
        return AccessCheck(Access.ALLOWED, "the kernel let a process in its cgroups open it")
    name = errno.errorcode.get(err, str(err))
    if err == errno.EPERM:
        return AccessCheck(
            Access.LOST, "the kernel refused a process in its cgroups the open (EPERM)"
        )
    if err in (errno.ENXIO, errno.EIO):
        return AccessCheck(
            Access.ALLOWED,
            f"the kernel let a process in its cgroups open it (the driver answered {name})",
        )
    return AccessCheck(Access.CANNOT_TELL, f"opening it failed with {name}, which proves nothing")


def combine(kernel: AccessCheck, devices_list: bool | None) -> AccessCheck:
    """The kernel's answer first; cgroup v1's ``devices.list`` where the kernel cannot tell.

    The helper joins the v1 devices cgroup too, so where it answered, the
    list cannot add anything it did not see.
    """
    if kernel.access is not Access.CANNOT_TELL or devices_list is None:
        return kernel
    if devices_list:
        return AccessCheck(Access.ALLOWED, "devices.list still allows it")
    return AccessCheck(Access.LOST, "devices.list no longer allows it")


# -- prevention: will the next daemon-reload break this container? -------------------------

#: How a container got its GPUs that makes it depend on a device rule systemd does not know.
EXPOSED_METHODS = AT_RISK_METHODS


class ReloadExposure(StrEnum):
    """What the next ``systemctl daemon-reload`` does to a container's GPU access."""

    NOT_EXPOSED = "not_exposed"  #: cgroupfs driver, CDI only, or the scope allows the nodes
    AT_RISK = "at_risk"  #: systemd driver and an exposed method; the scope was not read
    WILL_BREAK = "will_break"  #: the scope's DeviceAllow= lacks the NVIDIA nodes


def parse_device_allow(value: str) -> tuple[tuple[str, str], ...]:
    """Parses ``systemctl show -p DeviceAllow`` output (or its value) into (device, access) pairs.

    systemd prints every entry on one line, ``DeviceAllow=/dev/null rwm
    char-pts rw``; several ``DeviceAllow=`` lines are merged.
    """
    words: list[str] = []
    for line in value.splitlines():
        line = line.strip()
        if line.startswith("DeviceAllow="):
            line = line[len("DeviceAllow="):]
        words += line.split()
    pairs: list[tuple[str, str]] = []
    i = 0
    while i < len(words):
        device = words[i]
        access = words[i + 1] if i + 1 < len(words) and set(words[i + 1]) <= set("rwm") else ""
        pairs.append((device, access or "rwm"))
        i += 2 if access else 1
    return tuple(pairs)


def allows_nvidia(entries: Iterable[tuple[str, str]]) -> bool:
    """Whether ``DeviceAllow=`` entries let ``/dev/nvidiactl`` be opened for reading and writing."""
    names = (
        "/dev/nvidiactl",
        f"/dev/char/{NVIDIA_MAJOR}:{NVIDIACTL_MINOR}",
        "char-nvidia-frontend",
        "char-*",
    )
    return any(device in names and set("rw") <= set(access) for device, access in entries)


def reload_exposure(
    cgroup_driver: str | None, gpu_methods: Iterable[str], device_allow: str | None
) -> ReloadExposure:
    """Whether the next daemon-reload will revoke a container's GPU access.

    Only Docker's systemd cgroup driver is exposed: on a reload systemd
    re-applies the scope's ``DeviceAllow=`` as a device program beside the
    one runc built. A container that got its GPUs through CDI has them in its
    scope; one that got them through the legacy hook, ``--runtime nvidia`` or
    ``--device`` may not. ``device_allow`` is the scope's ``DeviceAllow=`` as
    ``systemctl show`` prints it, or None when it could not be read: then an
    exposed method alone says "at risk". Read and lacking the NVIDIA nodes,
    the next reload *will* break it, however the GPUs were given.
    """
    if cgroup_driver != "systemd":
        return ReloadExposure.NOT_EXPOSED
    if device_allow is not None:
        entries = parse_device_allow(device_allow)
        return ReloadExposure.NOT_EXPOSED if allows_nvidia(entries) else ReloadExposure.WILL_BREAK
    if EXPOSED_METHODS & set(gpu_methods):
        return ReloadExposure.AT_RISK
    return ReloadExposure.NOT_EXPOSED
