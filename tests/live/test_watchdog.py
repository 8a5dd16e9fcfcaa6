"""The live watchdog on the bench: it heals what it should and never does harm.

Each test runs the real daemon as a subprocess against the real Docker engine
and the stand-in NVIDIA driver, and asserts on its JSON records, the driver's
call log and the containers' real start times.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from docker.models.containers import Container

from gpuwatchd.observers.control import request
from tests.bench import ER05_LINE, log_lines, wait_for
from tests.bench.engine import PrivateEngine
from tests.bench.engines import Engine, EventRecorder, on_every_engine
from tests.bench.gpu import GpuController
from tests.live.conftest import Sections, healthy, started_at
from tests.live.daemon_process import DaemonProcess

pytestmark = [pytest.mark.docker, pytest.mark.slow]

#: Quick verification so tests do not wait for the 5 s default grace.
FAST: Sections = {"probe": {"start_grace": "1s"}}


def merge(*parts: Sections) -> Sections:
    out: Sections = {}
    for part in parts:
        for section, keys in part.items():
            out.setdefault(section, {}).update(keys)
    return out


def persistence_on_then_off(daemon: DaemonProcess, gpu: GpuController) -> None:
    """Let the daemon's start-up drift fix land, then turn persistence off again."""
    daemon.wait_for("gpu_persistence_enabled", timeout=20)
    gpu.set_persistence(False)


def host_set_calls(gpu: GpuController) -> list[object]:
    """Persistence changes made by host processes (the daemon), not containers."""
    return [c for c in gpu.calls("nvmlDeviceSetPersistenceMode") if c.rc == 0]


def test_er05_lines_from_before_start_or_restart_are_ignored(
    gpu: GpuController, make_container: Callable[..., Container],
    start_daemon: Callable[..., DaemonProcess], watched: dict[str, str],
) -> None:
    """Lines written before the daemon attached, or before a restart, are never acted on."""
    gpu.set_persistence(True)
    konomi = make_container("konomi", mode="history", labels=watched)
    wait_for(lambda: ER05_LINE in "\n".join(log_lines(konomi)), 20, message="history printed")
    healthy(konomi)
    daemon = start_daemon()
    daemon.wait_for("watch_set_changed", container=konomi.name, timeout=20)
    time.sleep(3)
    assert not daemon.find("log_pattern_matched", container=konomi.name)
    # The daemon restarts: still nothing from the old lines.
    daemon.stop()
    daemon = start_daemon()
    daemon.wait_for("watch_set_changed", container=konomi.name, timeout=20)
    time.sleep(3)
    assert not daemon.find("log_pattern_matched", container=konomi.name)
    assert not daemon.find("container_restarted")


def test_container_without_nvidia_smi_is_never_restarted_and_warned_once(
    gpu: GpuController, make_container: Callable[..., Container],
    start_daemon: Callable[..., DaemonProcess], watched: dict[str, str],
) -> None:
    """probe_unavailable is no fault: one warning per container, no restart."""
    nosmi = make_container("nosmi", labels=watched)
    before = started_at(nosmi)
    daemon = start_daemon({"probe": {"interval": "1s", "start_grace": "500ms"}})
    daemon.wait_for("probe_unavailable", container=nosmi.name, timeout=20)
    time.sleep(4)  # several more probe periods
    assert len(daemon.find("probe_unavailable", container=nosmi.name)) == 1
    assert daemon.find("probe_unavailable")[0]["level"] == "warning"
    assert not daemon.find("container_restarted")
    assert started_at(nosmi) == before


def test_unwatched_container_is_left_alone(
    gpu: GpuController, make_container: Callable[..., Container],
    start_daemon: Callable[..., DaemonProcess],
) -> None:
    """A container outside the watch set keeps failing: gpuwatchd never touches it."""
    stranger = make_container("konomi")  # no watch label
    healthy(stranger)
    daemon = start_daemon({"probe": {"interval": "1s"}})
    persistence_on_then_off(daemon, gpu)
    before = started_at(stranger)
    assert gpu.idle_driver()
    wait_for(lambda: ER05_LINE in "\n".join(log_lines(stranger)), 20, message="ER-05 shows")
    time.sleep(4)
    assert started_at(stranger) == before
    assert not [r for r in daemon.records if r.get("container") == stranger.name]


