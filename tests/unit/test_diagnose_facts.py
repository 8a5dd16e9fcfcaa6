"""The fact readers behind diagnose: process table, systemctl, inspect data, logs."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from gpuwatchd.core.docker_inspect import container_info, gpu_methods
from gpuwatchd.diagnose.facts import (
    find_process,
    kernel_module_version,
    library_version,
    parse_exec_start,
    persistenced_facts,
    scan_logs,
)
from gpuwatchd.model.container import (
    GPU_CDI,
    GPU_DEVICE,
    GPU_LEGACY_HOOK,
    GPU_NVIDIA_RUNTIME,
)
from gpuwatchd.patterns import LogPattern

EXEC_START = (
    "ExecStart={ path=/usr/bin/nvidia-persistenced ; argv[]=/usr/bin/nvidia-persistenced "
    "--user nvidia-persistenced --no-persistence-mode --verbose ; ignore_errors=no ; "
    "start_time=[n/a] ; stop_time=[n/a] ; pid=0 ; code=(null) ; status=0/0 }"
)


def fake_proc(root: Path, processes: dict[int, tuple[list[str], str]]) -> Path:
    """A /proc-like tree: PID/cmdline (NUL-separated) and PID/comm."""
    proc = root / "proc"
    proc.mkdir(parents=True)
    (proc / "self").mkdir()  # non-numeric entries are skipped
    for pid, (argv, comm) in processes.items():
        d = proc / str(pid)
        d.mkdir()
        (d / "cmdline").write_bytes(b"".join(a.encode() + b"\0" for a in argv))
        (d / "comm").write_text(comm + "\n")
    return proc


def fake_systemctl(tmp_path: Path, output: str, status: int = 0) -> tuple[str, ...]:
    """An executable that prints ``output`` for any arguments, like ``systemctl show``."""
    script = tmp_path / "systemctl"
    script.write_text(f"#!/bin/sh\ncat <<'EOF'\n{output}\nEOF\nexit {status}\n")
    script.chmod(0o755)
    return (str(script),)


def test_find_process_by_argv0_and_by_comm(tmp_path: Path) -> None:
    """argv[0]'s base name or the 15-character comm finds the process; the lowest PID wins."""
    proc = fake_proc(tmp_path, {
        300: (["/usr/bin/nvidia-persistenced", "--persistence-mode"], "nvidia-persiste"),
        200: (["nvidia-persistenced", "--no-persistence-mode"], "nvidia-persiste"),
        100: (["/usr/bin/python3", "nvidia-persistenced"], "python3"),  # only an argument
    })
    assert find_process("nvidia-persistenced", proc) == (
        200, ("nvidia-persistenced", "--no-persistence-mode"))
    proc2 = fake_proc(tmp_path / "b", {7: ([], "nvidia-persiste")})  # cmdline unreadable/empty
    assert find_process("nvidia-persistenced", proc2) == (7, ())
    assert find_process("nvidia-persistenced", tmp_path / "missing") is None


def test_find_process_in_the_real_proc() -> None:
    """A real process whose argv[0] is nvidia-persistenced is found with its flags."""
    fake = subprocess.Popen(
        ["/usr/bin/nvidia-persistenced", "-c", "import time; time.sleep(60)",
         "--no-persistence-mode"], executable=sys.executable)
    try:
        # Between fork and exec, /proc shows the parent's command line: wait for the exec.
        cmdline = Path(f"/proc/{fake.pid}/cmdline")
        deadline = time.monotonic() + 10
        while not cmdline.read_bytes().startswith(b"/usr/bin/nvidia-persistenced\0"):
            assert time.monotonic() < deadline, "the fake process did not exec"
            time.sleep(0.01)
        found = find_process("nvidia-persistenced")
        assert found is not None
        pid, argv = found
        assert pid == fake.pid
        assert argv[-1] == "--no-persistence-mode"
    finally:
        fake.kill()
        fake.wait()


def test_parse_exec_start() -> None:
    """The command line between ``argv[]=`` and `` ;``; nothing for an empty property."""
    assert parse_exec_start(EXEC_START) == (
        "/usr/bin/nvidia-persistenced", "--user", "nvidia-persistenced",
        "--no-persistence-mode", "--verbose")
    assert parse_exec_start("") == ()


def test_persistenced_unit_read_only_under_systemd(tmp_path: Path) -> None:
    """With systemd as init, the unit's ExecStart and state come from systemctl show;
    without it, systemctl is not asked."""
    proc = fake_proc(tmp_path, {})
    systemctl = fake_systemctl(tmp_path, f"{EXEC_START}\nActiveState=active\nLoadState=loaded")
    run_dir = tmp_path / "run-systemd"
    run_dir.mkdir()
    facts = persistenced_facts(proc, systemctl, run_dir)
    assert not facts.running
    assert facts.unit_state == "active"
    assert facts.unit_argv[-2] == "--no-persistence-mode"
    assert facts.persistence_flag is False

    no_systemd = persistenced_facts(proc, systemctl, tmp_path / "absent")
    assert no_systemd.unit_state is None and no_systemd.persistence_flag is None


@pytest.mark.parametrize(("output", "status"), [
    ("ExecStart=\nActiveState=inactive\nLoadState=not-found", 0),  # no such unit
    ("", 1),  # systemctl failed
])
def test_persistenced_unit_absent_or_systemctl_failing(
    tmp_path: Path, output: str, status: int
) -> None:
    """No unit, or a failing systemctl: the unit fields stay unknown."""
    run_dir = tmp_path / "run-systemd"
    run_dir.mkdir()
    facts = persistenced_facts(fake_proc(tmp_path, {}), fake_systemctl(tmp_path, output, status),
                               run_dir)
    assert facts.unit_state is None and facts.unit_argv == ()


