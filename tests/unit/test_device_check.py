"""The device-access check's pure decisions, table by table."""

from __future__ import annotations

import errno

import pytest

from gpuwatchd.core.device_access import (
    Access,
    AccessCheck,
    CgroupMounts,
    ProcCgroups,
    ReloadExposure,
    allows_nvidia,
    combine,
    frozen,
    parse_device_allow,
    parse_mountinfo,
    parse_proc_cgroup,
    reload_exposure,
    verdict_for_open,
)

CID = "3f2a9c1d0b7e" + "0" * 52

HYBRID = f"""12:freezer:/docker/{CID}
11:devices:/docker/{CID}
4:memory:/docker/{CID}
1:name=systemd:/docker/{CID}
0::/docker/{CID}
"""
PURE_V2_SYSTEMD = f"0::/system.slice/docker-{CID}.scope\n"
V1_ONLY = f"5:devices,freezer:/docker/{CID}\n3:cpu,cpuacct:/docker/{CID}\n"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (HYBRID, ProcCgroups(f"/docker/{CID}", f"/docker/{CID}", f"/docker/{CID}")),
        (PURE_V2_SYSTEMD, ProcCgroups(f"/system.slice/docker-{CID}.scope", None, None)),
        (V1_ONLY, ProcCgroups(None, f"/docker/{CID}", f"/docker/{CID}")),
        ("", ProcCgroups()),
        ("garbage\n0::relative\n:::\n", ProcCgroups()),
        # name=systemd has no controllers but is not the unified line.
        ("1:name=systemd:/x\n", ProcCgroups()),
    ],
    ids=["hybrid", "pure-v2-systemd", "v1-only", "empty", "garbage", "named-v1"],
)
def test_parse_proc_cgroup(text: str, expected: ProcCgroups) -> None:
    assert parse_proc_cgroup(text) == expected


MOUNTINFO = """\
25 30 0:22 / /sys/fs/cgroup rw,nosuid - tmpfs tmpfs rw,mode=755
26 25 0:23 / /sys/fs/cgroup/unified rw,nosuid - cgroup2 cgroup2 rw
27 25 0:24 / /sys/fs/cgroup/devices rw,nosuid - cgroup cgroup rw,devices
28 25 0:25 / /sys/fs/cgroup/freezer rw,nosuid - cgroup cgroup rw,freezer
29 25 0:26 / /sys/fs/cgroup/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct
40 30 0:23 /docker/abc /mnt/sub rw - cgroup2 cgroup2 rw
"""


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (MOUNTINFO, CgroupMounts("/sys/fs/cgroup/unified", "/sys/fs/cgroup/devices",
                                 "/sys/fs/cgroup/freezer")),
        ("31 30 0:27 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw,nsdelegate\n",
         CgroupMounts("/sys/fs/cgroup", None, None)),
        # Only a sub-cgroup bind: paths from /proc/<pid>/cgroup would not resolve there.
        ("40 30 0:23 /docker/abc /mnt/sub rw - cgroup2 cgroup2 rw\n", CgroupMounts()),
        ("", CgroupMounts()),
        ("short line\n", CgroupMounts()),
    ],
    ids=["hybrid", "pure-v2", "sub-bind-only", "empty", "garbage"],
)
def test_parse_mountinfo(text: str, expected: CgroupMounts) -> None:
    assert parse_mountinfo(text) == expected


@pytest.mark.parametrize(
    ("paused", "v1", "v2", "expected"),
    [
        (False, None, None, False),
        (False, "THAWED\n", "0\n", False),
        (True, None, None, True),  # State.Paused alone suffices
        (True, "THAWED\n", "0\n", True),
        (False, "FROZEN\n", None, True),
        (False, "FREEZING\n", None, True),  # on its way: joining would freeze the helper
        (False, None, "1\n", True),
        (False, "", "", False),
    ],
)
def test_frozen_is_decided_before_joining(
    paused: bool, v1: str | None, v2: str | None, expected: bool
) -> None:
    assert frozen(paused, v1, v2) is expected


@pytest.mark.parametrize(
    ("err", "access"),
    [
        (None, Access.ALLOWED),
        (errno.ENXIO, Access.ALLOWED),
        (errno.EIO, Access.ALLOWED),
        (errno.EPERM, Access.LOST),
        (errno.EACCES, Access.CANNOT_TELL),  # a file permission, not the device cgroup
        (errno.ENOENT, Access.CANNOT_TELL),
        (errno.ELOOP, Access.CANNOT_TELL),  # a symbolic link planted as the node
        (errno.ENODEV, Access.CANNOT_TELL),
        (9999, Access.CANNOT_TELL),
    ],
)
def test_verdict_for_open(err: int | None, access: Access) -> None:
    check = verdict_for_open(err)
    assert check.access is access
    assert check.reason
    assert check.ok is {Access.ALLOWED: True, Access.LOST: False, Access.CANNOT_TELL: None}[access]