@on_every_engine
def test_tuner_fault_is_not_a_gpu_fault(
    engine: Engine, gpu: GpuController, make_container: Callable[..., Container],
    start_daemon: Callable[..., DaemonProcess], watched: dict[str, str],
) -> None:
    """ER-05 while NVML works: no restart, log_match_not_gpu folded, probes rate-limited."""
    gpu.set_persistence(True)
    tuner = make_container("konomi", mode="tuner_fault", labels=watched,
                           environment={"WORKLOAD_INTERVAL": "0.2"})
    before = started_at(tuner)
    recorder = EventRecorder(engine.client, tuner.id)
    try:
        daemon = start_daemon()
        daemon.wait_for("log_match_not_gpu", container=tuner.name, timeout=20)
        time.sleep(12)
    finally:
        recorder.close()
    assert not daemon.find("container_restarted")
    assert started_at(tuner) == before
    not_gpu = daemon.find("log_match_not_gpu", container=tuner.name)
    # ~60 matching lines in 12 s, but confirmation probes at most one per 10 s.
    assert 1 <= len(not_gpu) <= 3, not_gpu
    assert sum(int(r.get("count", 1)) for r in not_gpu) >= 2
    execs = recorder.execs()
    assert 1 <= execs <= 3, f"{execs} probes in ~13 s: {recorder.actions}"


#: The device-access failure models: the ``revoke`` fixture runs this test under
#: the cgroup v1 rule and the cgroup v2 program.
@on_every_engine
def test_revoked_device_access_restarts_once_without_touching_persistence(
    engine: Engine, gpu: GpuController, make_container: Callable[..., Container],
    start_daemon: Callable[..., DaemonProcess], watched: dict[str, str],
    revoke: Callable[[Container], None],
) -> None:
    """The daemon-reload cause, no reload seen: one restart, persistence untouched,
    cause device_access_lost, certain (the kernel refused the open)."""
    gpu.set_persistence(True)
    konomi = make_container("konomi", labels=watched)
    healthy(konomi)
    daemon = start_daemon(FAST)
    daemon.wait_for("watch_set_changed", container=konomi.name, timeout=20)
    gpu.clear_calls()
    revoke(konomi)
    restarted = daemon.wait_for("container_restarted", container=konomi.name, timeout=30)
    assert restarted["cause"] == "device_access_lost"
    assert restarted["confidence"] == "certain"
    assert not daemon.find("systemd_reload_detected")
    daemon.wait_for("container_recovered", container=konomi.name, timeout=60)
    assert not gpu.calls("nvmlDeviceSetPersistenceMode")
    assert gpu.persistence() == [True]
    time.sleep(2)
    assert len(daemon.find("container_restarted")) == 1
    rc, _ = konomi.exec_run(["nvidia-smi", "-L"])
    assert rc == 0


def test_permanent_fault_gives_up_keeps_budget_across_restarts_and_reset_rearms(
    gpu: GpuController, make_container: Callable[..., Container],
    start_daemon: Callable[..., DaemonProcess], watched: dict[str, str],
    keep_revoking: Callable[[Container], None], tmp_path: Path,
) -> None:
    """Restarts stop at max_restarts, the give-up survives a daemon restart, reset re-arms."""
    gpu.set_persistence(True)
    konomi = make_container("konomi", labels=watched)
    healthy(konomi)
    config = merge(FAST, {"remediation": {"max_restarts": 2, "cooldown": "1s",
                                          "verify_timeout": "4s"}})
    daemon = start_daemon(config)
    daemon.wait_for("watch_set_changed", container=konomi.name, timeout=20)
    keep_revoking(konomi)
    daemon.wait_for("remediation_gave_up", container=konomi.name, timeout=90)
    assert len(daemon.find("container_restarted", container=konomi.name)) == 2
    given_up_start = started_at(konomi)
    time.sleep(3)
    assert started_at(konomi) == given_up_start

    # A new daemon process reads the budget back: still given up.
    daemon.stop()
    daemon = start_daemon(config)
    daemon.wait_for("watch_set_changed", container=konomi.name, timeout=20)
    time.sleep(5)
    assert not daemon.find("container_restarted")
    assert started_at(konomi) == given_up_start

    # The operator re-arms it: restarts resume.
    request(tmp_path / "run", {"command": "reset", "container": konomi.name})
    daemon.wait_for("operator_reset", timeout=10)
    daemon.wait_for("container_restarted", container=konomi.name, timeout=30)


