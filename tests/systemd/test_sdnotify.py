"""sd_notify under a real Type=notify unit: READY, STATUS, RELOADING, watchdog."""

from __future__ import annotations

import pytest

from tests.systemd.conftest import REPO, SystemdBox

pytestmark = [pytest.mark.systemd, pytest.mark.docker]

# A tiny stand-in daemon: the same calls gpuwatchd's daemon makes, in order.
SERVICE = """
import os, signal, sys, time
from gpuwatchd.adapters import sdnotify

reload_requested = False
def on_hup(signum, frame):
    global reload_requested
    reload_requested = True
def on_term(signum, frame):
    sdnotify.stopping("stopping")
    sys.exit(0)
signal.signal(signal.SIGHUP, on_hup)
signal.signal(signal.SIGTERM, on_term)

sdnotify.status("starting")
sdnotify.ready(f"ready, watchdog every {sdnotify.watchdog_interval()} s")
while True:
    if reload_requested:
        reload_requested = False
        sdnotify.reloading("reloading")
        time.sleep(0.3)
        sdnotify.ready("reloaded")
    if os.path.exists("/run/sdnotify-test-ping"):
        sdnotify.watchdog_ping()
    time.sleep(0.2)
"""


def run_unit(box: SystemdBox, unit: str, *properties: str) -> None:
    box.write_file(f"/run/{unit}.py", SERVICE)
    argv = [
        "systemd-run",
        f"--unit={unit}",
        "-p",
        "Type=notify",
        "-p",
        "NotifyAccess=main",
        "-p",
        "ExecReload=/bin/kill -HUP $MAINPID",
        f"--setenv=PYTHONPATH={REPO}",
    ]
    for prop in properties:
        argv += ["-p", prop]
    box.sysexec([*argv, "python3", f"/run/{unit}.py"], check=True)


def test_ready_status_and_reload(systemd_box: SystemdBox) -> None:
    """systemd-run returns after READY=1; STATUS= shows; a reload ends in READY again."""
    box = systemd_box
    box.write_file("/run/sdnotify-test-ping", "")
    run_unit(box, "sdnotify-ready", "WatchdogSec=10s")
    shown = box.show("sdnotify-ready", "ActiveState", "SubState", "StatusText")
    assert shown["ActiveState"] == "active", shown
    assert shown["StatusText"] == "ready, watchdog every 10.0 s"

    rc, out = box.sysexec(["systemctl", "reload", "sdnotify-ready"])
    assert rc == 0, out
    box.wait_for(
        lambda: box.show("sdnotify-ready", "StatusText")["StatusText"] == "reloaded",
        timeout=15,
        what="STATUS=reloaded after the reload",
    )
    assert box.show("sdnotify-ready", "ActiveState")["ActiveState"] == "active"

    box.sysexec(["systemctl", "stop", "sdnotify-ready"], check=True)
    shown = box.show("sdnotify-ready", "Result", "ActiveState")
    assert shown["ActiveState"] in ("inactive", "")


def test_watchdog_kills_a_silent_service(systemd_box: SystemdBox) -> None:
    """Pings keep the unit alive past WatchdogSec; when they stop, systemd kills it."""
    box = systemd_box
    box.write_file("/run/sdnotify-test-ping", "")
    run_unit(box, "sdnotify-watchdog", "WatchdogSec=2s")
    # Three watchdog periods of pings: the unit must still be running.
    for _ in range(3):
        box.sysexec(["sleep", "2"])
        assert box.show("sdnotify-watchdog", "ActiveState")["ActiveState"] == "active"
    box.sysexec(["rm", "/run/sdnotify-test-ping"], check=True)
    box.wait_for(
        lambda: box.show("sdnotify-watchdog", "Result")["Result"] == "watchdog",
        timeout=20,
        what="Result=watchdog once the pings stopped",
    )
    box.sysexec(["systemctl", "reset-failed", "sdnotify-watchdog"])


def test_noop_without_notify_socket(systemd_box: SystemdBox) -> None:
    """Outside a Type=notify unit every call returns False and raises nothing."""
    rc, out = systemd_box.python(
        "from gpuwatchd.adapters import sdnotify as s;"
        "print(s.ready('x'), s.reloading(), s.stopping(), s.status('y'),"
        " s.watchdog_ping(), s.watchdog_interval())"
    )
    assert rc == 0, out
    assert out.split() == ["False", "False", "False", "False", "False", "None"]
