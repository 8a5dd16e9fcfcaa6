"""packaging/install.sh and uninstall.sh, run as root inside a real systemd."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.bench.gpu import GpuController
from tests.systemd.conftest import REPO, WHEELS_IN_BOX, SystemdBox, exposure, gpu_dropin_text

pytestmark = [pytest.mark.systemd, pytest.mark.docker]

CONFIG = "/etc/gpuwatchd/config.toml"
VENV_PKG = "/opt/gpuwatchd/lib/python3.11/site-packages/gpuwatchd"
#: Where install.sh builds the new version beside the installed one.
NEW_PREFIX = "/opt/gpuwatchd.new"
#: A pattern the installed code's RE2 refuses (no backreferences).
BACKREFERENCE = r"re:(a)\1"
EXPOSURE_GOAL = 3.0


@pytest.fixture(scope="module")
def box(boot_systemd: Callable[[], SystemdBox], offline_wheels: Path) -> SystemdBox:
    """A box of this module's own with gpuwatchd installed (--no-start): these tests
    upgrade and uninstall it."""
    box = boot_systemd()
    box.install_gpuwatchd("--no-start")
    return box


def test_install_then_upgrade_in_place(box: SystemdBox) -> None:
    """Install puts venv, unit and config in place; a rerun keeps config and state."""
    assert box.sysexec(["systemctl", "is-enabled", "gpuwatchd"])[1].strip() == "enabled"
    unit = box.read_file("/etc/systemd/system/gpuwatchd.service")
    assert unit == (REPO / "packaging/systemd/gpuwatchd.service").read_text()
    assert box.sysexec(["stat", "-c", "%a %U %G", CONFIG])[1].split() == ["600", "root", "root"]
    assert box.read_file(CONFIG) == (REPO / "config.example.toml").read_text()
    rc, imported = box.sysexec(
        [
            "/opt/gpuwatchd/bin/python",
            "-c",
            "import gpuwatchd.sinks.journal, systemd.journal, structlog, pynvml, docker, tenacity;"
            "print(systemd.journal.__file__)",
        ]
    )
    assert rc == 0, imported
    assert imported.startswith("/usr/lib/python3/dist-packages/"), "not Debian's python3-systemd"
    assert box.sysexec(["test", "-x", "/opt/gpuwatchd/bin/gpuwatchd"])[0] == 0
    assert box.show("gpuwatchd", "ActiveState")["ActiveState"] == "inactive"  # --no-start

    # The operator's edits and the daemon's state must survive an upgrade.
    box.write_file(CONFIG, "# edited by the operator\n", 0o600)
    box.sysexec(["mkdir", "-p", "/var/lib/gpuwatchd"], check=True)
    box.write_file("/var/lib/gpuwatchd/state.json", '{"restarts": 2}\n', 0o600)
    box.sysexec(["rm", f"{VENV_PKG}/sinks/journal.py"], check=True)  # "old code"

    out = box.install_gpuwatchd("--no-start")
    assert "upgrading the existing installation" in out
    assert "kept the existing" in out
    assert box.read_file(CONFIG) == "# edited by the operator\n"
    assert box.read_file("/var/lib/gpuwatchd/state.json") == '{"restarts": 2}\n'
    journal = "sinks/journal.py"
    assert box.read_file(f"{VENV_PKG}/{journal}") == (REPO / "gpuwatchd" / journal).read_text()


def test_shipped_unit_exposure(box: SystemdBox) -> None:
    """systemd-analyze security of the installed unit is at or below the 3.0 goal."""
    box.sysexec(["test", "-e", "/etc/systemd/system/gpuwatchd.service"], check=True)
    _, out = box.sysexec(["systemd-analyze", "security", "--no-pager", "gpuwatchd.service"])
    figure = exposure(out, "gpuwatchd.service")
    print(f"systemd-analyze security gpuwatchd.service: exposure {figure}")
    assert figure <= EXPOSURE_GOAL, out


def test_hardened_unit_runs_nvml(box: SystemdBox, tmp_path: Path) -> None:
    """Under the shipped hardening (MemoryDenyWriteExecute, syscall filter, capabilities,
    AF_UNIX only, read-only file system) pynvml loads the driver library and sets
    persistence mode, the Docker socket answers, and READY reaches systemd."""
    build = REPO / ".bench/build"
    make = subprocess.run(["make", "-s", "-C", str(REPO / "tests/bench")], capture_output=True)
    assert make.returncode == 0, make.stderr.decode()
    gpu = GpuController(tmp_path / "gpu", build / "lib", build / "bin/nvidia-smi")
    assert gpu.persistence() == [False]
    box.write_file(
        "/run/nvml-check.py",
        "import time, docker, pynvml\n"
        "from gpuwatchd.adapters import sdnotify\n"
        "engine = docker.from_env().ping()\n"
        "pynvml.nvmlInit()\n"
        "handle = pynvml.nvmlDeviceGetHandleByIndex(0)\n"
        "pynvml.nvmlDeviceSetPersistenceMode(handle, pynvml.NVML_FEATURE_ENABLED)\n"
        "mode = pynvml.nvmlDeviceGetPersistenceMode(handle)\n"
        "sdnotify.ready(f'gpus={pynvml.nvmlDeviceGetCount()} persistence={mode} docker={engine}')\n"
        "while True:\n"
        "    sdnotify.watchdog_ping()\n"
        "    time.sleep(1)\n",
    )
    box.install_dropin(
        "gpuwatchd.service",
        "50-nvml-check",
        gpu_dropin_text(gpu.env(), [tmp_path])
        + "ExecStart=\nExecStart=/opt/gpuwatchd/bin/python /run/nvml-check.py\n",
    )
    try:
        rc, out = box.sysexec(["systemctl", "start", "gpuwatchd"])
        journal = box.sysexec(["journalctl", "-u", "gpuwatchd", "--no-pager", "-n", "20"])[1]
        assert rc == 0, out + journal
        shown = box.show("gpuwatchd", "ActiveState", "StatusText")
        assert shown == {
            "ActiveState": "active",
            "StatusText": "gpus=1 persistence=1 docker=True",
        }, journal
        assert gpu.persistence() == [True]
    finally:
        box.sysexec(["systemctl", "stop", "gpuwatchd"])
        box.sysexec(["rm", "-rf", "/etc/systemd/system/gpuwatchd.service.d"])
        box.sysexec(["systemctl", "daemon-reload"])


def test_upgrade_stops_when_the_new_version_refuses_the_config(box: SystemdBox) -> None:
    """An upgrade whose new code refuses the installed config stops before it changes
    anything: the installer exits non-zero with check-config's one line and what to
    do; the running daemon keeps its PID and its code, the unit never fails. Once
    the file is fixed, a rerun upgrades and restarts."""
    valid = "[daemon]\ndry_run = true\n[watch]\ncontainers = []\n"
    # The running daemon read the file before it changed; the new code refuses it.
    refused = valid + f"[logs]\npatterns = [{json.dumps(BACKREFERENCE)}]\n"
    installer = [str(REPO / "packaging/install.sh"), "--wheel-dir", WHEELS_IN_BOX]
    unit_state = ("MainPID", "ActiveState", "SubState", "Result", "NRestarts")
    box.write_file(CONFIG, valid, 0o600)
    box.sysexec(["systemctl", "reset-failed", "gpuwatchd"])
    try:
        rc, out = box.sysexec(["systemctl", "start", "gpuwatchd"])
        assert rc == 0, out + box.sysexec(["journalctl", "-u", "gpuwatchd", "--no-pager"])[1]
        before = box.show("gpuwatchd", *unit_state)
        assert before["ActiveState"] == "active", before
        box.write_file(f"{VENV_PKG}/old-code-marker", "the installed version\n")
        box.write_file(CONFIG, refused, 0o600)

        rc, out = box.sysexec(installer)
        assert rc != 0, out
        assert box.show("gpuwatchd", *unit_state) == before, out
        assert box.sysexec(["systemctl", "is-failed", "gpuwatchd"])[1].strip() == "active"
        assert box.sysexec(["test", "-f", f"{VENV_PKG}/old-code-marker"])[0] == 0, (
            "the installed version was replaced"
        )
        reason = (
            f"{CONFIG}: logs.patterns[0]: invalid regular expression "
            r'"re:(a)\\1": invalid escape sequence: \1'
        )
        assert reason in out, out
        assert f"edit {CONFIG}" in out, out
        check = f"{NEW_PREFIX}/bin/gpuwatchd check-config --config {CONFIG}"
        assert check in out, out
        assert f"run {REPO}/packaging/install.sh --wheel-dir {WHEELS_IN_BOX} again" in out, out
        assert "systemctl restart" not in out, out
        # The advised check is the new version's: it says the same.
        rc, checked = box.sysexec(f"{check} >/dev/null")
        assert rc == 2, checked
        assert reason in checked, checked

        box.write_file(CONFIG, valid, 0o600)
        out = box.install_gpuwatchd()
        after = box.show("gpuwatchd", *unit_state)
        assert after["ActiveState"] == "active", out
        assert after["MainPID"] != before["MainPID"], out
        assert box.sysexec(["test", "-e", f"{VENV_PKG}/old-code-marker"])[0] != 0
        assert box.sysexec(["test", "-e", NEW_PREFIX])[0] != 0, "the new build is left beside"
    finally:
        box.sysexec(["systemctl", "stop", "gpuwatchd"])
        box.sysexec(["systemctl", "reset-failed", "gpuwatchd"])
        box.write_file(CONFIG, (REPO / "config.example.toml").read_text(), 0o600)


def test_host_fixes_then_uninstall(box: SystemdBox) -> None:
    """Host fixes only on request; uninstall removes them and the venv, keeps config
    and state; --purge removes those too; both reruns are harmless."""
    out = box.install_gpuwatchd("--no-start", "--with-host-fixes")
    assert "WARNING" in out
    dropin = "/etc/systemd/system/nvidia-persistenced.service.d/gpuwatchd-persistence-mode.conf"
    assert (
        box.read_file(dropin)
        == (
            REPO / "packaging/systemd/nvidia-persistenced.service.d/gpuwatchd-persistence-mode.conf"
        ).read_text()
    )
    assert box.sysexec(["systemctl", "is-enabled", "nvidia-persistence-mode"])[1].strip() == (
        "enabled"
    )

    uninstall = [str(REPO / "packaging/uninstall.sh")]
    out = box.sysexec(uninstall, check=True)[1]
    for path in (
        "/opt/gpuwatchd",
        "/etc/systemd/system/gpuwatchd.service",
        dropin,
        "/etc/systemd/system/nvidia-persistence-mode.service",
    ):
        assert box.sysexec(["test", "-e", path])[0] != 0, f"{path} is still there"
    assert box.sysexec(["test", "-f", CONFIG])[0] == 0
    assert box.sysexec(["test", "-d", "/var/lib/gpuwatchd"])[0] == 0
    assert "kept /etc/gpuwatchd" in out
    assert box.show("gpuwatchd", "LoadState")["LoadState"] == "not-found"

    box.sysexec(uninstall, check=True)  # again: nothing left to do, still fine
    box.sysexec([*uninstall, "--purge"], check=True)
    assert box.sysexec(["test", "-e", "/etc/gpuwatchd"])[0] != 0
    assert box.sysexec(["test", "-e", "/var/lib/gpuwatchd"])[0] != 0