@on_every_engine
def test_operator_stop_is_respected_and_recreated_container_is_watched(
    engine: Engine, gpu: GpuController, make_container: Callable[..., Container],
    start_daemon: Callable[..., DaemonProcess], watched: dict[str, str],
) -> None:
    """A stopped container stays stopped; one recreated under the same name is healed."""
    gpu.set_persistence(True)
    konomi = make_container("konomi", name="tv", labels=watched)
    healthy(konomi)
    daemon = start_daemon(merge(FAST, {"probe": {"interval": "1s"}}))
    daemon.wait_for("watch_set_changed", container=konomi.name, timeout=20)
    gpu.revoke_device_access(konomi)
    konomi.stop(timeout=5)
    time.sleep(4)
    konomi.reload()
    assert konomi.status == "exited"
    assert not daemon.find("container_restarted")

    name = konomi.name
    konomi.remove(force=True)
    again = make_container("konomi", name="tv", labels=watched)
    assert again.name == name
    daemon.wait_for("watch_set_changed", container=name, container_id=again.id[:12], timeout=20)
    healthy(again)
    gpu.revoke_device_access(again)
    restarted = daemon.wait_for("container_restarted", container=name, timeout=30)
    assert restarted["container_id"] == again.id[:12]


def test_daemon_survives_an_engine_restart_and_heals_afterwards(
    # The engine comes first so it is torn down last, after its containers.
    private_engine: PrivateEngine,
    gpu: GpuController, make_container: Callable[..., Container],
    start_daemon: Callable[..., DaemonProcess], watched: dict[str, str],
) -> None:
    """The private engine stops and starts: the daemon reconnects and heals a later fault."""
    engine = private_engine
    client = engine.client()
    gpu.set_persistence(True)
    konomi = make_container("konomi", labels=watched, client=client,
                            restart_policy={"Name": "always"})
    healthy(konomi)
    daemon = start_daemon(merge(FAST, {"docker": {"host": engine.socket_url}}))
    daemon.wait_for("watch_set_changed", container=konomi.name, timeout=20)
    engine.stop()
    daemon.wait_for("docker_unavailable", timeout=30)
    engine.start()
    daemon.wait_for("docker_available", timeout=60)
    konomi = client.containers.get(konomi.id)
    wait_for(lambda: (konomi.reload(), konomi.status)[1] == "running", 30,
             message="container back after the engine restart")
    healthy(konomi)
    assert daemon.proc.poll() is None
    gpu.revoke_device_access(konomi)
    daemon.wait_for("container_restarted", container=konomi.name, timeout=40)
    daemon.wait_for("container_recovered", container=konomi.name, timeout=60)


def test_dry_run_decides_and_records_but_changes_nothing(
    gpu: GpuController, make_container: Callable[..., Container],
    start_daemon: Callable[..., DaemonProcess], watched: dict[str, str],
) -> None:
    """--dry-run: the same decisions with dry_run = true; driver and containers untouched."""
    konomi = make_container("konomi", labels=watched)
    healthy(konomi)
    before = started_at(konomi)
    gpu.clear_calls()
    daemon = start_daemon(FAST, "--dry-run")
    daemon.wait_for("watch_set_changed", container=konomi.name, timeout=20)
    daemon.wait_for("gpu_persistence_off", timeout=20)
    assert gpu.idle_driver()
    restarted = daemon.wait_for("container_restarted", container=konomi.name, timeout=30)
    assert restarted["dry_run"] is True
    assert restarted["cause"] == "persistence_off"
    time.sleep(2)
    assert not host_set_calls(gpu)
    assert gpu.persistence() == [False]
    assert started_at(konomi) == before


def test_version_mismatch_is_never_restarted(
    gpu: GpuController, make_container: Callable[..., Container],
    start_daemon: Callable[..., DaemonProcess], watched: dict[str, str],
) -> None:
    """A driver upgraded without reboot: one remediation_skipped with reboot advice."""
    gpu.set_persistence(True)
    konomi = make_container("konomi", labels=watched)
    healthy(konomi)
    before = started_at(konomi)
    daemon = start_daemon(FAST)
    daemon.wait_for("watch_set_changed", container=konomi.name, timeout=20)
    gpu.set_version_mismatch(True)
    skipped = daemon.wait_for("remediation_skipped", container=konomi.name, timeout=30)
    assert skipped["cause"] == "version_mismatch"
    assert "reboot" in str(skipped.get("advice", skipped.get("message", ""))).lower()
    time.sleep(12)  # more ER-05 lines and confirmation probes
    assert len(daemon.find("remediation_skipped", container=konomi.name)) == 1
    assert not daemon.find("container_restarted")
    assert started_at(konomi) == before


