"""``gpuwatchd diagnose`` right after the daemon healed a fault, on the real engine:
it names the cause healed, never the tuner, whether it asks the running daemon or
reads the state file the stopped daemon left; a genuine tuner fault is still
``not_gpu`` either way."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import pytest
from docker.models.containers import Container

from gpuwatchd.diagnose.verdict import START_MARGIN
from tests.bench import ER05_LINE, wait_for_log
from tests.bench.gpu import GpuController
from tests.live.conftest import healthy
from tests.live.daemon_process import DaemonProcess
from tests.live.test_operator_tools import FAST

pytestmark = [pytest.mark.docker]


def diagnose(daemon: DaemonProcess, name: str) -> tuple[int, dict[str, Any]]:
    proc = subprocess.run(
        [sys.executable, "-m", "gpuwatchd", "diagnose", name, "--config",
         str(daemon.config_path), "--json"],
        capture_output=True, text=True, timeout=120, check=False,
        env=daemon.env,
    )
    assert proc.stderr == "", proc.stderr
    return proc.returncode, json.loads(proc.stdout)


def verdict_of(doc: dict[str, Any], name: str) -> dict[str, Any]:
    (report,) = [c for c in doc["containers"] if c["name"] == name]
    return dict(report["verdict"])


@pytest.mark.parametrize("cause", ["persistence_off", "device_access_lost"])
def test_diagnose_names_the_fault_just_healed(
    cause: str, gpu: GpuController, make_container: Callable[..., Container],
    start_daemon: Callable[..., DaemonProcess], watched: dict[str, str],
) -> None:
    gpu.set_persistence(True)
    konomi = make_container("konomi", labels=watched)
    healthy(konomi)
    daemon = start_daemon(FAST)
    daemon.wait_for("watch_set_changed", container=konomi.name, timeout=20)
    if cause == "persistence_off":
        gpu.set_persistence(False)
        assert gpu.idle_driver()
    else:
        gpu.revoke_device_access(konomi)
    restarted = daemon.wait_for("container_restarted", container=konomi.name, timeout=60)
    assert restarted["cause"] == cause
    daemon.wait_for("container_recovered", container=konomi.name, timeout=60)

    for source in ("daemon", "state file"):
        if source == "state file":
            assert daemon.stop() == 0
        rc, doc = diagnose(daemon, konomi.name)
        verdict = verdict_of(doc, konomi.name)
        assert doc["history"]["source"] == source
        assert verdict["cause"] == "healed", (source, verdict)
        assert f"for {cause} (certain)" in verdict["summary"]
        assert verdict["fix_for_good"], verdict
        assert "not_gpu" not in json.dumps(doc)
        assert rc == 0, (source, doc["verdict"])
        assert [e["event"] for e in doc["containers"][0]["history"]] == [
            "restarted", "recovered"]


def test_a_tuner_fault_is_not_gpu_with_or_without_a_daemon(
    gpu: GpuController, make_container: Callable[..., Container],
    start_daemon: Callable[..., DaemonProcess], watched: dict[str, str],
) -> None:
    gpu.set_persistence(True)
    tuner = make_container("konomi", labels=watched, mode="tuner_fault")
    daemon = start_daemon(FAST)
    daemon.wait_for("watch_set_changed", container=tuner.name, timeout=20)
    wait_for_log(tuner, ER05_LINE, 20)
    daemon.wait_for("log_match_not_gpu", container=tuner.name, timeout=30)
    # A line within START_MARGIN of the start is ambiguous; the tuner's next
    # ones (every second) are not.
    time.sleep(START_MARGIN + 2)
    for source in ("daemon", "state file"):
        if source == "state file":
            assert daemon.stop() == 0
        rc, doc = diagnose(daemon, tuner.name)
        # Nothing was done, so the stopped daemon left no state file to read.
        assert doc["history"]["source"] == ("daemon" if source == "daemon" else "none")
        assert verdict_of(doc, tuner.name)["cause"] == "not_gpu"
        assert rc == 1
    assert daemon.find("container_restarted") == []
