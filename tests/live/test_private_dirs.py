"""The daemon's directories follow the start-time rule after a reload too (no Docker
engine needed: the daemon runs degraded)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from tests.live.daemon_process import DaemonProcess, Record


def reload_outcome(records: list[Record]) -> bool:
    return any(r.get("event") in ("config_reloaded", "config_reload_failed") for r in records)


def test_a_reload_to_a_state_dir_others_can_write_is_refused(
    start_daemon: Callable[..., DaemonProcess], tmp_path: Path
) -> None:
    """SIGHUP with a new state_dir that is world-writable: config_reload_failed naming it,
    the old config stays, and the next state save goes to the old state_dir."""
    daemon = start_daemon(env={"DOCKER_HOST": f"unix://{tmp_path}/no-docker.sock"})
    daemon.wait_for("daemon_started", timeout=30)
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    text = daemon.config_path.read_text()
    assert str(tmp_path / "state") in text
    daemon.config_path.write_text(text.replace(str(tmp_path / "state"), str(shared)))

    daemon.signal(signal.SIGHUP)
    daemon.wait_until(reload_outcome, 20, "the reload's outcome")
    assert not daemon.find("config_reloaded")
    failed = daemon.wait_for("config_reload_failed", timeout=1)
    assert failed["error"] == (
        f"state_dir {shared} is writable by group/others (mode 0777); it must be owned by "
        f"root and not writable by group/others (run chmod go-w {shared})"
    )

    pause = subprocess.run(
        [sys.executable, "-m", "gpuwatchd", "pause", "--for", "1h",
         "--config", str(daemon.config_path)],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert pause.returncode == 0, pause.stderr
    daemon.wait_for("operator_paused", timeout=10)
    daemon.wait_until(lambda _: (tmp_path / "state" / "state.json").exists(), 10,
                      "the state saved in the old state_dir")
    assert os.listdir(shared) == []