def test_hung_probe_is_killed_and_others_are_still_healed(
    gpu: GpuController, make_container: Callable[..., Container],
    start_daemon: Callable[..., DaemonProcess], watched: dict[str, str],
) -> None:
    """A probe that hangs is killed at its timeout (no pile-up); another container heals."""
    gpu.set_persistence(True)
    stuck = make_container("konomi", labels=watched)
    konomi = make_container("konomi", labels=watched)
    healthy(konomi)
    daemon = start_daemon(merge(FAST, {
        "probe": {"interval": "1s", "timeout": "1s"},
        f"containers.{stuck.name}": {"probe_command": ["sleep", "1000"]},
    }))
    # Identical records are folded: the second is the summary of the next ones.
    daemon.wait_for("probe_failed", container=stuck.name, result="timeout", timeout=30, count=2)
    top = stuck.top(ps_args="-o pid,args")
    sleepers = [p for p in top["Processes"] if "sleep 1000" in " ".join(p)]
    assert len(sleepers) <= 1, sleepers  # at most the one in flight right now
    gpu.revoke_device_access(konomi)
    daemon.wait_for("container_restarted", container=konomi.name, timeout=30)
    daemon.wait_for("container_recovered", container=konomi.name, timeout=60)
    assert not daemon.find("container_restarted", container=stuck.name)


def test_hostile_log_flood_does_not_stop_healing(
    gpu: GpuController, make_container: Callable[..., Container],
    start_daemon: Callable[..., DaemonProcess], watched: dict[str, str],
) -> None:
    """Invalid UTF-8, NUL, CR, escapes and a 1 MiB line: the daemon stays up and heals."""
    gpu.set_persistence(True)
    script = (
        "head -c 1048576 /dev/zero | tr '\\0' x; echo; "
        "head -c 4000000 /dev/urandom; echo; "
        "printf '\\033[31m(ER\\000-05)\\r\\377\\376 \\033]0;title\\007\\n'; "
        "printf 'tail (ER-05) after the storm\\n'; sleep 1000"
    )
    flood = make_container("konomi", labels=watched, entrypoint=["sh", "-c", script])
    konomi = make_container("konomi", labels=watched)
    healthy(konomi)
    daemon = start_daemon(FAST)
    daemon.wait_for("watch_set_changed", container=konomi.name, timeout=20)
    flood.restart(timeout=1)  # the flood happens now, while followed
    daemon.wait_for("log_pattern_matched", container=flood.name, timeout=30)
    gpu.revoke_device_access(konomi)
    daemon.wait_for("container_restarted", container=konomi.name, timeout=30)
    daemon.wait_for("container_recovered", container=konomi.name, timeout=60)
    assert daemon.proc.poll() is None


def test_daemon_starts_degraded_without_docker(
    gpu: GpuController, start_daemon: Callable[..., DaemonProcess], tmp_path: Path,
) -> None:
    """No engine at start: one docker_unavailable record, the daemon stays up and
    keeps watching the GPUs."""
    missing = f"unix://{tmp_path}/no-engine.sock"
    daemon = start_daemon({"docker": {"host": missing}})
    daemon.wait_for("docker_unavailable", timeout=20)
    daemon.wait_for("gpu_persistence_enabled", timeout=20)
    time.sleep(2)
    assert daemon.proc.poll() is None
    assert len(daemon.find("docker_unavailable")) == 1
    assert daemon.stop() == 0


def test_sigterm_lets_a_restart_in_flight_finish_and_records_it(
    gpu: GpuController, make_container: Callable[..., Container],
    start_daemon: Callable[..., DaemonProcess], watched: dict[str, str],
) -> None:
    """SIGTERM during a slow restart: the restart completes, is recorded, exit 0."""
    gpu.set_persistence(True)
    # PID 1 ignores SIGTERM, so `docker restart` takes its whole stop timeout.
    slow = make_container(
        "konomi", labels=watched,
        entrypoint=["sh", "-c", "trap '' TERM; sh /usr/local/bin/workload & wait"],
    )
    healthy(slow)
    before = started_at(slow)
    daemon = start_daemon(merge(FAST, {"remediation": {"restart_timeout": "3s"}}))
    daemon.wait_for("watch_set_changed", container=slow.name, timeout=20)
    gpu.revoke_device_access(slow)
    daemon.wait_for("probe_failed", container=slow.name, timeout=30)
    time.sleep(0.5)  # the restart is under way: Docker waits out the 3 s
    daemon.signal(signal.SIGTERM)
    assert daemon.proc.wait(30) == 0
    daemon.stop()
    restarted = daemon.find("container_restarted", container=slow.name)
    assert restarted, daemon.summary()
    assert daemon.events().index("daemon_stopping") < daemon.events().index("container_restarted")
    assert started_at(slow) != before