ALLOWED = AccessCheck(Access.ALLOWED, "k")
LOST = AccessCheck(Access.LOST, "k")
UNKNOWN = AccessCheck(Access.CANNOT_TELL, "k")


@pytest.mark.parametrize(
    ("kernel", "listed", "access"),
    [
        (ALLOWED, None, Access.ALLOWED),
        (ALLOWED, True, Access.ALLOWED),
        (ALLOWED, False, Access.ALLOWED),  # the helper sat in that devices cgroup too
        (LOST, None, Access.LOST),
        (LOST, True, Access.LOST),  # the v2 model: devices.list still allows the node
        (LOST, False, Access.LOST),
        (UNKNOWN, None, Access.CANNOT_TELL),
        (UNKNOWN, True, Access.ALLOWED),
        (UNKNOWN, False, Access.LOST),
    ],
)
def test_combine_prefers_the_kernel(
    kernel: AccessCheck, listed: bool | None, access: Access
) -> None:
    assert combine(kernel, listed).access is access


@pytest.mark.parametrize(
    ("shown", "pairs"),
    [
        ("DeviceAllow=", ()),
        ("DeviceAllow=/dev/null rwm /dev/zero rw", (("/dev/null", "rwm"), ("/dev/zero", "rw"))),
        ("/dev/nvidiactl rw char-pts", (("/dev/nvidiactl", "rw"), ("char-pts", "rwm"))),
        ("DeviceAllow=/dev/a r\nDeviceAllow=/dev/b w\n", (("/dev/a", "r"), ("/dev/b", "w"))),
    ],
)
def test_parse_device_allow(shown: str, pairs: tuple[tuple[str, str], ...]) -> None:
    assert parse_device_allow(shown) == pairs


@pytest.mark.parametrize(
    ("entries", "allowed"),
    [
        ((), False),
        ((("/dev/null", "rwm"),), False),
        ((("/dev/nvidiactl", "rw"),), True),
        ((("/dev/nvidiactl", "r"),), False),  # NVML opens it read-write
        ((("/dev/char/195:255", "rwm"),), True),
        ((("char-nvidia-frontend", "rw"),), True),
        ((("char-*", "rwm"),), True),
        ((("/dev/nvidia0", "rw"),), False),  # a GPU node without the control node
    ],
)
def test_allows_nvidia(entries: tuple[tuple[str, str], ...], allowed: bool) -> None:
    assert allows_nvidia(entries) is allowed


SCOPE_WITHOUT = "DeviceAllow=/dev/null rwm /dev/zero rwm char-pts rwm"
SCOPE_WITH = SCOPE_WITHOUT + " /dev/nvidiactl rwm /dev/nvidia0 rwm"


@pytest.mark.parametrize(
    ("driver", "methods", "scope", "expected"),
    [
        ("cgroupfs", ("legacy_hook",), None, ReloadExposure.NOT_EXPOSED),
        ("cgroupfs", ("device",), SCOPE_WITHOUT, ReloadExposure.NOT_EXPOSED),
        (None, ("legacy_hook",), None, ReloadExposure.NOT_EXPOSED),
        ("systemd", ("legacy_hook",), None, ReloadExposure.AT_RISK),
        ("systemd", ("nvidia_runtime",), None, ReloadExposure.AT_RISK),
        ("systemd", ("device",), None, ReloadExposure.AT_RISK),
        ("systemd", ("cdi",), None, ReloadExposure.NOT_EXPOSED),
        ("systemd", (), None, ReloadExposure.NOT_EXPOSED),
        ("systemd", ("legacy_hook",), SCOPE_WITHOUT, ReloadExposure.WILL_BREAK),
        ("systemd", ("nvidia_runtime",), SCOPE_WITHOUT, ReloadExposure.WILL_BREAK),
        ("systemd", ("cdi",), SCOPE_WITHOUT, ReloadExposure.WILL_BREAK),  # read beats inferred
        ("systemd", ("device",), SCOPE_WITH, ReloadExposure.NOT_EXPOSED),
        ("systemd", ("legacy_hook",), SCOPE_WITH, ReloadExposure.NOT_EXPOSED),
        ("systemd", ("legacy_hook",), "DeviceAllow=", ReloadExposure.WILL_BREAK),
    ],
)
def test_reload_exposure(
    driver: str | None, methods: tuple[str, ...], scope: str | None, expected: ReloadExposure
) -> None:
    assert reload_exposure(driver, methods, scope) is expected
