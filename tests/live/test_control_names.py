"""`gpuwatchd pause NAME` / `resume NAME` against the real daemon: a name neither
watched nor configured is refused (exit 1, one line), configured and watched ones
are taken, stopped or not."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from docker.models.containers import Container

from gpuwatchd.exitcodes import ExitCode
from tests.bench import wait_for
from tests.live.daemon_process import DaemonProcess


def gpuwatchd(daemon: DaemonProcess, *args: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "gpuwatchd", args[0], "--config", str(daemon.config_path),
           *args[1:]]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)


def answers(daemon: DaemonProcess) -> bool:
    return gpuwatchd(daemon, "status", "--json").returncode == 0


def state_of(daemon: DaemonProcess, name: str) -> str | None:
    proc = gpuwatchd(daemon, "status", "--json")
    if proc.returncode != 0:
        return None
    found = [c for c in json.loads(proc.stdout)["core"]["containers"] if c["name"] == name]
    return str(found[0]["state"]) if found else None


def refused(daemon: DaemonProcess, *args: str) -> str:
    proc = gpuwatchd(daemon, *args)
    assert proc.returncode == ExitCode.PROBLEM, (args, proc.stdout, proc.stderr)
    assert proc.stdout == ""
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    return lines[0]


def taken(daemon: DaemonProcess, *args: str) -> str:
    proc = gpuwatchd(daemon, *args)
    assert proc.returncode == ExitCode.OK, (args, proc.stderr)
    return proc.stdout


def test_names_neither_watched_nor_configured_are_refused(
    start_daemon: Callable[..., DaemonProcess], tmp_path: Path
) -> None:
    """No Docker engine, so nothing is watched: configured names (the watch list,
    [containers.NAME]) are taken, a misspelt one is refused and changes nothing; a
    pause kept in the state file for a name no longer configured can be resumed."""
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    (state / "state.json").write_text(json.dumps({"version": 1, "paused": {"Gone": None}}))
    daemon = start_daemon(
        {"watch": {"containers": ["KonomiTV"]},
         "containers.Mirakurun": {"probe_interval": "5m"}},
        env={"DOCKER_HOST": f"unix://{tmp_path}/no-docker.sock"},
    )
    daemon.wait_for("daemon_started", timeout=30)
    wait_for(lambda: answers(daemon), 30, 0.5, message="the daemon answers")

    for command in ("pause", "resume"):
        assert refused(daemon, command, "Konomitv") == (
            "gpuwatchd: the daemon refused: no watched or configured container named 'Konomitv'"
        )
    assert refused(daemon, "pause", "Konomitv", "--for", "1h").endswith("named 'Konomitv'")
    assert not daemon.find("operator_paused")
    assert not daemon.find("operator_resumed")

    assert taken(daemon, "pause", "KonomiTV", "--for", "1h") == (
        "paused remediation of KonomiTV for 1h 0m\n")
    daemon.wait_for("operator_paused", target="KonomiTV", timeout=10)
    assert taken(daemon, "pause", "Mirakurun").startswith("paused remediation of Mirakurun")
    daemon.wait_for("operator_paused", target="Mirakurun", timeout=10)
    taken(daemon, "resume", "KonomiTV")
    daemon.wait_for("operator_resumed", target="KonomiTV", timeout=10)
    taken(daemon, "resume", "Gone")
    daemon.wait_for("operator_resumed", target="Gone", timeout=10)
    assert refused(daemon, "pause", "Gone").endswith("named 'Gone'")
    taken(daemon, "pause")
    taken(daemon, "resume")
    assert {r.get("target") for r in daemon.find("operator_paused")} == {
        "KonomiTV", "Mirakurun", "all containers"}


@pytest.mark.docker
def test_a_container_watched_by_label_is_taken_by_name_or_id_running_or_stopped(
    make_container: Callable[..., Container], start_daemon: Callable[..., DaemonProcess],
    watched: dict[str, str],
) -> None:
    konomi = make_container("konomi", labels=watched)
    daemon = start_daemon()
    daemon.wait_for("watch_set_changed", container=konomi.name, timeout=20)
    wait_for(lambda: answers(daemon), 30, 0.5, message="the daemon answers")

    taken(daemon, "pause", konomi.name)
    daemon.wait_for("operator_paused", target=konomi.name, timeout=10)
    assert taken(daemon, "resume", konomi.id[:12]) == f"resumed remediation of {konomi.id[:12]}\n"
    daemon.wait_for("operator_resumed", target=konomi.name, timeout=10)
    assert refused(daemon, "pause", konomi.name + "x").endswith(f"named '{konomi.name}x'")

    konomi.stop(timeout=5)
    wait_for(lambda: state_of(daemon, konomi.name) == "exited", 20, 0.5,
             message="the daemon sees the container stopped, still watched")
    taken(daemon, "pause", konomi.name, "--for", "10m")
    daemon.wait_for("operator_paused", target=konomi.name, count=2, timeout=10)
