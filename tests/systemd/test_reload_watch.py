"""PID 1's daemon-reload is seen through the journal, as it happens."""

from __future__ import annotations

import pytest

from gpuwatchd.observers.reload_watch import ReloadWatcher, ReloadWatchUnavailable
from tests.systemd.conftest import REPO, SystemdBox

# Runs as a service in the box: opens the watcher, says so, waits for one reload.
WATCH = """
import pathlib, sys, time
from gpuwatchd.observers.reload_watch import ReloadWatcher
out = pathlib.Path(sys.argv[1])
with ReloadWatcher() as watcher:
    out.with_suffix(".open").write_text("open")
    first = watcher.wait_for_reload(float(sys.argv[2]))
    out.write_text(f"{first} {time.time()} {watcher.last_before_open}")
"""


def start_watcher(box: SystemdBox, unit: str, timeout: float) -> str:
    result = f"/run/{unit}.result"
    box.write_file(f"/run/{unit}.py", WATCH)
    box.sysexec(
        [
            "systemd-run",
            f"--unit={unit}",
            f"--setenv=PYTHONPATH={REPO}",
            "python3",
            f"/run/{unit}.py",
            result,
            str(timeout),
        ],
        check=True,
    )
    box.wait_for(
        lambda: box.sysexec(["test", "-e", f"/run/{unit}.open"])[0] == 0,
        timeout=15,
        what=f"{unit} to open the journal",
    )
    return result


@pytest.mark.systemd
@pytest.mark.docker
def test_daemon_reload_is_detected(systemd_box: SystemdBox) -> None:
    """systemctl daemon-reload wakes the watcher with the reload's time."""
    box = systemd_box
    result = start_watcher(box, "reload-watch-hit", timeout=60)
    box.sysexec(["systemctl", "daemon-reload"], check=True)
    box.wait_for(
        lambda: box.sysexec(["test", "-s", result])[0] == 0,
        timeout=20,
        what="the watcher to report the reload",
    )
    seen, now, _ = box.read_file(result).split()
    assert seen != "None"
    assert float(seen) <= float(now)


@pytest.mark.systemd
@pytest.mark.docker
def test_earlier_reloads_are_not_reported(systemd_box: SystemdBox) -> None:
    """A reload that happened before open() is not reported as one: the wait times out
    with None, and its time is kept as ``last_before_open``."""
    box = systemd_box
    box.sysexec(["systemctl", "daemon-reload"], check=True)
    result = start_watcher(box, "reload-watch-miss", timeout=2)
    box.wait_for(
        lambda: box.sysexec(["test", "-s", result])[0] == 0,
        timeout=20,
        what="the watcher to time out",
    )
    seen, now, before = box.read_file(result).split()
    assert seen == "None"
    # It is kept as the last reload before open: evidence, not an event.
    assert before != "None" and float(before) <= float(now)


def test_unreadable_journal_is_reported_not_raised_raw() -> None:
    """No journal to read: one clear ReloadWatchUnavailable, and waiting is refused alike."""
    watcher = ReloadWatcher(path="/nonexistent/journal")
    with pytest.raises(ReloadWatchUnavailable, match="cannot read the journal"):
        watcher.open()
    with pytest.raises(ReloadWatchUnavailable, match="not open"):
        watcher.wait_for_reload(0.1)