def test_persistenced_missing_systemctl(tmp_path: Path) -> None:
    """A systemctl that cannot be run is not an error."""
    run_dir = tmp_path / "run-systemd"
    run_dir.mkdir()
    facts = persistenced_facts(fake_proc(tmp_path, {}), (str(tmp_path / "nope"),), run_dir)
    assert facts.unit_state is None


def attrs(host: dict[str, Any], env: list[str] | None = None) -> dict[str, Any]:
    return {"HostConfig": host, "Config": {"Env": env or []}}


@pytest.mark.parametrize(("inspect", "default_runtime", "expected"), [
    (attrs({}), None, ()),
    (attrs({"DeviceRequests": [{"Driver": "", "Count": -1, "Capabilities": [["gpu"]]}]}), None,
     (GPU_LEGACY_HOOK,)),
    (attrs({"DeviceRequests": [{"Driver": "nvidia", "DeviceIDs": ["0"]}]}), None,
     (GPU_LEGACY_HOOK,)),
    (attrs({"DeviceRequests": [{"Driver": "cdi", "DeviceIDs": ["nvidia.com/gpu=all"]}]}), None,
     (GPU_CDI,)),
    (attrs({"DeviceRequests": [{"Driver": "", "DeviceIDs": ["nvidia.com/gpu=0"]}]}), None,
     (GPU_CDI,)),
    (attrs({"Annotations": {"cdi.k8s.io/nvidia": "nvidia.com/gpu=all"}}), None, (GPU_CDI,)),
    (attrs({"Runtime": "nvidia"}, ["NVIDIA_VISIBLE_DEVICES=all"]), None, (GPU_NVIDIA_RUNTIME,)),
    (attrs({"Runtime": "runc"}, ["NVIDIA_VISIBLE_DEVICES=all"]), "nvidia", ()),
    (attrs({}, ["NVIDIA_VISIBLE_DEVICES=all"]), "nvidia", (GPU_NVIDIA_RUNTIME,)),
    (attrs({}, ["NVIDIA_VISIBLE_DEVICES=void"]), "nvidia", ()),
    (attrs({"Devices": [{"PathOnHost": "/dev/nvidia0", "PathInContainer": "/dev/nvidia0"}]}),
     None, (GPU_DEVICE,)),
    (attrs({"Devices": [{"PathOnHost": "/dev/dri", "PathInContainer": "/dev/dri"}]}), None, ()),
])
def test_gpu_methods(inspect: dict[str, Any], default_runtime: str | None,
                     expected: tuple[str, ...]) -> None:
    """How a container got its GPUs, from its inspect data; the daemon's reading of
    the same data expects an NVIDIA device exactly when a method names one."""
    assert gpu_methods(inspect, default_runtime) == expected
    info = container_info({"Id": "f" * 64, **inspect})
    assert info.expects_nvidia_device is bool(gpu_methods(inspect))


def test_scan_logs_counts_matches_and_the_last_one() -> None:
    """Matches are counted, those since the last start separately; the last one is kept."""
    raw = (
        b"2025-12-31T10:00:00.000000000Z [INFO] ok\n"
        b"2025-12-31T10:00:01.500000000Z [INFO] x (ER-05)\n"
        b"2025-12-31T11:00:00.000000000Z [INFO] y (ER-05)\n"
        b"2025-12-31T11:00:03.000000000Z [INFO] z (ER-05)\n"
        b"2025-12-31T11:00:05.000000000Z [INFO] ok\n"
    )
    started = 1767178800.0  # 2025-12-31T11:00:00Z
    logs = scan_logs(raw, (LogPattern("(ER-05)"),), started)
    assert (logs.scanned, logs.matches, logs.matches_since_start) == (5, 3, 1)
    assert logs.match_times == (started - 3598.5, started, started + 3)
    assert logs.last_line == "[INFO] z (ER-05)"
    assert logs.last_at == started + 3
    assert logs.patterns == ("(ER-05)",)
    assert scan_logs(b"", (LogPattern("re:ER-0[5]"),), 0).matches == 0


def test_a_line_logged_around_started_at_is_not_this_runs() -> None:
    """The engine stamps StartedAt late, so the line that led to a restart can carry a
    time just after the new start: only lines START_MARGIN past it are this run's."""
    for stamp, counted in ((b"10:59:59.600", 0), (b"11:00:01.900", 0), (b"11:00:02.100", 1)):
        raw = b"2025-12-31T" + stamp + b"000000Z [INFO] y (ER-05)\n"
        assert scan_logs(raw, (LogPattern("(ER-05)"),), 1767178800.0).matches_since_start \
            == counted, stamp


def test_versions_from_files(tmp_path: Path) -> None:
    """The kernel module's version from /proc/driver/nvidia/version, the library's
    from its file name; None when absent."""
    (tmp_path / "driver" / "nvidia").mkdir(parents=True)
    (tmp_path / "driver" / "nvidia" / "version").write_text(
        "NVRM version: NVIDIA UNIX x86_64 Kernel Module  535.274.02  Thu Oct  2 2025\n")
    assert kernel_module_version(tmp_path) == "535.274.02"
    assert kernel_module_version(tmp_path / "none") is None
    lib = tmp_path / "root" / "usr" / "lib" / "x86_64-linux-gnu"
    lib.mkdir(parents=True)
    (lib / "libnvidia-ml.so.1").touch()
    assert library_version(tmp_path / "root") is None
    (lib / "libnvidia-ml.so.550.54.14").touch()
    assert library_version(tmp_path / "root") == "550.54.14"
