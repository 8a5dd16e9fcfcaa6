"""Operator tools against the real daemon on the bench: `gpuwatchd status`, `reset`,
`pause`, `resume` (the real command line, as subprocesses), the metrics endpoint
(HTTP on loopback) and a notification command."""

from __future__ import annotations

import asyncio
import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import docker
import pytest
from docker.models.containers import Container
from prometheus_client.parser import text_string_to_metric_families

from gpuwatchd.exitcodes import ExitCode
from tests.bench import wait_for
from tests.bench.gpu import GpuController
from tests.live.conftest import healthy, render_toml, started_at
from tests.live.daemon_process import DaemonProcess

FAST = {"probe": {"start_grace": "1s"}}


def gpuwatchd(*args: str, config: Path) -> subprocess.CompletedProcess[str]:
    """Run the real command line with ``--config``; never raises for an exit status."""
    cmd = [sys.executable, "-m", "gpuwatchd", *args[:1], "--config", str(config), *args[1:]]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)


def status(daemon: DaemonProcess) -> dict[str, Any]:
    proc = gpuwatchd("status", "--json", config=daemon.config_path)
    assert proc.returncode == 0, proc.stderr
    doc: dict[str, Any] = json.loads(proc.stdout)
    return doc


def container_status(daemon: DaemonProcess, name: str) -> dict[str, Any]:
    found = [c for c in status(daemon)["core"]["containers"] if c["name"] == name]
    assert found, f"{name} not in status"
    return dict(found[0])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def scrape(url: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    with urllib.request.urlopen(url, timeout=10) as answer:
        text = answer.read().decode()
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def sample(metrics: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str,
           **labels: str) -> float | None:
    return metrics.get((name, frozenset(labels.items())))


def test_status_without_a_daemon_exits_3_with_one_line(tmp_path: Path) -> None:
    """No daemon: exit 3, one clear line on stderr naming the socket, nothing on stdout."""
    config = tmp_path / "config.toml"
    config.write_text(render_toml({"daemon": {"runtime_dir": str(tmp_path / "run")}}))
    for args in (("status",), ("status", "--json"), ("pause", "--for", "1h"), ("resume",),
                 ("reset", "KonomiTV")):
        proc = gpuwatchd(*args, config=config)
        assert proc.returncode == ExitCode.NO_DAEMON, (args, proc.stderr)
        assert proc.stdout == ""
        lines = proc.stderr.splitlines()
        assert len(lines) == 1, proc.stderr
        assert str(tmp_path / "run" / "control.sock") in lines[0]
        assert "is gpuwatchd running?" in lines[0]


# --------------------------------------------------------------------------
# A remediation seen through status, metrics and a notification


@pytest.mark.docker
@pytest.mark.slow
def test_status_metrics_and_notification_reflect_a_remediation(
    gpu: GpuController, make_container: Callable[..., Container],
    start_daemon: Callable[..., DaemonProcess], watched: dict[str, str], tmp_path: Path,
) -> None:
    """After the field report's fault is healed: status shows 1 restart in the window and
    probe ok; /metrics counts the restart, the matches and the recovery; the notification
    command got the restart record on stdin."""
    received = tmp_path / "notifications"
    received.mkdir()
    notify_me = tmp_path / "notify-me.py"
    notify_me.write_text(
        "import sys, uuid, pathlib\n"
        f"pathlib.Path({str(received)!r}, uuid.uuid4().hex).write_bytes(sys.stdin.buffer.read())\n"
    )
    port = free_port()
    konomi = make_container("konomi", labels=watched)
    healthy(konomi)
    daemon = start_daemon({
        **FAST,
        "metrics": {"listen": f"127.0.0.1:{port}"},
        "notify": {"command": [sys.executable, str(notify_me)], "timeout": "10s"},
    })
    daemon.wait_for("watch_set_changed", container=konomi.name, timeout=20)
    daemon.wait_for("gpu_persistence_enabled", timeout=20)  # the start-up drift fix
    gpu.set_persistence(False)
    assert gpu.idle_driver()
    restarted = daemon.wait_for("container_restarted", container=konomi.name, timeout=30)
    daemon.wait_for("container_recovered", container=konomi.name, timeout=60)
    cause = restarted["cause"]  # persistence_off (test_field_report pins the cause down)

    # status --json, through the control socket, from the real command line
    mine = container_status(daemon, konomi.name)
    assert mine["restarts_in_window"] == 1
    assert mine["last_probe_result"] == "ok"
    assert mine["last_probe_at"] is not None and mine["last_probe_at"] > time.time() - 120
    assert mine["given_up_at"] is None and mine["paused"] is False
    doc = status(daemon)
    assert doc["dry_run"] is False
    assert doc["docker_available"] is True and doc["nvml_available"] is True
    assert [g["persistence"] for g in doc["core"]["gpus"]] == [True]

    # status for people
    text = gpuwatchd("status", config=daemon.config_path)
    assert text.returncode == 0, text.stderr
    row = next(line for line in text.stdout.splitlines() if konomi.name in line)
    assert " ok " in row and "running" in row
    assert "degraded: no" in text.stdout

    # /metrics on the configured loopback address
    url = f"http://127.0.0.1:{port}/metrics"

    def metrics_show_it() -> dict[tuple[str, frozenset[tuple[str, str]]], float] | None:
        m = scrape(url)
        probe_ok = sample(m, "gpuwatchd_container_probe_result", container=konomi.name,
                          result="ok")
        return m if probe_ok == 1 else None

    m = wait_for(metrics_show_it, 10, message="metrics show the probe ok")
    by_cause = {dict(labels)["cause"]: v for (name, labels), v in m.items()
                if name == "gpuwatchd_restarts_total" and dict(labels)["container"] == konomi.name}
    assert by_cause == {cause: 1}, daemon.summary()
    assert (sample(m, "gpuwatchd_log_matches_total", container=konomi.name) or 0) >= 1
    assert sample(m, "gpuwatchd_recoveries_total", container=konomi.name, result="ok") == 1
    assert sample(m, "gpuwatchd_container_restarts_in_window", container=konomi.name) == 1
    assert (sample(m, "gpuwatchd_persistence_enabled_total", gpu="0") or 0) >= 2
    assert sample(m, "gpuwatchd_up") == 1
    assert sample(m, "gpuwatchd_docker_available") == 1

    # the notification command got the restart (and the recovery) as JSON on stdin
    def delivered() -> list[dict[str, Any]]:
        return [json.loads(p.read_text()) for p in received.iterdir()]

    docs = wait_for(lambda: [d for d in delivered() if d["event"] == "container_recovered"]
                    and delivered(), 20, message="the notifications")
    restarts = [d for d in docs if d["event"] == "container_restarted"]
    assert len(restarts) == 1
    assert restarts[0]["container"] == konomi.name
    assert restarts[0]["cause"] == cause
    assert restarts[0]["host"] == socket.gethostname()
    assert restarts[0]["message_id"] == "ae942c6d94624b0e92879d50930b6925"
    assert {d["event"] for d in docs} <= {"container_restarted", "container_recovered"}
    assert not daemon.find("notify_failed")


# --------------------------------------------------------------------------
# pause, resume, reset


@pytest.mark.docker
@pytest.mark.slow
def test_pause_holds_remediation_and_resume_releases_it(
    gpu: GpuController, make_container: Callable[..., Container],
    start_daemon: Callable[..., DaemonProcess], watched: dict[str, str],
) -> None:
    """Paused: a fault is found and recorded but not remediated, and status says paused;
    resumed: the same fault is healed."""
    gpu.set_persistence(True)
    konomi = make_container("konomi", labels=watched)
    healthy(konomi)
    daemon = start_daemon(FAST)
    daemon.wait_for("watch_set_changed", container=konomi.name, timeout=20)
    first_start = started_at(konomi)

    paused = gpuwatchd("pause", konomi.name, "--for", "1h", config=daemon.config_path)
    assert paused.returncode == 0, paused.stderr
    assert paused.stdout == f"paused remediation of {konomi.name} for 1h 0m\n"
    daemon.wait_for("operator_paused", target=konomi.name, timeout=10)
    mine = container_status(daemon, konomi.name)
    assert mine["paused"] is True
    assert mine["paused_until"] == pytest.approx(time.time() + 3600, abs=120)
    assert "PAUSED until" in gpuwatchd("status", config=daemon.config_path).stdout

    gpu.revoke_device_access(konomi)
    daemon.wait_for("remediation_skipped", container=konomi.name, reason="paused", timeout=40)
    time.sleep(2)
    assert not daemon.find("container_restarted")
    assert started_at(konomi) == first_start

    resumed = gpuwatchd("resume", konomi.name, config=daemon.config_path)
    assert resumed.returncode == 0, resumed.stderr
    assert resumed.stdout == f"resumed remediation of {konomi.name}\n"
    daemon.wait_for("operator_resumed", timeout=10)
    restarted = daemon.wait_for("container_restarted", container=konomi.name, timeout=40)
    assert restarted["cause"] == "device_access_lost"
    daemon.wait_for("container_recovered", container=konomi.name, timeout=60)
    assert container_status(daemon, konomi.name)["paused"] is False


@pytest.mark.docker
@pytest.mark.slow
def test_reset_rearms_a_given_up_container(
    gpu: GpuController, make_container: Callable[..., Container],
    start_daemon: Callable[..., DaemonProcess], watched: dict[str, str],
    keep_revoking: Callable[[Container], None],
) -> None:
    """max_restarts = 1 and a fault no restart cures: given up (status shows it);
    `gpuwatchd reset NAME` re-arms it and the next fault is restarted again."""
    gpu.set_persistence(True)
    konomi = make_container("konomi", labels=watched)
    healthy(konomi)
    daemon = start_daemon({**FAST, "remediation": {"max_restarts": 1, "cooldown": "1s",
                                                   "verify_timeout": "4s"}})
    daemon.wait_for("watch_set_changed", container=konomi.name, timeout=20)
    keep_revoking(konomi)
    daemon.wait_for("remediation_gave_up", container=konomi.name, timeout=90)
    assert len(daemon.find("container_restarted", container=konomi.name)) == 1
    mine = container_status(daemon, konomi.name)
    assert mine["given_up_at"] is not None
    assert mine["restarts_in_window"] == 1
    assert "GIVEN UP" in gpuwatchd("status", config=daemon.config_path).stdout

    reset = gpuwatchd("reset", konomi.name, config=daemon.config_path)
    assert reset.returncode == 0, reset.stderr
    assert reset.stdout.startswith(f"reset {konomi.name}: ")
    daemon.wait_for("operator_reset", timeout=10)
    assert container_status(daemon, konomi.name)["given_up_at"] is None
    daemon.wait_for("container_restarted", container=konomi.name, count=2, timeout=60)


async def test_a_refused_request_is_one_line_and_exit_1(tmp_path: Path) -> None:
    """An error the daemon answers becomes one line on stderr and exit 1 (a real control
    server whose handler refuses every request stands in for the daemon)."""
    from gpuwatchd.observers.control import ControlError, ControlServer

    async def refuse(request: dict[str, Any]) -> Any:
        raise ControlError(f"{request['command']} refused: maintenance lock held")

    server = ControlServer(tmp_path / "run", refuse)
    await server.start()
    config = tmp_path / "config.toml"
    config.write_text(render_toml({"daemon": {"runtime_dir": str(tmp_path / "run")}}))
    try:
        for args in (("reset",), ("pause", "KonomiTV"), ("resume",), ("status",)):
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "gpuwatchd", args[0], "--config", str(config), *args[1:],
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
            out, err = await asyncio.wait_for(proc.communicate(), 60)
            assert proc.returncode == ExitCode.PROBLEM, (args, err)
            assert out == b""
            assert err.decode().splitlines() == [
                f"gpuwatchd: the daemon refused: {args[0]} refused: maintenance lock held"]
    finally:
        await server.close()


# --------------------------------------------------------------------------
# The demo


REPO = Path(__file__).resolve().parents[2]


@pytest.mark.docker
@pytest.mark.slow
def test_the_demo_runs_end_to_end_and_leaves_nothing_behind(
    docker_client: docker.DockerClient,
) -> None:
    """scripts/demo exits 0 after showing ER-05, the heal, status and diagnose; afterwards
    no demo container, no daemon process and no temporary directory is left."""
    proc = subprocess.run([str(REPO / "scripts" / "demo")], cwd=REPO, capture_output=True,
                          text=True, timeout=280, check=False)
    out = proc.stdout
    assert proc.returncode == 0, out[-3000:] + proc.stderr[-3000:]
    for seen in ("(ER-05)", "log_pattern_matched", "gpu_persistence_enabled",
                 "container_restarted", "container_recovered", "$ gpuwatchd status",
                 "Watched containers:", "cleaned up"):
        assert seen in out, seen
    assert "$ gpuwatchd diagnose" in out or "no diagnose command" in out
    match = re.search(r"demo ([0-9a-f]{8}): temporary files in (\S+)", out)
    assert match, out[:500]
    token, work = match.groups()
    assert not Path(work).exists()
    assert not docker_client.containers.list(all=True, filters={"label": f"gpuwatchd-demo={token}"})
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        assert work.encode() not in cmdline, f"process {pid} outlived the demo"


@pytest.mark.docker
def test_a_metrics_address_in_use_costs_the_metrics_not_the_watchdog(
    start_daemon: Callable[..., DaemonProcess],
) -> None:
    """The port is taken: one metrics_unavailable record, and the daemon still answers."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        daemon = start_daemon({"metrics": {"listen": f"127.0.0.1:{port}"}})
        record = daemon.wait_for("metrics_unavailable", timeout=20)
        assert record["listen"] == f"127.0.0.1:{port}"
        daemon.wait_for("daemon_started", timeout=20)
        assert status(daemon)["pid"] == daemon.proc.pid
