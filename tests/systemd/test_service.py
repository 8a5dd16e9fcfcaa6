"""gpuwatchd as a systemd service under a real systemd 252 and journald.

``install.sh`` puts the daemon in place (``installed_box``); each test gives the
shipped, hardened unit only the bench drop-in (the simulated GPU's environment
and ``BindPaths=``), plus a shorter ``WatchdogSec=`` where a test says so, then
drives it with ``systemctl`` and reads ``journalctl``. The service inside the
box talks to the same Docker engine as the tests, so the containers it watches
are made with the bench's ``make_container``.

One box serves the whole module; :class:`Service` (the ``service`` fixture)
stops the unit, clears its drop-ins, state and failure, and writes a fresh
config before each test.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from docker.models.containers import Container

from tests.bench import ONAIR_LINE, log_lines, wait_for
from tests.bench.gpu import GpuController
from tests.systemd.conftest import REPO, Journal, SystemdBox, exposure, gpu_dropin_text

pytestmark = [pytest.mark.systemd, pytest.mark.docker, pytest.mark.slow]

UNIT = "gpuwatchd.service"
CONFIG = "/etc/gpuwatchd/config.toml"
STATE_DIR = "/var/lib/gpuwatchd"
DROPIN_DIR = f"/etc/systemd/system/{UNIT}.d"
BENCH_DROPIN = f"{DROPIN_DIR}/50-bench.conf"
WATCHDOG_DROPIN = f"{DROPIN_DIR}/60-short-watchdog.conf"
EXPOSURE_GOAL = 3.0
#: The container this module's configs always list, though none by this name
#: exists: a watch set that names absent containers must still start.
ABSENT = "gpuwatchd-systemd-absent"


def config_text(
    *containers: str,
    probe_interval: str = "60s",
    start_grace: str = "5s",
    patterns: tuple[str, ...] = ("(ER-05)",),
) -> str:
    """A config that watches exactly *containers* (by name), state and runtime as shipped."""
    names = ", ".join(json.dumps(c) for c in (*containers, ABSENT))
    return (
        f"[probe]\ninterval = {json.dumps(probe_interval)}\n"
        f"start_grace = {json.dumps(start_grace)}\n"
        f"[logs]\npatterns = {json.dumps(list(patterns))}\n"
        f"[watch]\ncontainers = [{names}]\n"
    )


class Service:
    """The installed gpuwatchd unit in the box, seen through systemctl and journalctl."""

    def __init__(self, box: SystemdBox, gpu: GpuController, writable: Path) -> None:
        self.box = box
        self.gpu = gpu
        self.writable = writable
        self.cursor = self._journal_end()

    def _journal_end(self) -> str:
        self.box.sysexec(["journalctl", "--sync"])
        _, out = self.box.sysexec(["journalctl", "--no-pager", "-o", "json", "-n", "1"])
        return str(json.loads(out.splitlines()[-1])["__CURSOR"])

    # -- setup -----------------------------------------------------------------

    def reset(self) -> None:
        """Stopped, no failure, no drop-ins, no state: as the installer left it."""
        box = self.box
        box.sysexec(["systemctl", "stop", UNIT])
        box.sysexec(["systemctl", "reset-failed", UNIT])
        box.sysexec(["rm", "-rf", DROPIN_DIR, STATE_DIR])
        box.sysexec(["mkdir", "-p", DROPIN_DIR], check=True)
        box.write_file(BENCH_DROPIN, gpu_dropin_text(self.gpu.env(), [self.writable]))
        box.sysexec(["systemctl", "daemon-reload"], check=True)
        self.cursor = self._journal_end()

    def write_config(self, text: str, mode: int = 0o600) -> None:
        self.box.write_file(CONFIG, text, mode)

    def start(self) -> None:
        """``systemctl start``; fails the test (with the unit's journal) unless it succeeds."""
        rc, out = self.box.sysexec(["systemctl", "start", UNIT])
        if rc != 0:
            pytest.fail(f"systemctl start {UNIT} exited {rc}: {out}\n{self.unit_log()}")

    # -- observing -----------------------------------------------------------------

    def show(self, *properties: str) -> dict[str, str]:
        return self.box.show(UNIT, *properties)

    def main_pid(self) -> int:
        return int(self.show("MainPID")["MainPID"])

    def unit_log(self, lines: int = 40) -> str:
        return self.box.sysexec(
            ["journalctl", "--no-pager", "-u", UNIT, "-n", str(lines),
             "--after-cursor", self.cursor]
        )[1]

    def journal(self, *matches: str) -> Journal:
        """Entries since this test began for FIELD=VALUE *matches*."""
        return self.box.journal(*matches, since_cursor=self.cursor)

    def records(self, event: str, **fields: str) -> Journal:
        """gpuwatchd's records of *event* since this test began, matching journal *fields*."""
        matches = [f"{k}={v}" for k, v in fields.items()]
        return self.journal("-u", UNIT, f"GPUWATCHD_EVENT={event}", *matches)

    def wait_record(self, event: str, timeout: float, **fields: str) -> dict[str, Any]:
        """The first record of *event* (with *fields*) since this test began; waits for it."""
        found: Journal = []

        def seen() -> bool:
            found[:] = self.records(event, **fields)
            return bool(found)

        deadline = time.monotonic() + timeout
        while not seen():
            if time.monotonic() > deadline:
                pytest.fail(
                    f"no {event} record {fields or ''} within {timeout:.0f} s; the unit's log:\n"
                    + self.unit_log()
                )
            time.sleep(0.3)
        return found[0]

    def wait_state(self, active_state: str, timeout: float) -> None:
        self.box.wait_for(
            lambda: self.show("ActiveState")["ActiveState"] == active_state,
            timeout,
            f"{UNIT} to be {active_state} (now {self.show('ActiveState', 'SubState')})",
        )


@pytest.fixture(scope="module")
def box(installed_box: SystemdBox) -> SystemdBox:
    """The installed box, and its unit: the shipped file, exactly (issue 5, test 6)."""
    unit = installed_box.read_file(f"/etc/systemd/system/{UNIT}")
    assert unit == (REPO / "packaging/systemd/gpuwatchd.service").read_text()
    return installed_box


@pytest.fixture
def service(box: SystemdBox, gpu: GpuController, tmp_path: Path) -> Iterator[Service]:
    """The unit, reset, with this test's simulated GPU; stopped again afterwards."""
    svc = Service(box, gpu, tmp_path)
    svc.reset()
    yield svc
    box.sysexec(["systemctl", "stop", UNIT])
    box.sysexec(["systemctl", "reset-failed", UNIT])


@pytest.fixture
def konomi(make_container: Callable[..., Container]) -> Container:
    """A KonomiTV-like workload on the shared engine, streaming normally."""
    container = make_container("konomi", name=uuid.uuid4().hex[:6])
    wait_for(lambda: ONAIR_LINE in "\n".join(log_lines(container)), 20,
             message="the workload to start streaming")
    return container


def hardening_only_bench(service: Service, *extra: str) -> None:
    """The unit in force is the shipped one plus the bench drop-in (and *extra*) only."""
    shown = service.show("FragmentPath", "DropInPaths")
    assert shown["FragmentPath"] == f"/etc/systemd/system/{UNIT}"
    assert shown["DropInPaths"].split() == [BENCH_DROPIN, *extra]


# -- 1. start-up -------------------------------------------------------------------


def test_start_returns_after_ready_with_status(service: Service, konomi: Container) -> None:
    """``systemctl start`` returns only once READY=1 came, after the config was loaded
    and the watch set resolved: the unit is active and its StatusText (sent with
    READY) already counts the watched container; ``systemctl status`` shows it;
    ``systemctl stop`` ends it cleanly with a daemon_stopping record."""
    service.write_config(config_text(str(konomi.name)))
    hardening_only_bench(service)
    service.start()
    shown = service.show("ActiveState", "SubState", "StatusText", "Result", "NRestarts")
    assert shown["ActiveState"] == "active", shown
    assert shown["SubState"] == "running", shown
    assert shown["StatusText"].startswith("watching "), shown
    assert "DEGRADED" not in shown["StatusText"], shown
    started = service.records("daemon_started")
    assert len(started) == 1, service.unit_log()
    assert started[0]["GPUWATCHD_CONFIG"] == CONFIG
    assert int(started[0]["_PID"]) == service.main_pid()

    # The unit's bounds on files and tasks are in force on the running daemon.
    assert service.show("TasksMax")["TasksMax"] == "1024"
    _, limits = service.box.sysexec(["cat", f"/proc/{service.main_pid()}/limits"])
    files = next(line for line in limits.splitlines() if line.startswith("Max open files"))
    assert files.split()[3:5] == ["8192", "8192"], files

    # The status line is kept current: the watched container is counted.
    service.box.wait_for(
        lambda: service.show("StatusText")["StatusText"].startswith("watching 1 containers"),
        timeout=20, what="STATUS= to count the watched container",
    )
    _, status = service.box.sysexec(["systemctl", "status", "--no-pager", UNIT])
    assert 'Status: "watching 1 containers' in status, status

    rc, out = service.box.sysexec(["systemctl", "stop", UNIT])
    assert rc == 0, out
    shown = service.show("ActiveState", "Result")
    assert shown == {"ActiveState": "inactive", "Result": "success"}, shown
    stopping = service.records("daemon_stopping")
    assert stopping and stopping[0]["GPUWATCHD_REASON"] == "SIGTERM", stopping


# -- 2. the field report, in the journal ----------------------------------------------

RESTARTED_ID = "ae942c6d94624b0e92879d50930b6925"


def test_field_report_restart_is_a_journal_record(
    service: Service, konomi: Container, gpu: GpuController
) -> None:
    """Persistence off and an idle driver (the field report): the restart is a native
    journal record that the README's own queries find, with CONTAINER_NAME,
    CONTAINER_ID, GPUWATCHD_CAUSE, MESSAGE_ID and SYSLOG_IDENTIFIER=gpuwatchd."""
    name = str(konomi.name)
    service.write_config(config_text(name))
    service.start()
    service.wait_record("watch_set_changed", 20, CONTAINER_NAME=name)
    # The start-up drift fix: the daemon finds persistence off and sets it.
    service.wait_record("gpu_persistence_enabled", 20)
    assert gpu.persistence() == [True]
    gpu.set_persistence(False)
    assert gpu.idle_driver(), "persistence is off: idling must end the driver session"

    service.wait_record("container_restarted", 60, CONTAINER_NAME=name)
    _, out = service.box.sysexec(
        ["journalctl", "--no-pager", "-u", "gpuwatchd",
         "GPUWATCHD_EVENT=container_restarted", "-o", "json"]
    )
    entries = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    ours = [e for e in entries if e.get("CONTAINER_NAME") == name]
    assert len(ours) == 1, out
    entry = ours[0]
    assert entry["SYSLOG_IDENTIFIER"] == "gpuwatchd"
    assert entry["GPUWATCHD_CAUSE"] == "persistence_off"
    assert entry["CONTAINER_ID"] == str(konomi.id)[:12]
    assert entry["MESSAGE_ID"] == RESTARTED_ID
    assert entry["PRIORITY"] == "4"
    assert entry["_SYSTEMD_UNIT"] == UNIT
    assert name in entry["MESSAGE"]

    service.wait_record("container_recovered", 60, CONTAINER_NAME=name)
    by_container = service.journal(f"CONTAINER_NAME={name}", "-p", "warning")
    events = {e.get("GPUWATCHD_EVENT") for e in by_container}
    assert "container_restarted" in events, events
    assert "container_recovered" not in events, "info records must not pass -p warning"
    rc, _ = konomi.exec_run(["nvidia-smi", "-L"])
    assert rc == 0


# -- 3. systemctl reload ---------------------------------------------------------------


def reload(service: Service) -> None:
    """``systemctl reload``, then wait for the unit to be active again (systemd 252
    has no Type=notify-reload, so the command returns before READY=1)."""
    rc, out = service.box.sysexec(["systemctl", "reload", UNIT])
    assert rc == 0, out + service.unit_log()
    service.wait_state("active", 20)


def test_reload_applies_a_valid_config_and_keeps_the_old_one_otherwise(
    service: Service, konomi: Container, make_container: Callable[..., Container]
) -> None:
    """A reload with a changed config watches the newly listed container without
    dropping the one that stays; a reload with a broken config, or with one that
    others can write, keeps the old config, says why in the journal
    (config_reload_failed), and the unit stays active with the same process."""
    first = str(konomi.name)
    second = str(make_container("konomi", name="second").name)
    service.write_config(config_text(first))
    service.start()
    service.wait_record("watch_set_changed", 20, CONTAINER_NAME=first)
    pid = service.main_pid()
    assert not service.records("watch_set_changed", CONTAINER_NAME=second)

    service.write_config(config_text(first, second))
    reload(service)
    service.wait_record("config_reloaded", 20)
    added = service.wait_record("watch_set_changed", 20, CONTAINER_NAME=second)
    assert added["GPUWATCHD_CHANGE"] == "watched"
    service.box.wait_for(
        lambda: service.show("StatusText")["StatusText"].startswith("watching 2 containers"),
        timeout=20, what="STATUS= to count both containers",
    )
    # The container that stays watched kept its follower and its place.
    assert len(service.records("watch_set_changed", CONTAINER_NAME=first)) == 1

    def refused(label: str, text: str, mode: int) -> dict[str, Any]:
        before = len(service.records("config_reload_failed"))
        service.write_config(text, mode)
        reload(service)
        service.box.wait_for(
            lambda: len(service.records("config_reload_failed")) > before,
            timeout=20, what=f"config_reload_failed for the {label} config",
        )
        failed = service.records("config_reload_failed")[-1]
        assert failed["GPUWATCHD_ERROR"].startswith(f"{CONFIG}:"), failed
        shown = service.show("ActiveState", "MainPID", "StatusText")
        assert shown["ActiveState"] == "active", (label, shown)
        assert int(shown["MainPID"]) == pid, label
        assert shown["StatusText"].startswith("watching 2 containers"), (label, shown)
        return failed

    refused("broken TOML", "[watch\ncontainers = [", 0o600)
    # The first container only, but others could have written it.
    failed = refused("world-writable", config_text(first), 0o666)
    assert "writable by group or others" in failed["GPUWATCHD_ERROR"]
    # The old config still holds: nothing was unwatched, and one reload applied.
    assert not service.records("watch_set_changed", GPUWATCHD_CHANGE="unwatched")
    assert len(service.records("config_reloaded")) == 1


# -- 4. the watchdog ----------------------------------------------------------------------


def test_watchdog_pings_keep_it_alive_and_a_frozen_daemon_is_restarted(service: Service) -> None:
    """With WatchdogSec=3s a healthy daemon keeps sending WATCHDOG=1 (the watchdog
    timestamp moves, the process outlives several periods and a reload); frozen with SIGSTOP it
    is killed by the watchdog (UNIT_RESULT=watchdog) and restarted (NRestarts grows)."""
    service.box.write_file(WATCHDOG_DROPIN, "[Service]\nWatchdogSec=3s\n")
    service.box.sysexec(["systemctl", "daemon-reload"], check=True)
    hardening_only_bench(service, WATCHDOG_DROPIN)
    service.write_config(config_text())
    service.start()
    assert service.show("WatchdogUSec")["WatchdogUSec"] == "3s"
    pid = service.main_pid()

    stamps = set()
    for second in range(5):  # 10 s: more than three watchdog periods
        stamps.add(service.show("WatchdogTimestampMonotonic")["WatchdogTimestampMonotonic"])
        if second == 1:  # the heartbeat goes on through a reload
            reload(service)
            service.wait_record("config_reloaded", 10)
        time.sleep(2)
    shown = service.show("ActiveState", "MainPID", "NRestarts")
    assert shown == {"ActiveState": "active", "MainPID": str(pid), "NRestarts": "0"}, shown
    assert len(stamps) >= 3, f"the watchdog was not re-armed by WATCHDOG=1: {stamps}"

    service.box.sysexec(["systemctl", "kill", "-s", "SIGSTOP", UNIT], check=True)
    service.box.wait_for(
        lambda: int(service.show("NRestarts")["NRestarts"]) >= 1,
        timeout=60, what="the watchdog to restart the frozen daemon",
    )
    service.wait_state("active", 30)
    assert service.main_pid() not in (0, pid)
    killed = service.journal("_PID=1", f"UNIT={UNIT}", "UNIT_RESULT=watchdog")
    assert killed, service.unit_log()
    service.box.wait_for(
        lambda: len(service.records("daemon_started")) == 2,
        timeout=20, what="the restarted daemon's daemon_started record",
    )


# -- 5. systemctl daemon-reload ---------------------------------------------------------------


def test_daemon_reload_probes_every_watched_container_at_once(
    service: Service, konomi: Container, gpu: GpuController
) -> None:
    """A daemon-reload inside that systemd is recorded (systemd_reload_detected) and
    every watched container is probed at once, with an hour-long probe timer: a
    container whose device access was revoked is restarted with cause
    device_access_lost, right after the reload."""
    name = str(konomi.name)
    # The workload logs ER-05 once NVML fails in it; with no pattern to match,
    # only the reload can lead to the probe (the timer waits an hour).
    service.write_config(config_text(name, probe_interval="1h", start_grace="1s",
                                     patterns=("gpuwatchd-test: never logged",)))
    # Persistence on from the start: no drift probe at start-up, and no
    # persistence_off cause to take precedence over the revoked device.
    gpu.set_persistence(True)
    service.start()
    service.wait_record("watch_set_changed", 20, CONTAINER_NAME=name)
    # Past the start grace (no probe that soon after a container starts).
    time.sleep(2)
    gpu.revoke_device_access(konomi)  # what the reload does on affected hosts
    rc, _ = konomi.exec_run(["nvidia-smi", "-L"])
    assert rc != 0, "revoking device access must break NVML in the container"
    assert not service.records("probe_failed")

    service.box.sysexec(["systemctl", "daemon-reload"], check=True)
    detected = service.wait_record("systemd_reload_detected", 20)
    probe = service.wait_record("probe_failed", 30, CONTAINER_NAME=name)
    assert probe["GPUWATCHD_PURPOSE"] == "reload", probe
    restarted = service.wait_record("container_restarted", 60, CONTAINER_NAME=name)
    assert restarted["GPUWATCHD_CAUSE"] == "device_access_lost", restarted
    assert int(detected["__REALTIME_TIMESTAMP"]) <= int(probe["__REALTIME_TIMESTAMP"])
    service.wait_record("container_recovered", 60, CONTAINER_NAME=name)
    rc, out = konomi.exec_run(["nvidia-smi", "-L"])
    assert rc == 0, out


def test_kernel_check_under_the_unit_proves_a_v2_revoke_without_a_reload(
    service: Service, konomi: Container, gpu: GpuController
) -> None:
    """The shipped unit lets the device-access helper join a container's cgroups.

    The daemon runs in the box's PID namespace, where the container's PID from
    ``inspect`` names no process of it; the helper finds the container's cgroup
    from its ID under the cgroup mounts (the box shares the host's cgroup
    namespace) and opens the host node the container was given. With a v2
    device program denying the node and no reload seen, the cause is
    device_access_lost, certain; nothing is left in the container's cgroups.
    """
    name = str(konomi.name)
    service.write_config(config_text(name, probe_interval="2s", start_grace="1s"))
    gpu.set_persistence(True)
    service.start()
    service.wait_record("watch_set_changed", 20, CONTAINER_NAME=name)
    unified = gpu.cgroup2_dir(konomi)
    before = (unified / "cgroup.procs").read_text().split()
    gpu.revoke_device_access_v2(konomi)
    restarted = service.wait_record("container_restarted", 60, CONTAINER_NAME=name)
    assert restarted["GPUWATCHD_CAUSE"] == "device_access_lost", restarted
    assert restarted["GPUWATCHD_CONFIDENCE"] == "certain", restarted
    assert not service.records("systemd_reload_detected")
    service.wait_record("container_recovered", 60, CONTAINER_NAME=name)
    assert before  # the container had processes there; the helper left none of its own
    assert not [p for p in unified.parent.iterdir() if p.name.startswith("gpuwatchd-device")]


# -- 6. the hardening in force ------------------------------------------------------------------


def test_exposure_of_the_unit_in_force(service: Service) -> None:
    """systemd-analyze security of the unit as these tests run it (the shipped unit
    plus the bench drop-in only) is at or below the 3.0 goal."""
    hardening_only_bench(service)
    _, out = service.box.sysexec(["systemd-analyze", "security", "--no-pager", UNIT])
    figure = exposure(out, UNIT)
    print(f"systemd-analyze security {UNIT} (with the bench drop-in): exposure {figure}")
    assert figure <= EXPOSURE_GOAL, out


# -- 7. a config others can write ------------------------------------------------------------------


@pytest.mark.parametrize("change", [["chmod", "0666", CONFIG], ["chown", "nobody", CONFIG]],
                         ids=["world-writable", "owned-by-nobody"])
def test_unsafe_config_fails_the_unit_once(service: Service, change: list[str]) -> None:
    """A config another user can write is refused with one line and exit 2; the unit
    is failed (Result=exit-code) and not restarted (RestartPreventExitStatus=2)."""
    service.write_config(config_text())
    service.box.sysexec(change, check=True)
    rc, _ = service.box.sysexec(["systemctl", "start", UNIT])
    assert rc != 0
    shown = service.show("ActiveState", "SubState", "Result", "ExecMainStatus", "NRestarts",
                         "ExecMainPID", "RestartUSec")
    assert shown["ActiveState"] == "failed", shown  # not "activating (auto-restart)"
    assert shown["Result"] == "exit-code", shown
    assert shown["ExecMainStatus"] == "2", shown
    assert shown["NRestarts"] == "0", shown
    said = service.journal(f"_SYSTEMD_UNIT={UNIT}", f"_PID={shown['ExecMainPID']}")
    assert len(said) == 1, [e["MESSAGE"] for e in said]
    assert said[0]["MESSAGE"].startswith(f"gpuwatchd: {CONFIG}: refusing config:"), said[0]
    # Past RestartSec, still failed and never restarted.
    time.sleep(float(shown["RestartUSec"].rstrip("s")) + 1)
    again = service.show("ActiveState", "NRestarts")
    assert again == {"ActiveState": "failed", "NRestarts": "0"}, again


# -- 8. upgrade in place (last: installs other code, then puts the tree back) ----------


NEXT = "/var/tmp/gpuwatchd-next"


def test_second_install_upgrades_in_place(service: Service, offline_wheels: Path) -> None:
    """install.sh from a newer tree, with the service running: the config and the
    state directory are kept, the service is restarted (new MainPID) and the new
    process runs the new code (its daemon_started record has the new version)."""
    box = service.box
    service.write_config(config_text())
    service.start()
    old_pid = service.main_pid()
    box.write_file(f"{STATE_DIR}/operator-note", "kept\n", 0o600)
    config_before = box.read_file(CONFIG)
    version = f"0.0.0+upgrade{uuid.uuid4().hex[:6]}"
    box.sysexec(
        f"rm -rf {NEXT} && mkdir -p {NEXT} && cd {REPO} &&"
        f" cp -r pyproject.toml gpuwatchd packaging README.md config.example.toml {NEXT}/ &&"
        f" sed -i 's/^__version__ = .*/__version__ = \"{version}\"/' {NEXT}/gpuwatchd/__init__.py",
        check=True,
    )
    try:
        _, out = box.sysexec(
            [f"{NEXT}/packaging/install.sh", "--wheel-dir", "/srv/wheels"], check=True
        )
        assert "upgrading the existing installation" in out, out
        assert "kept the existing" in out, out
        assert "restarting gpuwatchd with the new code" in out, out
        assert service.show("ActiveState")["ActiveState"] == "active"
        new_pid = service.main_pid()
        assert new_pid not in (0, old_pid)
        started = service.records("daemon_started", GPUWATCHD_VERSION=version)
        assert [int(e["_PID"]) for e in started] == [new_pid], service.unit_log()
        assert box.read_file(CONFIG) == config_before
        assert box.read_file(f"{STATE_DIR}/operator-note") == "kept\n"
        hardening_only_bench(service)
    finally:
        box.sysexec(["systemctl", "stop", UNIT])
        box.sysexec(["rm", "-rf", NEXT])
        box.install_gpuwatchd("--no-start")  # the working tree's code again, for later users
